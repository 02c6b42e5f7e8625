"""Reading the live state of an app: worker heartbeats and the work queues' broker figures.

One reader for ``aqueue stats`` and the dashboard: `HeartbeatCollector` keeps the heartbeats
of one app as they arrive on the control exchange, `queue_facts` reads each work queue's ready
messages and consumers (a passive declare), `with_rates` turns two readings into an arrival
rate; `aqueue._core.heartbeats.aggregate` makes rows of them. `limiter_states` reads the flow
limits' state, `schedules_document` makes the schedules' table of the schedulers' notices.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aqueue._client.fair import ready_info
from aqueue._core.heartbeats import DROP_OUT_INTERVALS, Heartbeat, QueueFacts, Seen
from aqueue._core.schedules import Schedule, SchedulerStatus
from aqueue._core.topology import TopologyNames
from aqueue._serialization import loads
from aqueue._transport import Transport
from aqueue.exceptions import AqueueError, QueueNotFound

if TYPE_CHECKING:
    from aqueue._client.queue import TaskQueue
    from aqueue._results import ResultBackend

__all__ = [
    "HeartbeatCollector",
    "limiter_states",
    "queue_facts",
    "schedules_document",
    "with_rates",
]


class HeartbeatCollector:
    """Heartbeats of one app (by prefix) as they arrive: a `NoticeCallback`.

    Args:
        prefix: the app's topology prefix; heartbeats of other apps are ignored.
        on_heartbeat: called with each heartbeat kept (the dashboard records history).
    """

    def __init__(self, prefix: str, on_heartbeat: Callable[[Seen], None] | None = None) -> None:
        self.prefix = prefix
        self.seen: list[Seen] = []
        self._on_heartbeat = on_heartbeat

    def __call__(self, _routing_key: str, body: bytes) -> None:
        try:
            beat = Heartbeat.from_payload(loads(body))
        except (ValueError, AqueueError):
            return  # another version, or not a heartbeat: not ours to show
        if beat.prefix == self.prefix:
            seen = Seen(beat, time.time())
            self.seen.append(seen)
            if self._on_heartbeat is not None:
                self._on_heartbeat(seen)

    def forget_old(self, now: float) -> None:
        """Drop heartbeats past what can still be shown: a worker silent this long is gone."""
        horizon = 2 * DROP_OUT_INTERVALS
        self.seen = [s for s in self.seen if now - s.received_at <= horizon * s.heartbeat.interval]


async def queue_facts(
    transport: Transport,
    names: TopologyNames,
    queues: Iterable[str],
    fair: Collection[str] = (),
) -> dict[str, QueueFacts]:
    """Each logical queue's ready messages and consumers; None for a queue that is missing.

    The queues in `fair` are fair-share queues: their shards' ready messages count too.
    """
    facts = {}
    for name in queues:
        try:
            info = await ready_info(transport, names, name, fair=name in fair)
        except QueueNotFound:
            facts[name] = QueueFacts(ready=None, consumers=None)
        else:
            facts[name] = QueueFacts(ready=info.ready, consumers=info.consumers)
    return facts


def with_rates(
    before: dict[str, QueueFacts], after: dict[str, QueueFacts], seconds: float
) -> dict[str, QueueFacts]:
    """`after` with the change of ready per second since `before` (None where unknown)."""
    merged = {}
    for name, fact in after.items():
        earlier = before.get(name)
        per_s = None
        if earlier is not None and earlier.ready is not None and fact.ready is not None:
            per_s = (fact.ready - earlier.ready) / seconds if seconds > 0 else None
        merged[name] = QueueFacts(fact.ready, fact.consumers, per_s)
    return merged


async def limiter_states(queue: TaskQueue, backend: ResultBackend | None) -> list[dict[str, Any]]:
    """The state of every flow limit of the app's tasks, from the result backend's store.

    One row per limiter in use: ``task``, ``key`` (a keyed limit's value, else None),
    ``kind`` (``rate`` or ``concurrency``), ``limit`` (``"20/s"``, or the cap) and ``value``
    (seconds of starts reserved ahead, or jobs running now). Empty without a shared store:
    per-worker limits live in each worker's memory.

    Raises:
        TransportError: the store could not be read.
    """
    tasks = {name: task for name, task in queue.tasks.items() if task.options.flow.active}
    store = backend.flow_store() if backend is not None else None
    if not tasks or store is None:
        return []
    states = await store.limiter_states(sorted(tasks))
    rows = []
    for state in states:
        name, _, key = state.key.partition("|")
        flow = tasks[name].options.flow
        limit: object = (
            flow.rate.text if state.kind == "rate" and flow.rate else flow.max_concurrency
        )
        rows.append(
            {
                "task": name,
                "key": key or None,
                "kind": state.kind,
                "limit": limit,
                "value": round(state.value, 3),
            }
        )
    return rows


def schedules_document(
    schedules: Mapping[str, Schedule], heard: list[SchedulerStatus], *, now: float
) -> dict[str, Any]:
    """What ``aqueue schedules`` and the dashboard show of the schedules.

    The leader, the live schedulers, and each schedule's trigger, policies, next and last run
    (from the schedulers' notices).
    """
    latest: dict[str, SchedulerStatus] = {}
    for status in heard:
        current = latest.get(status.scheduler_id)
        if current is None or status.sent_at >= current.sent_at:
            latest[status.scheduler_id] = status
    live = [s for s in latest.values() if not s.stopping]
    leaders = sorted((s for s in live if s.leader), key=lambda s: s.sent_at)
    leader = leaders[-1] if leaders else None
    marks: dict[str, int] = {}
    for status in live:
        for name, mark in status.marks.items():
            marks[name] = max(marks.get(name, 0), mark.fired)
    rows = []
    for name, schedule in sorted(schedules.items()):
        fired = marks.get(name, 0)
        rows.append(
            {
                "name": name,
                "task": schedule.task,
                "trigger": str(schedule.trigger),
                "misfire": schedule.misfire,
                "overlap": schedule.overlap,
                "next_run": _iso(schedule.trigger.next_after(now)),
                "last_run": _iso(fired / 1000) if fired else None,
                "last_job_id": schedule.job_id(fired / 1000) if fired else None,
            }
        )
    return {
        "leader": None
        if leader is None
        else {"scheduler_id": leader.scheduler_id, "host": leader.host, "pid": leader.pid},
        "schedulers": [
            {"scheduler_id": s.scheduler_id, "host": s.host, "pid": s.pid, "leader": s.leader}
            for s in sorted(live, key=lambda s: s.scheduler_id)
        ],
        "schedules": rows,
    }


def _iso(instant: float) -> str:
    return dt.datetime.fromtimestamp(instant, dt.UTC).isoformat(timespec="seconds")
