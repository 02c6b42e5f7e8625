"""Dead letters: read them, replay them, purge them (the CLI is ``aqueue dlq``).

Every logical queue has a dead-letter queue, ``{prefix}.{queue}.dlq``, written by the worker
(a confirmed copy with ``aqueue-dead-*`` headers, for a job it will not run again) and by
RabbitMQ (a quorum work queue dead-letters a message after ``delivery_limit`` deliveries that
ended without an ack, with its ``x-death`` headers). Reading leaves every dead letter in place
and in order (a full pass, `aqueue._transport.browse`); replay is at-least-once: each dead
letter is published again (confirmed) and only then acked. The dead-letters page has the
details and the measurements.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aqueue._client.session import Session
from aqueue._core import wire as t
from aqueue._core.queues import queue_topology
from aqueue._core.topology import validate_name
from aqueue._core.types import HeaderValue
from aqueue._core.wire import Failure, replay_message
from aqueue._transport import Delivery
from aqueue._transport.browse import QueuePass, queue_pass, read_queue
from aqueue.exceptions import ConfigurationError, ConnectionLost, DecodeError, QueueNotFound

__all__ = ["DeadLetter", "DeadLetterQueue", "ReplayResult"]

Source = Literal["worker", "broker"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of a dead-letter queue, as read by `DeadLetterQueue.list` or `find`.

    Attributes:
        job_id: the job id (AMQP ``message_id``; ``""`` if the message had none).
        task: the task name, or ``None`` when the message has no ``aqueue-task`` header.
        queue: the logical queue the job was sent to.
        reason: why it is here. Written by the worker: ``failed``, ``timeout``,
            ``decode-error``, ``unknown-task``, ``undecodable-properties`` or
            ``interrupted`` (its workers stopped under it more than ``crash_limit`` times).
            Written by RabbitMQ: ``delivery_limit`` (workers died on it too often),
            ``rejected``, ``expired`` or ``maxlen``.
        source: ``"worker"`` or ``"broker"``: who dead-lettered it.
        exception_type: the qualified name of the last exception (worker only).
        exception_message: its message (worker only).
        traceback: the tail of its traceback (worker only).
        attempts: how many times the job ran. Worker: counted by the worker. Broker, for
            ``delivery_limit``: the attempt it was on plus the queue's delivery limit (the
            broker delivered it that many more times); other broker reasons: the attempt it
            was on. ``None`` when nothing tells.
        first_failed_at: the first failed attempt (aware, UTC), if known.
        last_failed_at: when it was dead-lettered (aware, UTC), if known.
        enqueued_at: when the job was first enqueued (aware, UTC), if known.
        history: the earlier failed attempts the job carries, oldest first.
        body_size: the size of the body in bytes.
        body: the body (JSON arguments, as the job was sent).
        headers: every AMQP header of the message, as received.
    """

    job_id: str
    task: str | None
    queue: str
    reason: str
    source: Source
    exception_type: str | None
    exception_message: str | None
    traceback: str | None = field(repr=False)
    attempts: int | None
    first_failed_at: dt.datetime | None
    last_failed_at: dt.datetime | None
    enqueued_at: dt.datetime | None
    history: tuple[Failure, ...] = field(repr=False)
    body_size: int
    body: bytes = field(repr=False)
    headers: Mapping[str, HeaderValue] = field(repr=False)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did.

    Attributes:
        replayed: dead letters published again to their work queue and removed.
        skipped: dead letters looked at and left in place (another task than the one asked
            for, or past the limit).
    """

    replayed: int
    skipped: int


#: Called after every dead letter a replay looks at: the counts so far, and how many it will
#: look at in all (at most).
ProgressCallback = Callable[[ReplayResult, int], None]


class DeadLetterQueue:
    """The dead-letter queue of one logical queue: count, list, find, replay, purge.

    Made by `TaskQueue.dead_letters` while the queue is open; reads and replays take the
    messages on a connection of their own, so a crash gives every untouched one back.

    Args:
        session: the open queue's session (broker, names, publisher).
        name: the logical queue whose dead letters these are.

    Raises:
        ConfigurationError: `name` is not a valid queue name.

    One tool at a time: messages a reader holds are invisible to another (a `replay` running
    during a `list` does not see the messages the list holds, and leaves them for later).
    """

    def __init__(self, session: Session, name: str) -> None:
        self._session = session
        self.name = validate_name(name)

    def __repr__(self) -> str:
        return f"<DeadLetterQueue {self.broker_name!r}>"

    @property
    def broker_name(self) -> str:
        """The name of the dead-letter queue on the broker."""
        return self._session.names.dead_letter_queue(self.name)

    async def count(self) -> int:
        """How many dead letters are ready (not those a reader holds right now).

        Raises:
            QueueNotFound: the dead-letter queue does not exist.
        """
        return await self._on_queue(self._session.transport.message_count)

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """The first `limit` dead letters, oldest first, left in place and in order.

        A full pass: every dead letter is taken and given back (`aqueue._transport.browse`).

        Raises:
            ConfigurationError: `limit` is below 1.
            QueueNotFound: the dead-letter queue does not exist.
        """
        _check_limit(limit)
        found: list[DeadLetter] = []

        def collect(delivery: Delivery) -> None:
            if len(found) < limit:
                found.append(self._parse(delivery))

        await self._read(collect)
        return found

    async def find(self, job_id: str) -> DeadLetter | None:
        """The dead letter of job `job_id` (the oldest, if there are several), left in place.

        Raises:
            QueueNotFound: the dead-letter queue does not exist.
        """
        found: list[DeadLetter] = []

        def collect(delivery: Delivery) -> None:
            if not found and delivery.message_id == job_id:
                found.append(self._parse(delivery))

        await self._read(collect)
        return found[0] if found else None

    async def scan(self, visit: Callable[[DeadLetter], None]) -> None:
        """Show every dead letter there is now to `visit`, oldest first; keep none.

        A full pass like `list`, for a reader that keeps only what it needs of each (the
        dashboard keeps a summary): memory stays that of one dead letter at a time.

        Raises:
            QueueNotFound: the dead-letter queue does not exist.
        """
        await self._read(lambda delivery: visit(self._parse(delivery)))

    async def replay(
        self,
        *,
        task: str | None = None,
        job_ids: Collection[str] | None = None,
        limit: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ReplayResult:
        """Send dead letters back to their work queue, oldest first.

        Each one is published as a fresh job (same job id and body; attempt 1; its history of
        failures kept; RabbitMQ's and the dead-letter headers removed), confirmed by the
        broker, and only then removed from the dead-letter queue. At-least-once: a crash
        between the two replays that one job again on the next run; a crash anywhere loses
        nothing. Dead letters that arrive while it runs are left for the next replay.

        Args:
            task: replay only the jobs of this task; the others stay in place, in order.
            job_ids: replay only the dead letters of these jobs (with `task`: of both).
            limit: replay at most this many.
            on_progress: called after each dead letter looked at (see `ProgressCallback`).

        Returns:
            How many were replayed, and how many were left in place.

        Raises:
            ConfigurationError: a bad `task` or `limit`.
            QueueNotFound: the dead-letter queue does not exist.
            PublishError: the broker did not take a copy (that dead letter stays in place; the
                replay stops).
            EncodeError: a dead letter whose job headers are too big to copy even shrunk (it
                stays in place; the replay stops).
            ConnectionLost: the connection was lost (what is not replayed stays in place).
        """
        if limit is not None:
            _check_limit(limit)
        task_name: object = task  # run-time input: not every caller runs mypy
        if task_name is not None and (not isinstance(task_name, str) or not task_name):
            raise ConfigurationError(f"task must be a non-empty task name, not {task!r}")
        wanted = _check_job_ids(job_ids)
        if wanted is not None and not wanted:
            return ReplayResult(0, 0)
        total = await self.count()
        if total == 0:
            return ReplayResult(0, 0)
        await self._ensure_work_queue()
        # Without a task filter nothing is held back, so the replay can stop at the limit;
        # with one it looks at every dead letter, to give the others back in order.
        unfiltered = task is None and wanted is None
        planned = min(total, limit) if unfiltered and limit is not None else total
        return await self._replay(_Filter(task, wanted), limit, planned, on_progress)

    async def purge(self) -> int:
        """Delete every ready dead letter; return how many.

        Raises:
            QueueNotFound: the dead-letter queue does not exist.
        """
        return await self._on_queue(self._session.transport.purge)

    # -- internals -------------------------------------------------------------------------

    async def _on_queue(self, operation: Callable[[str], Awaitable[int]]) -> int:
        """`operation` on the dead-letter queue, saying clearly if there is none."""
        try:
            return await operation(self.broker_name)
        except QueueNotFound as exc:
            raise QueueNotFound(
                f"there is no dead-letter queue {self.broker_name!r} (queue {self.name!r}, "
                f"prefix {self._session.names.prefix!r}): check the queue name and the prefix "
                f"({exc})"
            ) from exc

    async def _read(self, visit: Callable[[Delivery], None]) -> None:
        """Show every dead letter there is now to `visit`; leave all in place, in order."""
        if await self.count() == 0:
            return
        async with self._session.connection_for("dead-letters") as transport:
            await read_queue(transport, self.broker_name, visit)

    async def _replay(
        self,
        chosen: _Filter,
        limit: int | None,
        planned: int,
        on_progress: ProgressCallback | None,
    ) -> ReplayResult:
        replayed = skipped = 0
        async with (
            self._session.connection_for("dead-letters") as transport,
            queue_pass(transport, self.broker_name) as browsing,
        ):
            for _ in range(planned):
                if limit is not None and replayed >= limit and not browsing.holding:
                    break
                delivery = await browsing.take()
                if delivery is None:
                    break
                wanted = limit is None or replayed < limit
                if wanted and chosen.matches(delivery):
                    await self._replay_one(browsing, delivery)
                    replayed += 1
                else:
                    skipped += 1
                if on_progress is not None:
                    on_progress(ReplayResult(replayed, skipped), planned)
        return ReplayResult(replayed, skipped)

    async def _replay_one(self, browsing: QueuePass, delivery: Delivery) -> None:
        message = replay_message(
            self._session.names, delivery, queue=self.name, now_ms=time.time_ns() // 1_000_000
        )
        await self._session.producer.publish(message)
        try:
            await browsing.remove(delivery)
        except ConnectionLost as exc:
            raise ConnectionLost(
                f"job {delivery.message_id} was replayed, but the connection was lost before "
                f"its dead letter was removed: it stays in {self.broker_name!r} and a later "
                f"replay runs it again ({exc})"
            ) from exc

    async def _ensure_work_queue(self) -> None:
        """Declare the work queue if it does not exist yet.

        An existing queue is left as its application declared it: declaring it again with
        this TaskQueue's settings (another delivery limit, say) would be refused (406).
        """
        session = self._session
        try:
            await session.transport.message_count(session.names.work_queue(self.name))
        except QueueNotFound:
            # not `producer.declare_queue`: it declares once per open, and the queue may have
            # been deleted since
            await session.producer.declare(
                queue_topology(session.names, self.name, session.queue_settings)
            )

    def _parse(self, delivery: Delivery) -> DeadLetter:
        return parse_dead_letter(
            delivery,
            queue=self.name,
            work_queue=self._session.names.work_queue(self.name),
            delivery_limit=self._session.queue_settings.delivery_limit,
        )


def parse_dead_letter(
    delivery: Delivery, *, queue: str, work_queue: str, delivery_limit: int
) -> DeadLetter:
    """Read a delivery from a dead-letter queue, whoever dead-lettered it (never raises)."""
    headers = delivery.headers
    history = _history(headers)
    why = (
        _worker_cause(headers)
        if isinstance(headers.get(t.HEADER_DEAD_REASON), str)
        else _broker_cause(headers, history, work_queue, delivery_limit)
    )
    task = headers.get(t.HEADER_TASK)
    logical = headers.get(t.HEADER_DEAD_QUEUE, headers.get(t.HEADER_QUEUE))
    return DeadLetter(
        job_id=delivery.message_id or "",
        task=task if isinstance(task, str) and task else None,
        queue=logical if isinstance(logical, str) and logical else queue,
        reason=why.reason,
        source=why.source,
        exception_type=why.exception_type,
        exception_message=why.exception_message,
        traceback=why.traceback,
        attempts=why.attempts,
        first_failed_at=why.first_failed_at,
        last_failed_at=why.last_failed_at,
        enqueued_at=_from_ms(_integer(headers.get(t.HEADER_ENQUEUED_AT)) or None),
        history=history,
        body_size=len(delivery.body),
        body=delivery.body,
        headers=dict(headers),
    )


@dataclass(frozen=True, slots=True)
class _Filter:
    """Which dead letters a replay takes: of a task, of some jobs, or (both None) all."""

    task: str | None
    job_ids: frozenset[str] | None

    def matches(self, delivery: Delivery) -> bool:
        if self.task is not None and delivery.headers.get(t.HEADER_TASK) != self.task:
            return False
        return self.job_ids is None or (delivery.message_id or "") in self.job_ids


def _check_job_ids(job_ids: object) -> frozenset[str] | None:
    if job_ids is None:
        return None
    if isinstance(job_ids, str) or not isinstance(job_ids, Collection):
        raise ConfigurationError(f"job_ids must be a collection of job ids, not {job_ids!r}")
    if not all(isinstance(job_id, str) and job_id for job_id in job_ids):
        raise ConfigurationError(f"job_ids must be non-empty strings, not {job_ids!r}")
    return frozenset(job_ids)


@dataclass(frozen=True, slots=True)
class _Cause:
    reason: str
    source: Source
    attempts: int | None
    first_failed_at: dt.datetime | None
    last_failed_at: dt.datetime | None
    exception_type: str | None = None
    exception_message: str | None = None
    traceback: str | None = None


def _worker_cause(headers: Mapping[str, HeaderValue]) -> _Cause:
    """What the worker wrote on its dead-letter copy (the ``aqueue-dead-*`` headers)."""
    return _Cause(
        reason=str(headers.get(t.HEADER_DEAD_REASON)) or "unknown",
        source="worker",
        attempts=_integer(headers.get(t.HEADER_DEAD_ATTEMPTS)),
        first_failed_at=_from_ms(_integer(headers.get(t.HEADER_DEAD_FIRST_FAILED_AT))),
        last_failed_at=_from_ms(_integer(headers.get(t.HEADER_DEAD_LAST_FAILED_AT))),
        exception_type=_string(headers.get(t.HEADER_DEAD_EXC_TYPE)),
        exception_message=_string(headers.get(t.HEADER_DEAD_EXC_MESSAGE)),
        traceback=_string(headers.get(t.HEADER_DEAD_TRACEBACK)),
    )


def _broker_cause(
    headers: Mapping[str, HeaderValue],
    history: tuple[Failure, ...],
    work_queue: str,
    delivery_limit: int,
) -> _Cause:
    """What RabbitMQ wrote when it dead-lettered the message (``x-death``)."""
    death = _death(headers, work_queue)
    reason = _string(death.get("reason")) or _string(headers.get("x-first-death-reason"))
    died_at = _integer(death.get("time"))
    last = _from_seconds(died_at)
    attempts = _integer(headers.get(t.HEADER_ATTEMPT))
    if attempts is not None and reason == "delivery_limit":
        # the broker delivered it `delivery_limit` more times, each one counted by a worker
        # as an attempt (its x-delivery-count), before dead-lettering it
        attempts += delivery_limit
    return _Cause(
        reason=reason or "unknown",
        source="broker",
        attempts=attempts,
        first_failed_at=history[0].failed_at if history else last,
        last_failed_at=last,
    )


def _death(headers: Mapping[str, HeaderValue], work_queue: str) -> Mapping[str, HeaderValue]:
    """The ``x-death`` entry of the work queue, else the most recent one (first), else {}.

    A delayed job carries entries from the delay levels too (reason ``expired``), and
    ``x-first-death-reason`` names the first of those, not why it ended here.
    """
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return {}
    entries = [entry for entry in deaths if isinstance(entry, dict)]
    for entry in entries:
        if entry.get("queue") == work_queue:
            return entry
    return entries[0] if entries else {}


def _history(headers: Mapping[str, HeaderValue]) -> tuple[Failure, ...]:
    value = headers.get(t.HEADER_HISTORY)
    if not isinstance(value, list):
        return ()
    try:
        return tuple(Failure.from_header(item) for item in value)
    except DecodeError:
        return ()


def _string(value: HeaderValue) -> str | None:
    return value if isinstance(value, str) else None


def _integer(value: HeaderValue) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _from_ms(value: int | None) -> dt.datetime | None:
    return None if value is None else _from_seconds(value, per_second=1000)


def _from_seconds(value: int | None, *, per_second: int = 1) -> dt.datetime | None:
    """A UTC datetime, or None for a time no datetime can hold (past year 9999, ...)."""
    if value is None:
        return None
    try:
        # the division inside: an int beyond the largest float overflows already there
        return dt.datetime.fromtimestamp(value / per_second, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _check_limit(limit: object) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigurationError(f"limit must be an integer >= 1, not {limit!r}")
