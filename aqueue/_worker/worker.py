"""The worker: consume from the queues, run up to `concurrency` jobs at once, stop gracefully.

What happens to one delivery is `JobRunner`'s; this module is the loop around it: intake,
concurrency, statistics, and the shutdown that leaves unfinished jobs unacked (so the broker
delivers them again).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio
import anyio.to_thread

from aqueue._client.queue import TaskQueue
from aqueue._core.config import DEFAULT_QUEUE, WorkerSettings
from aqueue._core.topology import queue_topology
from aqueue._transport import Consumer, Delivery
from aqueue._worker.runner import JobRunner
from aqueue.exceptions import (
    TransportError,
)

logger = logging.getLogger("aqueue.worker")


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """Counters of one worker since it started."""

    received: int
    succeeded: int
    #: attempts that failed (each retried or dead-lettered)
    failed: int
    retried: int
    dead_lettered: int
    in_flight: int


class Worker:
    """Runs the jobs of a `TaskQueue`'s tasks.

    Args:
        queue: the task queue (its tasks, middleware and broker URL).
        settings: queues, concurrency, prefetch, grace and thread count.

    At-least-once: a job may run more than once (a worker killed mid-run, a lost connection),
    never zero times; make tasks idempotent with ``current_job().job_id``.
    """

    def __init__(self, queue: TaskQueue, settings: WorkerSettings | None = None) -> None:
        self.queue = queue
        self.settings = settings or WorkerSettings()
        self._threads = anyio.CapacityLimiter(self.settings.threads)
        self._started = anyio.Event()
        self._intake: anyio.CancelScope | None = None
        self._jobs_scope: anyio.CancelScope | None = None
        self._stop_requested = False
        self._logical: dict[str, str] = {}
        self._counts = {
            "received": 0,
            "succeeded": 0,
            "failed": 0,
            "retried": 0,
            "dead_lettered": 0,
        }
        self._in_flight = 0
        self._changed = anyio.Event()
        self._runner = JobRunner(
            queue, threads=self._threads, logical=self._logical, counts=self._counts
        )
        self._watchers = 0  # tasks in `wait_until`: no event is made per job for nobody

    def queues(self) -> tuple[str, ...]:
        """The logical queues this worker consumes."""
        return (
            self.settings.queues or tuple(sorted(self.queue.registry.queues())) or (DEFAULT_QUEUE,)
        )

    def statistics(self) -> WorkerStatistics:
        """A snapshot of the counters."""
        return WorkerStatistics(**self._counts, in_flight=self._in_flight)

    async def wait_until(self, condition: Callable[[WorkerStatistics], bool]) -> None:
        """Return once `condition(statistics)` holds; it is checked after every settled job.

        Callers bound the wait (``with anyio.fail_after(10): await worker.wait_until(...)``).
        """
        self._watchers += 1
        try:
            while not condition(self.statistics()):
                await self._changed.wait()
        finally:
            self._watchers -= 1

    def _notify(self) -> None:
        if self._watchers:
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_started(self) -> None:
        """Return once the worker consumes from all its queues."""
        await self._started.wait()

    def stop(self, *, now: bool = False) -> None:
        """Stop consuming and let running jobs finish within the grace period.

        A second call, or ``now=True``, cancels running jobs at once; they stay unacked and
        are redelivered.
        """
        if (now or self._stop_requested) and self._jobs_scope is not None:
            self._jobs_scope.cancel()
        self._stop_requested = True
        if self._intake is not None:
            self._intake.cancel()

    async def run(self) -> None:
        """Consume until `stop` is called; return once every job is settled or cancelled.

        Raises:
            ConnectionFailed: no broker answered within the queue's connect timeout.
        """
        async with AsyncExitStack() as stack:
            if self.queue._stack is None:
                await self.queue.open()
                stack.push_async_callback(self.queue.aclose)
            # one intake and one set of runners per queue: a slow queue never takes the
            # runners of another (isolation), and each has its own consumer prefetch
            intakes = {queue: _Intake() for queue in self.queues()}
            for intake in intakes.values():
                stack.callback(intake.close)
            consumers = await self._subscribe(stack, intakes)
            await self._serve(consumers, list(intakes.values()))

    async def _subscribe(
        self, stack: AsyncExitStack, intakes: Mapping[str, _Intake]
    ) -> list[Consumer]:
        transport = self.queue.make_transport("consumer")
        await transport.connect(timeout=self.queue.producer_settings.connect_timeout)
        # closed before the queue's publisher: unsettled deliveries go back to the broker
        stack.push_async_callback(transport.aclose)
        consumers = []
        for queue, intake in intakes.items():
            await self.queue.declare_queue(queue)
            await transport.declare(
                queue_topology(self.queue.names, queue, self.queue.queue_settings)
            )
            broker_name = self.queue.names.work_queue(queue)
            self._logical[broker_name] = queue
            consumers.append(
                await transport.consume(
                    broker_name,
                    prefetch=self.settings.effective_prefetch,
                    on_delivery=intake.put,
                )
            )
        return consumers

    async def _serve(self, consumers: list[Consumer], intakes: Sequence[_Intake]) -> None:
        async with anyio.create_task_group() as jobs:
            self._jobs_scope = jobs.cancel_scope
            # `concurrency` runners per queue, each taking the next delivery when its job is
            # settled: the concurrency limit without a task and a semaphore round per job.
            for intake in intakes:
                for _ in range(self.settings.concurrency):
                    jobs.start_soon(self._take_jobs, intake)
            with anyio.CancelScope() as consuming:
                self._intake = consuming
                if self._stop_requested:
                    consuming.cancel()
                self._started.set()
                logger.info("worker consuming from %s", ", ".join(self.queues()))
                await anyio.sleep_forever()
            self._intake = None
            # idle runners return at once, busy ones after their job; deliveries not started
            # stay unacked and go back to the broker when the consuming connection closes
            for intake in intakes:
                intake.close()
            await self._cancel_consumers(consumers)
            logger.info(
                "worker stopping: waiting up to %ss for %d jobs",
                self.settings.grace,
                self._in_flight,
            )
            jobs.cancel_scope.deadline = anyio.current_time() + self.settings.grace
        self._jobs_scope = None

    async def _cancel_consumers(self, consumers: Sequence[Consumer]) -> None:
        with anyio.CancelScope(shield=True):
            for consumer in consumers:
                try:
                    await consumer.cancel()
                except TransportError as exc:  # the connection is gone: nothing to cancel
                    logger.warning("could not cancel consumer: %s", exc)

    # -- one delivery ----------------------------------------------------------------------

    async def _take_jobs(self, intake: _Intake) -> None:
        while (delivery := await intake.get()) is not None:
            await self._handle(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        self._counts["received"] += 1
        self._in_flight += 1
        try:
            await self._runner.process(delivery)
        finally:
            self._in_flight -= 1
            self._notify()


class _Idle:
    """A runner waiting in `_Intake.get`, and what it was handed."""

    __slots__ = ("delivery", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.delivery: Delivery | None = None


class _Intake:
    """Deliveries handed to idle runners, in arrival order (the consumers' prefetch bounds it).

    What an anyio memory stream does, minus what a worker does not need: its ``receive()``
    costs a checkpoint, an event and a generic-alias call per item, about a tenth of the CPU
    of a no-op job (see docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._ready: deque[Delivery] = deque()
        self._idle: deque[_Idle] = deque()
        self._closed = False

    def put(self, delivery: Delivery) -> None:
        """Hand a delivery to the longest-idle runner, or queue it (transport callback)."""
        if self._closed:
            return  # stopping: left unacked, requeued when the consuming connection closes
        if self._idle:
            idle = self._idle.popleft()
            idle.delivery = delivery
            idle.event.set()
        else:
            self._ready.append(delivery)

    async def get(self) -> Delivery | None:
        """The next delivery; None once closed (queued deliveries are then left unstarted)."""
        if self._closed:
            return None
        if self._ready:
            return self._ready.popleft()
        idle = _Idle()
        self._idle.append(idle)
        try:
            await idle.event.wait()
        except BaseException:
            if idle.delivery is not None:  # handed over, never taken: the next runner's
                self._ready.appendleft(idle.delivery)
            elif idle in self._idle:
                self._idle.remove(idle)
            raise
        # closed while this runner was being woken: the delivery is left unstarted too
        return None if self.closed() else idle.delivery

    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def close(self) -> None:
        """Wake every idle runner with None; later deliveries are dropped (left unacked)."""
        self._closed = True
        for idle in self._idle:
            idle.event.set()
        self._idle.clear()
