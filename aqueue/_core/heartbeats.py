"""Worker heartbeats as pure data: the payload, its schema, and what a reader makes of them.

Every worker publishes a heartbeat every `HEARTBEAT_INTERVAL` seconds to the control exchange
(``{prefix}.control``, a durable topic exchange), routing key ``heartbeat.{worker_id}``; a
last one with ``stopping: true`` when it stops. Readers (``aqueue stats``, an autoscaler, a
dashboard) bind their own exclusive queue to it. The payload is documented on the
observability page; version 1 readers ignore fields they do not know, so a worker may add
fields (``queues.{name}.wait_p95`` and the other wait figures, as they are measured) without
breaking them.

No I/O and no clock here: times are passed in (seconds since the Unix epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aqueue._core.checks import is_number, is_whole

#: Seconds between two heartbeats of a worker (``--heartbeat-interval`` and
#: ``$AQUEUE_HEARTBEAT_INTERVAL`` change it).
HEARTBEAT_INTERVAL = 5.0
#: A worker that sent no heartbeat for this many of its intervals is gone from readers' views.
DROP_OUT_INTERVALS = 3
#: The payload's ``version``; a reader skips heartbeats of a version it does not know.
HEARTBEAT_VERSION = 1
#: Heartbeats are routed ``heartbeat.{worker_id}``; readers bind ``heartbeat.#``.
HEARTBEAT_ROUTING_PREFIX = "heartbeat."
HEARTBEAT_BINDING = "heartbeat.#"
#: Autoscaler decisions a heartbeat carries per queue (the newest), and the characters of a
#: decision's reason: a heartbeat stays small however long a worker runs.
MAX_DECISIONS = 5
MAX_REASON_CHARS = 200


def control_exchange(prefix: str) -> str:
    """The topic exchange heartbeats (and later control messages) are published to."""
    return f"{prefix}.control"


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """One autoscaler decision that mattered: a change of concurrency, or a CPU-bound hold.

    Attributes:
        at: when it was taken, Unix seconds.
        action: ``grow``, ``shrink`` or ``hold`` (a hold is kept only when it is news: the
            queue is CPU-bound, so growing would not help).
        before: the queue's concurrency before it.
        after: its concurrency after it (equal to `before` for a hold).
        reason: why, with the figures that drove it (at most `MAX_REASON_CHARS`).
    """

    at: float
    action: str
    before: int
    after: int
    reason: str

    def to_payload(self) -> dict[str, Any]:
        """The JSON form: ``{"at", "action", "from", "to", "reason"}``."""
        return {
            "at": round(self.at, 3),
            "action": self.action,
            "from": self.before,
            "to": self.after,
            "reason": self.reason[:MAX_REASON_CHARS],
        }

    @classmethod
    def from_payload(cls, payload: object) -> ScaleDecision | None:
        """Read the JSON form; None for anything that is not one (a reader skips it)."""
        if not isinstance(payload, dict):
            return None
        at, action, before, after, reason = (
            payload.get(key) for key in ("at", "action", "from", "to", "reason")
        )
        if not (
            is_number(at, at_least=0)
            and isinstance(action, str)
            and is_whole(before, at_least=0)
            and is_whole(after, at_least=0)
            and isinstance(reason, str)
        ):
            return None
        return cls(float(at), action, before, after, reason[:MAX_REASON_CHARS])


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """One worker's figures for one logical queue; the optional ones are None when unknown.

    Attributes:
        concurrency: jobs this worker runs at once from the queue.
        in_flight: jobs running now.
        held: deliveries prefetched and not yet started (unacked, waiting in the worker).
        received: deliveries received since the worker started.
        settled: deliveries settled (succeeded, retried, dead-lettered, ...) since it started.
        received_per_s: deliveries received per second over the worker's last interval.
        settled_per_s: deliveries settled per second over the worker's last interval.
        ready: ready messages of the work queue, by the worker's passive declare.
        wait_p50: median wait (seconds) of jobs started over the last minute.
        wait_p95: 95th percentile of that wait.
        oldest_wait: estimate of how long the oldest job still waiting has waited.
        decisions: the autoscaler's last decisions for the queue, newest first (at most
            `MAX_DECISIONS`; empty without ``--autoscale`` and from workers before 0.x).
    """

    concurrency: int
    in_flight: int = 0
    held: int = 0
    received: int = 0
    settled: int = 0
    received_per_s: float | None = None
    settled_per_s: float | None = None
    ready: int | None = None
    wait_p50: float | None = None
    wait_p95: float | None = None
    oldest_wait: float | None = None
    decisions: tuple[ScaleDecision, ...] = ()

    @property
    def busy_ratio(self) -> float:
        """Running jobs over concurrency, 0 to 1."""
        return self.in_flight / self.concurrency if self.concurrency else 0.0


_INTS = ("concurrency", "in_flight", "held", "received", "settled")
_OPTIONAL_FLOATS = ("received_per_s", "settled_per_s", "wait_p50", "wait_p95", "oldest_wait")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What one worker says about itself; see the observability page for the JSON schema."""

    worker_id: str
    host: str
    pid: int
    #: the topology prefix of the app, so readers of a shared vhost can tell apps apart
    prefix: str
    #: jobs run at once per queue (the worker's --concurrency)
    concurrency: int
    started_at: float
    sent_at: float
    interval: float
    queues: Mapping[str, QueueFigures] = field(default_factory=dict)
    #: the worker's counters (`Worker.statistics()`), every queue together
    counters: Mapping[str, int] = field(default_factory=dict)
    stopping: bool = False

    @property
    def in_flight(self) -> int:
        """Jobs running now, every queue together."""
        return sum(figures.in_flight for figures in self.queues.values())

    @property
    def routing_key(self) -> str:
        return HEARTBEAT_ROUTING_PREFIX + self.worker_id

    def to_payload(self) -> dict[str, Any]:
        """The JSON object that is published (schema version `HEARTBEAT_VERSION`)."""
        return {
            "version": HEARTBEAT_VERSION,
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "prefix": self.prefix,
            "queues": {
                name: _figures_payload(figures) for name, figures in sorted(self.queues.items())
            },
            "concurrency": self.concurrency,
            "in_flight": self.in_flight,
            "counters": dict(self.counters),
            "started_at": self.started_at,
            "sent_at": self.sent_at,
            "interval": self.interval,
            "stopping": self.stopping,
        }

    @classmethod
    def from_payload(cls, payload: object) -> Heartbeat:
        """Read a decoded payload; fields a version 1 reader does not know are ignored.

        Raises:
            ValueError: not a version 1 heartbeat, or a field is missing or of the wrong type.
        """
        if not isinstance(payload, dict):
            raise ValueError(f"a heartbeat is a JSON object, not {type(payload).__name__}")
        if payload.get("version") != HEARTBEAT_VERSION:
            raise ValueError(f"unknown heartbeat version {payload.get('version')!r}")
        queues = payload.get("queues")
        counters = payload.get("counters", {})
        if not isinstance(queues, dict) or not isinstance(counters, dict):
            raise ValueError("a heartbeat's queues and counters are JSON objects")
        return cls(
            worker_id=_text(payload, "worker_id"),
            host=_text(payload, "host"),
            pid=_whole(payload, "pid"),
            prefix=_text(payload, "prefix"),
            concurrency=_whole(payload, "concurrency"),
            started_at=_number(payload, "started_at"),
            sent_at=_number(payload, "sent_at"),
            interval=_number(payload, "interval", above=0),
            queues={str(name): _read_figures(figures) for name, figures in queues.items()},
            counters={str(k): v for k, v in counters.items() if is_whole(v, at_least=0)},
            stopping=payload.get("stopping") is True,
        )


def _figures_payload(figures: QueueFigures) -> dict[str, Any]:
    payload: dict[str, Any] = {name: getattr(figures, name) for name in _INTS}
    payload["busy_ratio"] = round(figures.busy_ratio, 4)
    payload["ready"] = figures.ready
    for name in _OPTIONAL_FLOATS:
        payload[name] = getattr(figures, name)
    payload["decisions"] = [d.to_payload() for d in figures.decisions[:MAX_DECISIONS]]
    return payload


def _read_figures(payload: object) -> QueueFigures:
    if not isinstance(payload, dict):
        raise ValueError("a heartbeat's per-queue figures are JSON objects")
    ready = payload.get("ready")
    number = _optional_number
    return QueueFigures(
        concurrency=_whole(payload, "concurrency"),
        in_flight=_whole(payload, "in_flight"),
        held=_whole(payload, "held"),
        received=_whole(payload, "received"),
        settled=_whole(payload, "settled"),
        received_per_s=number(payload, "received_per_s"),
        settled_per_s=number(payload, "settled_per_s"),
        ready=ready if is_whole(ready, at_least=0) else None,
        wait_p50=number(payload, "wait_p50"),
        wait_p95=number(payload, "wait_p95"),
        oldest_wait=number(payload, "oldest_wait"),
        decisions=_read_decisions(payload.get("decisions")),
    )


def _read_decisions(payload: object) -> tuple[ScaleDecision, ...]:
    """A heartbeat's decisions; none when it has no such field (an older worker's)."""
    if not isinstance(payload, list):
        return ()
    decisions = (ScaleDecision.from_payload(item) for item in payload[:MAX_DECISIONS])
    return tuple(decision for decision in decisions if decision is not None)


def _text(payload: Mapping[str, object], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise ValueError(f"heartbeat field {key!r} must be a string, not {value!r}")
    return value


def _whole(payload: Mapping[str, object], key: str) -> int:
    value = payload.get(key)
    if not is_whole(value, at_least=0):
        raise ValueError(f"heartbeat field {key!r} must be an integer >= 0, not {value!r}")
    return value


def _number(payload: Mapping[str, object], key: str, *, above: float | None = None) -> float:
    value = payload.get(key)
    if not is_number(value, above=above):
        raise ValueError(f"heartbeat field {key!r} must be a number, not {value!r}")
    return float(value)


def _optional_number(payload: Mapping[str, object], key: str) -> float | None:
    value = payload.get(key)
    return float(value) if is_number(value, at_least=0) else None


def rate(before: int, after: int, seconds: float) -> float | None:
    """Events per second between two counter readings `seconds` apart; None if unknowable."""
    if seconds <= 0 or after < before:  # a restarted counter says nothing about the rate
        return None
    return (after - before) / seconds


# -- what a reader makes of them -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """A heartbeat and when the reader received it (its own clock: senders' clocks may skew)."""

    heartbeat: Heartbeat
    received_at: float


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """What the broker says about a work queue (a passive declare), for `aggregate`.

    Attributes:
        ready: ready messages; None when the queue could not be read (missing).
        consumers: consumers on it, from every connection.
        ready_per_s: change of `ready` per second between two readings; None with one.
    """

    ready: int | None
    consumers: int | None
    ready_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One line of ``aqueue stats``'s queue table (and its JSON ``queues`` item)."""

    queue: str
    ready: int | None
    unacked: int
    consumers: int | None
    workers: int
    in_per_s: float | None
    out_per_s: float | None
    wait_p50: float | None
    wait_p95: float | None
    oldest_wait: float | None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One line of ``aqueue stats``'s worker table (and its JSON ``workers`` item)."""

    worker_id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    busy_ratio: float
    last_seen: float
    started_at: float
    #: per queue with any, the autoscaler's last decisions, newest first
    decisions: Mapping[str, tuple[ScaleDecision, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatsView:
    """What ``aqueue stats`` shows: per queue and per live worker."""

    queues: tuple[QueueRow, ...]
    workers: tuple[WorkerRow, ...]


def live_workers(seen: Iterable[Seen], *, now: float) -> dict[str, Seen]:
    """The latest heartbeat of each worker still alive at `now`, by worker id.

    A worker is gone once it said ``stopping`` or sent nothing for `DROP_OUT_INTERVALS` of
    its own intervals (by the reader's clock).
    """
    latest: dict[str, Seen] = {}
    for item in seen:
        current = latest.get(item.heartbeat.worker_id)
        if current is None or item.received_at >= current.received_at:
            latest[item.heartbeat.worker_id] = item
    return {
        worker_id: item
        for worker_id, item in sorted(latest.items())
        if not item.heartbeat.stopping
        and now - item.received_at <= DROP_OUT_INTERVALS * item.heartbeat.interval
    }


def aggregate(
    seen: Iterable[Seen],
    facts: Mapping[str, QueueFacts],
    *,
    now: float,
    queues: Iterable[str] = (),
) -> StatsView:
    """The rows of ``aqueue stats``: every queue in `facts`, `queues` or a live heartbeat.

    Per queue: `ready` and `consumers` from the broker; `unacked` is the running plus the
    prefetched jobs of the live workers; out is their settled jobs per second, in their
    received jobs per second plus the change in ready per second (when two readings exist),
    never below 0. Percentiles cannot be merged exactly across workers: the worst worker's
    wait p50/p95 and oldest-wait estimate are shown (an upper bound, what an SLA cares about).
    """
    live = live_workers(seen, now=now)
    names = set(facts) | set(queues)
    for item in live.values():
        names.update(item.heartbeat.queues)
    rows = []
    for name in sorted(names):
        figures = [
            item.heartbeat.queues[name] for item in live.values() if name in item.heartbeat.queues
        ]
        fact = facts.get(name)
        ready = fact.ready if fact is not None else None
        if ready is None:
            ready = _most(f.ready for f in figures)
        received = _total(f.received_per_s for f in figures)
        in_per_s = received
        if received is not None and fact is not None and fact.ready_per_s is not None:
            in_per_s = max(0.0, received + fact.ready_per_s)
        rows.append(
            QueueRow(
                queue=name,
                ready=ready,
                unacked=sum(f.in_flight + f.held for f in figures),
                consumers=fact.consumers if fact is not None else None,
                workers=len(figures),
                in_per_s=in_per_s,
                out_per_s=_total(f.settled_per_s for f in figures),
                wait_p50=_most(f.wait_p50 for f in figures),
                wait_p95=_most(f.wait_p95 for f in figures),
                oldest_wait=_most(f.oldest_wait for f in figures),
            )
        )
    workers = []
    for worker_id, item in live.items():
        beat = item.heartbeat
        capacity = sum(f.concurrency for f in beat.queues.values())
        workers.append(
            WorkerRow(
                worker_id=worker_id,
                host=beat.host,
                pid=beat.pid,
                queues=tuple(sorted(beat.queues)),
                concurrency=beat.concurrency,
                in_flight=beat.in_flight,
                busy_ratio=beat.in_flight / capacity if capacity else 0.0,
                last_seen=max(0.0, now - item.received_at),
                started_at=beat.started_at,
                decisions={
                    name: figures.decisions
                    for name, figures in sorted(beat.queues.items())
                    if figures.decisions
                },
            )
        )
    return StatsView(queues=tuple(rows), workers=tuple(workers))


def _total(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return math.fsum(known) if known else None


_N = TypeVar("_N", int, float)


def _most(values: Iterable[_N | None]) -> _N | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None
