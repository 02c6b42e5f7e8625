"""The worker: consume from the queues, run up to `concurrency` jobs at once, stop gracefully.

What happens to one delivery is `JobRunner`'s; this module is the loop around it: intake,
concurrency, statistics, and the shutdown that leaves unfinished jobs unacked (so the broker
delivers them again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio

from aqueue._client.fair import fair_queues, ready_info
from aqueue._client.queue import TaskQueue
from aqueue._client.session import Session
from aqueue._core.config import DEFAULT_QUEUE, WorkerSettings
from aqueue._core.flow import FAIR_SHARDS, fair_prefetch, fair_queue
from aqueue._core.heartbeats import QueueFigures
from aqueue._core.queues import deferred_topology, fair_topology, queue_topology
from aqueue._core.wire import due_at_ms
from aqueue._observability.hooks import QueueStats, Settlement
from aqueue._transport import Consumer, Delivery, Transport
from aqueue._worker.cancels import Cancellations
from aqueue._worker.heartbeats import HeartbeatSender
from aqueue._worker.intake import Intake
from aqueue._worker.leases import warn_about_long_tasks
from aqueue._worker.parking import Parking
from aqueue._worker.quarantine import Quarantine
from aqueue._worker.runner import JobRunner
from aqueue._worker.scaling import DecisionLog, Scaler
from aqueue._worker.threads import AbandonedJob, ThreadBudgets
from aqueue._worker.waits import LoopLag, QueueRunners
from aqueue.exceptions import AqueueError, TransportError

logger = logging.getLogger("aqueue.worker")
#: Seconds between two wake-ups of the loop-lag timer, and between two samples of the gauges.
LAG_TICK = 0.1
SAMPLE_INTERVAL = 1.0
#: Deliveries a stopping worker gives back at once (each a publish awaiting its confirm).
HAND_BACK_AT_ONCE = 100


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """Counters of one worker since it started."""

    received: int
    succeeded: int
    #: attempts that failed and were settled: each one retried or dead-lettered
    failed: int
    retried: int
    dead_lettered: int
    in_flight: int
    #: jobs deferred through the delay levels by their rate limit (not failures)
    deferred_rate: int = 0
    #: jobs deferred through the delay levels by a concurrency cap (not failures)
    deferred_concurrency: int = 0
    #: jobs delivered after their deadline and not run (dead-lettered as expired, or dropped)
    expired: int = 0
    #: jobs cancelled: acked without running, or their run stopped
    cancelled: int = 0
    #: second copies of a scheduled tick or of an outbox row, acked without running
    duplicates: int = 0


class _Counters:
    """The worker's own counts, bumped once per delivery as it is received and settled."""

    __slots__ = (
        "cancelled",
        "dead_lettered",
        "deferred_concurrency",
        "deferred_rate",
        "duplicates",
        "expired",
        "in_flight",
        "received",
        "retried",
        "succeeded",
    )

    def __init__(self) -> None:
        self.received = self.succeeded = self.retried = self.dead_lettered = self.in_flight = 0
        self.deferred_rate = self.deferred_concurrency = 0
        self.expired = self.cancelled = self.duplicates = 0

    def settled(self, settlement: Settlement) -> None:
        if settlement == "succeeded":
            self.succeeded += 1
        elif settlement == "retried":
            self.retried += 1
        elif settlement == "dead-lettered":
            self.dead_lettered += 1
        elif settlement == "rate-limited":
            self.deferred_rate += 1
        elif settlement == "concurrency-limited":
            self.deferred_concurrency += 1
        elif settlement == "expired":
            self.expired += 1
        elif settlement == "cancelled":
            self.cancelled += 1
        elif settlement == "duplicate":
            self.duplicates += 1

    def snapshot(self) -> WorkerStatistics:
        return WorkerStatistics(
            received=self.received,
            succeeded=self.succeeded,
            failed=self.retried + self.dead_lettered,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            in_flight=self.in_flight,
            deferred_rate=self.deferred_rate,
            deferred_concurrency=self.deferred_concurrency,
            expired=self.expired,
            cancelled=self.cancelled,
            duplicates=self.duplicates,
        )


class _QueueCounts:
    """Per logical queue: deliveries received, settled, and running now (for heartbeats)."""

    __slots__ = ("in_flight", "received", "settled")

    def __init__(self) -> None:
        self.received = self.settled = self.in_flight = 0


class Worker:
    """Runs the jobs of a `TaskQueue`'s tasks.

    Args:
        queue: the task queue (its tasks, middleware and broker URL).
        settings: queues (with their own limits), concurrency, prefetch, grace and threads.

    At-least-once: a job may run more than once (a worker killed mid-run, a lost connection),
    never zero times; make tasks idempotent with ``current_job().job_id``.
    """

    def __init__(self, queue: TaskQueue, settings: WorkerSettings | None = None) -> None:
        self.queue = queue
        self.settings = settings or WorkerSettings()
        # each queue's sync jobs have threads of their own (see `WorkerSettings.limits`)
        self._threads = ThreadBudgets(lambda queue: self.settings.limits(queue).threads)
        self._started = anyio.Event()
        self._intake: anyio.CancelScope | None = None
        self._jobs_scope: anyio.CancelScope | None = None
        self._stop_requested = False
        self._counters = _Counters()
        self._queue_counts: dict[str, _QueueCounts] = {}
        self.heartbeats: HeartbeatSender | None = None  # set by `run`
        self._decisions = DecisionLog()  # the autoscaler's, for the heartbeats
        self._changed = anyio.Event()
        self._watchers = 0  # tasks in `wait_until`: no event is made per job for nobody
        # set by `run`
        self._session: Session | None = None
        self._transport: Transport | None = None
        self._intakes: dict[str, Intake] = {}
        #: rate-deferred jobs back before their reserved start, by logical queue
        self._parkings: dict[str, Parking] = {}
        self._runners: dict[str, QueueRunners] = {}
        self._jobs: anyio.abc.TaskGroup | None = None
        self._loop_lag = 0.0  # mean over the last sample
        self._consumers: dict[str, Consumer] = {}
        #: consumers of the queues beside a work queue (deferred jobs), by logical queue
        self._side_consumers: dict[str, list[Consumer]] = {}
        #: consumers of a fair-share queue's shards, by logical queue
        self._shard_consumers: dict[str, list[Consumer]] = {}
        self._fair: set[str] = set()  # the fair-share queues among this worker's
        self._runner: JobRunner | None = None
        self._quarantine: Quarantine | None = None

    def queues(self) -> tuple[str, ...]:
        """The logical queues this worker consumes."""
        used = {task.options.queue for task in self.queue.tasks.values()}
        return self.settings.queue_names or tuple(sorted(used)) or (DEFAULT_QUEUE,)

    def statistics(self) -> WorkerStatistics:
        """A snapshot of the counters."""
        return self._counters.snapshot()

    def queue_figures(self) -> dict[str, QueueFigures]:
        """Per logical queue: concurrency, running and prefetched jobs, counters (heartbeats)."""
        figures = {}
        waits = self.queue_stats()
        for queue in self.queues():
            counts = self._queue_counts.get(queue) or _QueueCounts()
            intake = self._intakes.get(queue)
            stats = waits.get(queue)
            figures[queue] = QueueFigures(
                concurrency=stats.concurrency
                if stats is not None
                else self.settings.limits(queue).concurrency,
                in_flight=counts.in_flight,
                held=intake.waiting() if intake is not None else 0,
                received=counts.received,
                settled=counts.settled,
                wait_p50=stats.wait_p50 if stats is not None else None,
                wait_p95=stats.wait_p95 if stats is not None else None,
                oldest_wait=stats.oldest_wait if stats is not None else None,
                decisions=self._decisions.recent(queue),
            )
        return figures

    def queue_stats(self) -> dict[str, QueueStats]:
        """The wait signal and the gauges of each queue now (empty before `run`).

        What ``--metrics-port`` and OpenTelemetry export about once a second; how each
        figure is computed, and its error, is on the docs/scaling.md page.
        """
        wall, now = time.time(), anyio.current_time() if self._runners else 0.0
        stats = {}
        for queue, runners in self._runners.items():
            oldest, exact = runners.oldest_wait(wall, now, serving=queue in self._consumers)
            p50, p95 = runners.waits.last_span(now)
            stats[queue] = QueueStats(
                queue=queue,
                ready=runners.ready,
                oldest_wait=oldest,
                oldest_wait_exact=exact,
                wait_p50=p50,
                wait_p95=p95,
                started=runners.started,
                concurrency=runners.target,
                running=runners.running,
                busy_ratio=runners.running / runners.target,
                prefetch=runners.prefetch,
                loop_lag=self._loop_lag,
                cpu_saturated=runners.cpu_saturated,
                consumers=runners.consumers,
            )
        return stats

    def abandoned(self) -> tuple[AbandonedJob, ...]:
        """The sync jobs whose functions still run in threads this worker stopped waiting for.

        A thread cannot be stopped from outside: a plain task function that outlives its
        job's timeout, or the grace period of a stop, runs on to its end in the background,
        and what it returns is discarded (see `AbandonedJob.reason` for what became of the
        job). Once `run` has returned, a non-empty answer means the process cannot end
        before those functions return, because interpreter exit waits for every thread;
        ``aqueue worker`` ends the process without waiting.
        """
        return self._threads.abandoned()

    async def wait_until(self, condition: Callable[[WorkerStatistics], bool]) -> None:
        """Return once `condition(statistics)` holds; checked as each job arrives and settles.

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

    @property
    def stopping(self) -> bool:
        """True once `stop` was called."""
        return self._stop_requested

    def stop(self, *, now: bool = False) -> None:
        """Stop consuming and let running jobs finish within the grace period.

        A second call, or ``now=True``, cancels running jobs at once. A job cancelled by a
        stop (at once, or when the grace period runs out) goes back to its queue as its next
        attempt, the interruption in its history (`JobInterrupted`); if that publish fails
        it stays unacked and is redelivered.
        """
        if (now or self._stop_requested) and self._jobs_scope is not None:
            self._jobs_scope.cancel()
        self._stop_requested = True
        if self._intake is not None:
            self._intake.cancel()
            # at once, not when the serving task next runs: a runner whose job ends meanwhile
            # must not start another delivery
            for intake in self._intakes.values():
                intake.close()
            for parking in self._parkings.values():
                parking.close()

    async def run(self) -> None:
        """Consume until `stop` is called; return once every job is settled or cancelled.

        Raises:
            ConnectionFailed: no broker answered within the queue's connect timeout.
        """
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(self.queue.session())
            # closed before the queue's publisher: unsettled deliveries go back to the broker
            transport = await stack.enter_async_context(session.connection_for("consumer"))
            # one intake and one set of runners per queue: a slow queue never takes the
            # runners of another (isolation), and each has its own consumer prefetch
            intakes = {queue: Intake() for queue in self.queues()}
            for intake in intakes.values():
                stack.callback(intake.close)
            self._session, self._transport, self._intakes = session, transport, intakes
            self._fair = fair_queues(self.queue.tasks.values()) & set(intakes)
            self._parkings = {
                queue: Parking(intakes[queue].put_first)
                for queue in self._flow_queues()
                if queue in intakes
            }
            limits = {queue: self.settings.limits(queue) for queue in intakes}
            self._runners = {
                queue: QueueRunners(
                    queue, intake, limits[queue].concurrency, limits[queue].prefetch
                )
                for queue, intake in intakes.items()
            }
            for queue in intakes:
                # declared on both connections: each re-declares its topology after a
                # reconnect, and the consumer's must exist before it resumes
                await session.producer.declare_queue(queue)
                await transport.declare(
                    queue_topology(session.names, queue, session.queue_settings)
                )
                if queue in self._flow_queues():
                    deferred = deferred_topology(session.names, queue, session.queue_settings)
                    await session.producer.declare(deferred)
                    await transport.declare(deferred)
                if queue in self._fair:
                    shards = fair_topology(session.names, queue, session.queue_settings)
                    await session.producer.declare(shards)
                    await transport.declare(shards)
            cancellations = Cancellations(session)
            await cancellations.listen(transport)  # before the first delivery can start
            await self.resume()
            runner = JobRunner(
                session,
                self.queue.tasks,
                self.queue.middleware,
                threads=self._threads,
                crash_limit=self.settings.crash_limit,
                lease_after=self.settings.lease_after,
                lease_ttl=self.settings.lease_ttl,
                cancellations=cancellations,
                stopping=lambda: self._stop_requested,
            )
            warn_about_long_tasks(
                self.queue.tasks,
                leases=session.states.active and self.settings.lease_after is not None,
            )
            runner.flow.warn_if_per_worker(self.queue.tasks)
            runner.parkings = self._parkings
            self._runner = runner
            self._quarantine = Quarantine(session, transport, list(intakes), self)
            heartbeats = self.heartbeats = HeartbeatSender(
                session.transport,
                session.names,
                concurrency=self.settings.concurrency,
                interval=self.settings.heartbeat_interval,
                figures=self.queue_figures,
                counters=lambda: dataclasses.asdict(self.statistics()),
                fair=self._fair,
            )
            async with anyio.create_task_group() as beating:
                beating.start_soon(heartbeats.run)
                await self._serve(runner, intakes)
                beating.cancel_scope.cancel()
            await heartbeats.send_stopping()
        # after the connections closed: the unsettled deliveries are back with the broker
        self._report_abandoned()

    def _report_abandoned(self) -> None:
        for job in self.abandoned():
            if job.reason == "timeout":
                fate = "it timed out and was settled then"
            else:
                fate = "it went back to its queue as its next attempt (or, if that failed, "
                fate += "was left unacked for the broker to deliver again)"
            logger.error(
                "worker stopped with job %s (task %s) still running in its thread for %.1fs: "
                "a thread cannot be stopped, so it is abandoned and its result will be "
                "discarded; %s",
                job.job_id,
                job.task,
                job.running_for,
                fate,
                extra={
                    "job_id": job.job_id,
                    "task": job.task,
                    "attempt": job.attempt,
                    "queue": job.queue,
                },
            )

    # -- consumers (also what the quarantine pauses and resumes) ---------------------------

    async def resume(self) -> None:
        """Subscribe a consumer to every queue that has none (not once stopping)."""
        session, transport = self._session, self._transport
        if session is None or transport is None or self._stop_requested:
            return
        for queue, intake in self._intakes.items():
            if queue not in self._consumers:
                parking = self._parkings.get(queue)
                self._consumers[queue] = await transport.consume(
                    session.names.work_queue(queue),
                    prefetch=self._runners[queue].prefetch,
                    on_delivery=intake.put if parking is None else parking.sorter(intake.put),
                )

        for queue in sorted(self._fair - set(self._shard_consumers)):
            # half the queue's prefetch each: one tenant (two shards) can fill the runners,
            # and every other shard still delivers at once (see the flow-control page)
            prefetch = fair_prefetch(self._runners[queue].prefetch)
            self._shard_consumers[queue] = [
                await transport.consume(
                    fair_queue(session.names, queue, shard),
                    prefetch=prefetch,
                    on_delivery=self._intakes[queue].put,
                )
                for shard in range(FAIR_SHARDS)
            ]
        for queue, parking in self._parkings.items():
            if queue not in self._side_consumers:
                self._side_consumers[queue] = [
                    await transport.consume(
                        session.names.deferred_queue(queue),
                        prefetch=self._runners[queue].prefetch,
                        on_delivery=parking.put,
                    )
                ]

    def _flow_queues(self) -> set[str]:
        """The logical queues with a flow-limited task: they have a deferred queue beside."""
        return {
            task.options.queue for task in self.queue.tasks.values() if task.options.flow.active
        }

    async def pause(self) -> None:
        """Cancel every consumer; what they delivered stays held until it is settled."""
        consumers, self._consumers = list(self._consumers.values()), {}
        for side in (*self._side_consumers.values(), *self._shard_consumers.values()):
            consumers.extend(side)
        self._side_consumers, self._shard_consumers = {}, {}
        await self._cancel_consumers(consumers)

    async def wait_idle(self) -> None:
        """Return once no delivery waits in an intake and no job runs."""
        self._watchers += 1
        try:
            while (
                self._counters.in_flight
                or any(i.waiting() for i in self._intakes.values())
                or any(p.parked() for p in self._parkings.values())
            ):
                await self._changed.wait()
        finally:
            self._watchers -= 1

    async def handle(self, delivery: Delivery, queue: str) -> None:
        """Run and settle one delivery of the logical `queue`, counting it."""
        runner = self._runner
        if runner is None:  # pragma: no cover - only called while serving
            raise RuntimeError("the worker is not running")
        counters = self._counters
        counts = self._queue_counts.get(queue)
        if counts is None:
            counts = self._queue_counts[queue] = _QueueCounts()
        counters.received += 1
        counters.in_flight += 1
        counts.received += 1
        counts.in_flight += 1
        self._notify()  # a condition on in_flight or received may hold now
        try:
            settlement = await runner.process(delivery, queue)
            counters.settled(settlement)
            counts.settled += 1
            if settlement == "quarantined" and self._quarantine is not None:
                self._quarantine.nudge()
        finally:
            counters.in_flight -= 1
            counts.in_flight -= 1
            self._notify()

    async def _serve(self, runner: JobRunner, intakes: Mapping[str, Intake]) -> None:
        async with anyio.create_task_group() as jobs:
            self._jobs_scope, self._jobs = jobs.cancel_scope, jobs
            # `concurrency` runners per queue, each taking the next delivery when its job is
            # settled: the concurrency limit without a task and a semaphore round per job.
            for runners in self._runners.values():
                self._add_runners(runners, runners.target)
            with anyio.CancelScope() as consuming:
                self._intake = consuming
                if self._stop_requested:
                    consuming.cancel()
                self._started.set()
                logger.info("worker consuming from %s", ", ".join(self.queues()))
                async with anyio.create_task_group() as loops:
                    loops.start_soon(self._sample)
                    loops.start_soon(self._read_ready)
                    for parking in self._parkings.values():
                        loops.start_soon(parking.run)
                    if self._quarantine is not None:
                        await self._quarantine.run()
            self._intake = None
            # idle runners return at once, busy ones after their job; deliveries not started
            # go back as fresh copies once no consumer can deliver more
            for intake in intakes.values():
                intake.close()
            for parking in self._parkings.values():
                parking.close()  # into the closed intakes: handed back with the rest
            await self.pause()
            await self._hand_back(runner, intakes)
            logger.info(
                "worker stopping: waiting up to %ss for %d jobs",
                self.settings.grace,
                self._counters.in_flight,
            )
            jobs.cancel_scope.deadline = anyio.current_time() + self.settings.grace
        self._jobs_scope = self._jobs = None

    async def _hand_back(self, runner: JobRunner, intakes: Mapping[str, Intake]) -> None:
        """Give back the deliveries no runner started, within the grace period.

        What is not given back in time (or cannot be) stays unacked and goes back to the
        broker when the consuming connection closes, redelivered.
        """
        unstarted = [(queue, d) for queue, intake in intakes.items() for d in intake.unstarted()]
        if not unstarted:
            return
        moved = 0
        limiter = anyio.CapacityLimiter(HAND_BACK_AT_ONCE)

        async def give_back(queue: str, delivery: Delivery) -> None:
            nonlocal moved
            async with limiter:
                moved += await runner.hand_back(delivery, queue)

        with anyio.move_on_after(self.settings.grace):
            async with anyio.create_task_group() as tg:
                for queue, delivery in unstarted:
                    tg.start_soon(give_back, queue, delivery)
        logger.info(
            "worker stopping: %d of %d deliveries not started went back as fresh copies",
            moved,
            len(unstarted),
        )

    async def _cancel_consumers(self, consumers: Sequence[Consumer]) -> None:
        with anyio.CancelScope(shield=True):
            for consumer in consumers:
                try:
                    await consumer.cancel()
                except TransportError as exc:  # the connection is gone: nothing to cancel
                    logger.warning("could not cancel consumer: %s", exc)

    # -- one delivery ----------------------------------------------------------------------

    def _add_runners(self, runners: QueueRunners, count: int) -> None:
        if self._jobs is None:  # pragma: no cover - only called while serving
            raise RuntimeError("the worker is not running")
        for _ in range(count):
            runners.alive += 1  # counted now: a resize before it first runs sees it
            self._jobs.start_soon(self._take_jobs, runners)

    async def _take_jobs(self, runners: QueueRunners) -> None:
        intake, queue = runners.intake, runners.queue
        # anyio.current_time() on asyncio, without looking the backend up twice per job
        clock = asyncio.get_running_loop().time
        try:
            while not runners.too_many():
                delivery = await intake.get()
                if delivery is None:
                    if not intake.closed():  # shed by `_resize`: it counted this one leaving
                        runners.leaving -= 1
                    return
                due = due_at_ms(delivery.headers)
                runners.started_job(clock(), time.time(), None if due is None else due / 1000)
                try:
                    await self.handle(delivery, queue)
                finally:
                    runners.finished_job(clock())
        finally:
            runners.alive -= 1

    # -- the wait signal and the autoscaler ------------------------------------------------

    async def _sample(self) -> None:
        """Measure the loop's lag; sample the gauges each second; decide each interval."""
        autoscale = self.settings.autoscale
        scaled = {
            queue: (runners, bounds)
            for queue, runners in self._runners.items()
            if (bounds := self.settings.limits(queue).autoscale) is not None
        }
        scaler = Scaler(
            scaled,
            self._resize,
            serving=lambda queue: queue in self._consumers,
            threads_waiting=lambda queue: self._threads.for_queue(queue).waiting(),
            log=self._decisions,
        )
        sample_lag, decision_lag = LoopLag(), LoopLag()
        last_sample = last_decision = anyio.current_time()
        while True:
            before = anyio.current_time()
            await anyio.sleep(LAG_TICK)
            now = anyio.current_time()
            lag = now - before - LAG_TICK
            sample_lag.add(lag)
            decision_lag.add(lag)
            if now - last_sample >= SAMPLE_INTERVAL:
                self._loop_lag = sample_lag.take()
                last_sample = now
                stats = list(self.queue_stats().values())
                for instrument in self.queue.instrumentation:
                    instrument.sample(stats)
            if autoscale is not None and now - last_decision >= autoscale.interval:
                elapsed, last_decision = now - last_decision, now
                await scaler.decide(now, elapsed, decision_lag.take())

    async def _resize(self, runners: QueueRunners, concurrency: int) -> None:
        """Set a queue's runners (and its prefetch, unless fixed) to `concurrency`."""
        growing = concurrency > runners.target
        runners.target = concurrency
        if growing:  # runners first, so deliveries the new prefetch lets in find one
            self._add_runners(runners, max(0, concurrency - (runners.alive - runners.leaving)))
        else:  # idle runners leave now, busy ones after their current job
            extra = runners.alive - runners.leaving - concurrency
            runners.leaving += runners.intake.shed(max(0, extra))
        if (
            not self.settings.limits(runners.queue).prefetch_fixed
            and runners.prefetch != concurrency
        ):
            runners.prefetch = concurrency
            consumer = self._consumers.get(runners.queue)
            shards = self._shard_consumers.get(runners.queue, [])
            try:
                if consumer is not None:
                    await consumer.set_prefetch(concurrency)
                for shard in shards:
                    await shard.set_prefetch(fair_prefetch(concurrency))
            except TransportError as exc:  # re-subscribed with it after a reconnect
                logger.warning("could not set the prefetch of %s: %s", runners.queue, exc)

    async def _read_ready(self) -> None:
        """Read each queue's ready count and consumers every ``ready_interval``.

        A passive declare; the consumers are every worker's: what ``/scale`` counts as the
        queue's workers.
        """
        transport, session = self._transport, self._session
        if transport is None or session is None:  # pragma: no cover - only while serving
            return
        interval = self.settings.ready_interval
        if self.settings.autoscale is not None:  # each decision reads a fresh backlog
            interval = min(interval, self.settings.autoscale.interval)
        while True:
            for queue, runners in self._runners.items():
                try:
                    info = await ready_info(
                        transport, session.names, queue, fair=queue in self._fair
                    )
                    runners.ready, runners.consumers = info.ready, info.consumers
                except AqueueError as exc:  # a reconnect under way: the next read may answer
                    logger.debug("could not read the ready count of %s: %s", queue, exc)
            await anyio.sleep(interval)
