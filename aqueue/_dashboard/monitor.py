"""The dashboard's live view of one app: heartbeats, queue figures, dead-letter summaries.

It opens the `TaskQueue` on the first request (sharing it when the application has it open
already), listens to the workers' heartbeats with `HeartbeatCollector` (the reader of
``aqueue stats``), and reads each work queue's figures with a passive declare per request.

Dead letters: AMQP cannot read a queue without taking its messages, and reading them in
order takes a full pass (`DeadLetterQueue.scan`); on this machine kind one pass reads about
300 dead letters a second. So a queue's dead letters are read once into a *summary*
(`Letter`: id, task, reason, exception, attempts, time: no body, no traceback), kept while
the dead-letter queue's count does not change, and pages are cut from it; a pass over more
than `INLINE_PASS` runs after the response, and the page shows its progress meanwhile.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio

from aqueue._client.deadletters import DeadLetter
from aqueue._client.fair import fair_queues
from aqueue._client.monitor import HeartbeatCollector, limiter_states, queue_facts, with_rates
from aqueue._client.queue import TaskQueue
from aqueue._client.session import Session
from aqueue._core.heartbeats import (
    HEARTBEAT_BINDING,
    QueueFacts,
    Seen,
    StatsView,
    aggregate,
    control_exchange,
)
from aqueue._core.schedules import STATUS_BINDING, SchedulerStatus
from aqueue._dashboard.history import History
from aqueue._dashboard.present import trace_id
from aqueue._serialization import loads
from aqueue._transport import Consumer
from aqueue._worker.heartbeats import control_topology
from aqueue.exceptions import DecodeError, QueueNotFound, TransportError

__all__ = ["INLINE_PASS", "Letter", "Monitor", "Overview", "Snapshot"]

#: Dead-letter queues up to this many are read while the request waits; bigger ones after it.
INLINE_PASS = 500
#: Seconds a summary of at most `INLINE_PASS` dead letters is shown before it is read again
#: (sooner when the count changed): another reader may have replayed one and a new one come.
SMALL_MAX_AGE = 10.0
#: The same for a bigger queue, whose pass takes long (about 300 dead letters a second here).
BIG_MAX_AGE = 300.0
#: Characters of an exception message kept in a summary.
MESSAGE_CHARS = 300


@dataclass(frozen=True, slots=True)
class Letter:
    """What a dead-letter page shows of one dead letter."""

    job_id: str
    task: str | None
    reason: str
    source: str
    exception_type: str | None
    exception_message: str | None
    attempts: int | None
    last_failed_at: float | None
    trace_id: str | None

    @classmethod
    def of(cls, letter: DeadLetter) -> Letter:
        message = letter.exception_message
        return cls(
            job_id=letter.job_id,
            task=letter.task,
            reason=letter.reason,
            source=letter.source,
            exception_type=letter.exception_type,
            exception_message=message[:MESSAGE_CHARS] if message is not None else None,
            attempts=letter.attempts,
            last_failed_at=letter.last_failed_at.timestamp() if letter.last_failed_at else None,
            trace_id=trace_id(letter.headers),
        )


@dataclass
class Snapshot:
    """A queue's dead letters as last read: oldest first, as they stand in the queue."""

    count: int
    letters: list[Letter] = field(default_factory=list)
    read_at: float = 0.0
    #: True while a pass fills it (`letters` grows)
    reading: bool = True

    def page(self, offset: int, limit: int) -> list[Letter]:
        """Newest first: the `limit` letters after the `offset` newest."""
        end = len(self.letters) - offset
        return self.letters[max(0, end - limit) : max(0, end)][::-1]


@dataclass(frozen=True, slots=True)
class Overview:
    """The overview screen: the stats view, dead letters per queue, when it was read."""

    view: StatsView
    dead: dict[str, int | None]
    at: float
    #: `limiter_states` rows; None when the store could not be read
    limiters: list[dict[str, object]] | None = None


class Monitor:
    """Everything the dashboard reads of one app; one per dashboard.

    Args:
        queue: the app's TaskQueue (opened on the first request).
        history: where the last hour of every queue is kept.
    """

    def __init__(self, queue: TaskQueue, history: History | None = None) -> None:
        self.queue = queue
        self.history = history or History()
        self._stack: AsyncExitStack | None = None
        self._session: Session | None = None
        self._lock = anyio.Lock()
        self.collector = HeartbeatCollector("", on_heartbeat=self._heard)
        self._listeners: list[Consumer] = []
        #: the latest notice of each scheduler heard, by id
        self.schedulers: dict[str, SchedulerStatus] = {}
        self._facts: tuple[float, dict[str, QueueFacts]] | None = None
        self.snapshots: dict[str, Snapshot] = {}
        self._passes: dict[str, anyio.Lock] = {}

    async def session(self) -> Session:
        """The open session (the queue is opened, and heartbeats listened to, the first time).

        Raises:
            ConnectionFailed: no broker answered.
        """
        async with self._lock:
            if self._session is None:
                stack = AsyncExitStack()
                session = await stack.enter_async_context(self.queue.session())
                try:
                    names = session.names
                    self.collector.prefix = names.prefix
                    await session.transport.declare(control_topology(names))
                    exchange = control_exchange(names.prefix)
                    self._listeners = [
                        await session.transport.listen(exchange, HEARTBEAT_BINDING, self.collector),
                        await session.transport.listen(exchange, STATUS_BINDING, self._scheduler),
                    ]
                except BaseException:
                    await stack.aclose()
                    raise
                self._stack, self._session = stack, session
            return self._session

    async def aclose(self) -> None:
        """Stop listening and close what `session` opened."""
        stack, self._stack, self._session = self._stack, None, None
        if stack is not None:
            with anyio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.cancel()
                await stack.aclose()

    def _scheduler(self, _routing_key: str, body: bytes) -> None:
        try:
            status = SchedulerStatus.from_payload(loads(body))
        except (ValueError, DecodeError):
            return  # another version, or not a notice: not ours to show
        if status.prefix == self.collector.prefix:
            self.schedulers[status.scheduler_id] = status

    def _heard(self, seen: Seen) -> None:
        if self.history.due(seen.received_at):
            self.collector.forget_old(seen.received_at)
            self.history.record(
                aggregate(self.collector.seen, {}, now=seen.received_at), seen.received_at
            )

    def queue_names(self) -> list[str]:
        """The app's logical queues and every queue a live worker names, sorted."""
        known = {task.options.queue for task in self.queue.tasks.values()}
        for seen in self.collector.seen:
            known.update(seen.heartbeat.queues)
        return sorted(known)

    async def overview(self) -> Overview:
        """Every queue and live worker now (a passive declare per work and dead-letter queue)."""
        session = await self.session()
        now = time.time()
        known = self.queue_names()
        fair = fair_queues(self.queue.tasks.values())
        facts = await queue_facts(session.transport, session.names, known, fair)
        if self._facts is not None and now - self._facts[0] < 60:
            facts = with_rates(self._facts[1], facts, now - self._facts[0])
        self._facts = (now, facts)
        self.collector.forget_old(now)
        view = aggregate(self.collector.seen, facts, now=now, queues=known)
        dead: dict[str, int | None] = {}
        for name in known:
            try:
                dead[name] = await session.transport.message_count(
                    session.names.dead_letter_queue(name)
                )
            except QueueNotFound:
                dead[name] = None
        limits: list[dict[str, object]] | None
        try:
            limits = await limiter_states(self.queue, session.states.backend)
        except TransportError:
            limits = None  # shown as unreadable, not as "no limits"
        return Overview(view, dead, now, limits)

    # -- dead letters ------------------------------------------------------------------------

    async def snapshot(self, name: str) -> tuple[Snapshot, bool]:
        """The summary of queue `name`'s dead letters, and whether a pass must still run.

        Read again when the count changed since the last read, or the summary is older than
        `SMALL_MAX_AGE` (`BIG_MAX_AGE` for a big queue); a small queue is read at once, a big
        one by `fill` after the response (the old summary is shown meanwhile). One pass per
        queue at a time: two at once would each see only what the other does not hold.

        Raises:
            QueueNotFound: the dead-letter queue does not exist.
        """
        dlq = self.queue.dead_letters(name)
        await self.session()
        async with self._passes.setdefault(name, anyio.Lock()):
            count = await dlq.count()
            current = self.snapshots.get(name)
            if current is not None and (current.reading or not _stale(current, count)):
                return current, False
            if count <= INLINE_PASS:
                await self.fill(name)
                return self.snapshots[name], False
            if current is None:  # shown while it fills, growing
                current = self.snapshots[name] = Snapshot(count)
            current.reading = True  # no second pass: this one is about to start
            return current, True

    async def fill(self, name: str) -> None:
        """Read queue `name`'s dead letters into a new summary (a full pass).

        A summary being read that has no letters yet grows as the pass goes, so the first
        pages show something before the pass ends.
        """
        showing = self.snapshots.get(name)
        growing = showing if showing is not None and not showing.letters else None
        letters: list[Letter] = []

        def keep(letter: DeadLetter) -> None:
            letters.append(Letter.of(letter))
            if growing is not None:
                growing.letters = letters

        try:
            await self.queue.dead_letters(name).scan(keep)
        finally:
            self.snapshots[name] = Snapshot(len(letters), letters, time.time(), reading=False)

    def forget(self, name: str, job_ids: set[str] | None = None) -> None:
        """Drop replayed or purged dead letters from the summary (all with None)."""
        snapshot = self.snapshots.get(name)
        if snapshot is None or snapshot.reading:
            return
        if job_ids is None:
            snapshot.letters = []
        else:
            snapshot.letters = [x for x in snapshot.letters if x.job_id not in job_ids]
        snapshot.count = len(snapshot.letters)


def _stale(snapshot: Snapshot, count: int) -> bool:
    """Whether a summary must be read again, the queue holding `count` dead letters now."""
    age = time.time() - snapshot.read_at
    return snapshot.count != count or age > (SMALL_MAX_AGE if count <= INLINE_PASS else BIG_MAX_AGE)
