"""Instrumentation: the seam through which traces, metrics and logs observe aqueue.

The producer and the job runner call these hooks and know nothing else about observability:
`aqueue._observability.otel` (OpenTelemetry) and the Prometheus exporter of ``aqueue worker
--metrics-port`` are instrumentations, so neither OpenTelemetry nor prometheus_client is
imported by the core. A `TaskQueue` holds its instrumentations in order (OpenTelemetry first,
unless ``telemetry=False``); with none, publishing and running a job cost one tuple test more.

Four hooks:

- ``publish(message)`` wraps every confirmed publish: enqueue, `enqueue_many`, a worker's
  retry copies, dead letters and workflow continuations, dead-letter replays. It returns a
  context manager whose value is the message to send (a tracer adds ``traceparent``) and
  whose exit sees the confirm or the error.
- ``job(delivery, queue)`` returns a `JobObserver`, entered when the delivery arrives (before
  anything is decoded) and exited once it is settled. A span opened on entry is therefore
  current while the job runs *and* while the job runner publishes its retry copy, its dead
  letter or its workflow continuation, so each of those is a child of the job's span. The
  observer is told when the job starts, when its run returns or raises, and how the delivery
  was settled: what a middleware cannot see, since the settling happens after it returns.
- ``sample(stats)`` is called by a running worker about once a second with a `QueueStats`
  per queue: the wait signal and the gauges built on it (see docs/scaling.md).
- ``deduplicated(task, queue, job_id)`` is called by the producer when a unique job was
  enqueued already, so nothing was published (see the flow-control page).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeAlias

from aqueue._tasks.context import JobContext
from aqueue._transport import Delivery, OutgoingMessage
from aqueue.exceptions import ConfigurationError

#: How a delivery was settled: acked after success, moved to its next attempt, moved to the
#: dead-letter queue, moved to its queue's quarantine (it came back unacked: it runs again
#: alone), given back to the broker (it will be delivered again), or settled by its lease
#: (a long job's lease copy sent round or dropped; see ``aqueue._worker.leases``), or deferred
#: through the delay levels, not run, because it was over its task's rate limit or
#: concurrency cap (not a failed attempt; see the flow-control page).
Settlement: TypeAlias = Literal[
    "succeeded",
    "retried",
    "dead-lettered",
    "quarantined",
    "requeued",
    "lease-checked",
    "rate-limited",
    "concurrency-limited",
    # acked without running: a second copy of a scheduled tick
    "duplicate",
    # delivered after its deadline: dead-lettered as expired, or dropped (on_expire="drop")
    "expired",
    # cancelled: never started, or its run stopped; acked, not retried
    "cancelled",
]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One worker's figures for one of its queues, at one instant (see docs/scaling.md).

    Attributes:
        queue: the logical queue.
        ready: ready messages in the work queue at its last read (a passive declare every
            ``ready_interval``); None until the first read answers.
        oldest_wait: seconds the oldest job this worker knows to be waiting has waited: exact
            while it holds prefetched jobs not yet started; else, while the queue has ready
            messages and every runner is busy, the time since the last started job became due
            (an estimate that rises while no job starts); else 0.
        oldest_wait_exact: True when `oldest_wait` came from prefetched jobs held here.
        wait_p50: median wait (due to start) of the jobs started in the last minute; None
            when none started.
        wait_p95: 95th percentile of the same waits; None when none started.
        started: jobs started on this queue since the worker started.
        concurrency: the queue's runners now (its concurrency limit).
        running: jobs of this queue running now.
        busy_ratio: `running` ÷ `concurrency`.
        prefetch: the queue consumer's prefetch now.
        loop_lag: mean lag of the worker's event loop over the last sampling period, seconds
            (the same figure for every queue of the worker).
        cpu_saturated: the autoscaler found the event loop lagging (CPU-bound work) at its
            last decision and held the queue's concurrency; always False without autoscaling.
        consumers: consumers of the work queue on the broker, every worker's, read with
            `ready`; None until the first read answers.
    """

    queue: str
    ready: int | None
    oldest_wait: float
    oldest_wait_exact: bool
    wait_p50: float | None
    wait_p95: float | None
    started: int
    concurrency: int
    running: int
    busy_ratio: float
    prefetch: int
    loop_lag: float
    cpu_saturated: bool
    consumers: int | None = None


class JobObserver:
    """Follows one delivery from its receipt to its settlement; every method does nothing.

    Used as a context manager by the job runner: entered when the delivery arrives, exited
    when it is settled, or with the exception (cancellation at shutdown) that left it unsettled.
    The events come in this order, each at most once: `started`, `finished`, `settled`; a
    delivery that cannot be decoded gets only `settled`.

    Added in 0.1.
    """

    __slots__ = ()

    def __enter__(self) -> JobObserver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def started(self, job: JobContext) -> None:
        """The delivery was decoded into `job`, which is about to run."""

    def finished(self, job: JobContext, error: BaseException | None, duration: float) -> None:
        """The job's run (its middleware chain) returned (`error` is None) or raised.

        Args:
            job: the job.
            error: what the run raised, including `Retry` and timeouts; None on success.
            duration: seconds the run took.
        """

    def settled(self, settlement: Settlement, error: BaseException | None) -> None:
        """How the delivery was settled; `error` is why (retried, dead-lettered, requeued)."""


#: The observer of instrumentations that watch no jobs (shared: it keeps no state).
NO_OBSERVER = JobObserver()


class Instrumentation:
    """Observes what a `TaskQueue` publishes and what its workers run.

    Subclass it and override either hook; the defaults do nothing. Pass instances to
    ``TaskQueue(instrumentation=[...])`` or `TaskQueue.instrument`. Hooks run on the event
    loop, inline with every publish and job: keep them quick and never block.

    Added in 0.1.
    """

    def publish(self, message: OutgoingMessage) -> AbstractContextManager[OutgoingMessage]:
        """Wrap one publish: the context manager's value is the message to send.

        It is exited when the broker confirmed the message, or with the error that the
        publish raises (after its retries across reconnects).
        """
        return nullcontext(message)

    def job(self, delivery: Delivery, queue: str) -> JobObserver:
        """An observer of one delivery, from the logical `queue`, not yet decoded."""
        return NO_OBSERVER

    def sample(self, stats: Sequence[QueueStats]) -> None:
        """A running worker's figures, one `QueueStats` per queue, about once a second."""

    def deduplicated(self, task: str, queue: str, job_id: str) -> None:
        """An enqueue of a unique job found it enqueued already (`job_id`): nothing was sent.

        Added in 0.1.
        """


class Instruments:
    """The instrumentations of one `TaskQueue`, in order.

    One object shared by the queue's producer and its workers' job runners, so an
    instrumentation added with `TaskQueue.instrument` is seen by every later publish and job.
    """

    __slots__ = ("all",)

    def __init__(self, instrumentation: Sequence[Instrumentation] = ()) -> None:
        self.all: tuple[Instrumentation, ...] = ()
        for instrument in instrumentation:
            self.add(instrument)

    def add(self, instrumentation: Instrumentation) -> None:
        """Append an instrumentation.

        Raises:
            ConfigurationError: not an `Instrumentation`.
        """
        if not isinstance(instrumentation, Instrumentation):
            raise ConfigurationError(
                f"instrumentation must be an aqueue.Instrumentation, not {instrumentation!r}"
            )
        self.all = (*self.all, instrumentation)


def publish_hooks(
    instrumentation: Sequence[Instrumentation], message: OutgoingMessage
) -> tuple[contextlib.ExitStack, OutgoingMessage]:
    """Enter every publish hook in order, each given the message the one before returned.

    Returns:
        The stack to exit after the publish, and the message to send.
    """
    stack = contextlib.ExitStack()
    with stack:
        for instrument in instrumentation:
            message = stack.enter_context(instrument.publish(message))
        return stack.pop_all(), message


def observe_job(
    instrumentation: Sequence[Instrumentation], delivery: Delivery, queue: str
) -> JobObserver:
    """The observer of one delivery: each instrumentation's, as one."""
    if not instrumentation:
        return NO_OBSERVER
    if len(instrumentation) == 1:
        return instrumentation[0].job(delivery, queue)
    return _Observers(tuple(instrument.job(delivery, queue) for instrument in instrumentation))


class _Observers(JobObserver):
    """Several observers as one: entered in order, exited in reverse."""

    __slots__ = ("_observers", "_stack")

    def __init__(self, observers: tuple[JobObserver, ...]) -> None:
        self._observers = observers
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> JobObserver:
        with contextlib.ExitStack() as stack:
            for observer in self._observers:
                stack.enter_context(observer)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def started(self, job: JobContext) -> None:
        for observer in self._observers:
            observer.started(job)

    def finished(self, job: JobContext, error: BaseException | None, duration: float) -> None:
        for observer in self._observers:
            observer.finished(job, error, duration)

    def settled(self, settlement: Settlement, error: BaseException | None) -> None:
        for observer in self._observers:
            observer.settled(settlement, error)
