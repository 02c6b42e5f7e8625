"""The worker: consume → decode → resolve → run the middleware chain → settle.

Settling is what makes the guarantees: a job is acked only after its outcome is settled
(success, or its dead-letter copy confirmed). A job cancelled by shutdown, or whose worker
dies, is never acked, so the broker delivers it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from aqueue._completion import Completion, JobRecord, workflow_links
from aqueue._config import DEFAULT_QUEUE, PER_JOB_OPTIONS, TaskOptions, WorkerSettings
from aqueue._context import JobContext, reset_current_job, set_current_job
from aqueue._envelope import Failure, JobHeaders, read_headers
from aqueue._middleware import build_chain
from aqueue._queue import TaskQueue
from aqueue._results import JobState, JobStatus
from aqueue._serialization import decode_arguments
from aqueue._settle import Outcome, dead_letter_message, retry_message
from aqueue._tasks import Task
from aqueue._topology import queue_topology
from aqueue._transport import Consumer, Delivery, OutgoingMessage
from aqueue._types import JSONScalar, JSONValue
from aqueue.exceptions import (
    ConfigurationError,
    ConnectionLost,
    DecodeError,
    EncodeError,
    Retry,
    TransportError,
    UnknownTaskError,
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
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        self._in_flight = 0
        self._changed = anyio.Event()
        self._completion = Completion(queue.flows)
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
            intake = _Intake()
            stack.callback(intake.close)
            consumers = await self._subscribe(stack, intake)
            await self._serve(consumers, intake)

    async def _subscribe(self, stack: AsyncExitStack, intake: _Intake) -> list[Consumer]:
        transport = self.queue.make_transport("consumer")
        await transport.connect(timeout=self.queue.producer_settings.connect_timeout)
        # closed before the queue's publisher: unsettled deliveries go back to the broker
        stack.push_async_callback(transport.aclose)
        consumers = []
        for queue in self.queues():
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

    async def _serve(self, consumers: list[Consumer], intake: _Intake) -> None:
        async with anyio.create_task_group() as jobs:
            self._jobs_scope = jobs.cancel_scope
            # `concurrency` runners, each taking the next delivery when its job is settled:
            # the concurrency limit without a task and a semaphore round per job.
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
            await self._process(delivery)
        finally:
            self._in_flight -= 1
            self._notify()

    async def _process(self, delivery: Delivery) -> None:
        logical = self._logical.get(delivery.queue, delivery.queue)
        try:
            job = self._resolve(delivery, logical)
        except (DecodeError, UnknownTaskError) as exc:
            reason = "unknown-task" if isinstance(exc, UnknownTaskError) else "decode-error"
            dead = Outcome(reason, exc)
            record = JobRecord(delivery.message_id or "", "", 1, True, None, delivery.redelivered)
            if self._completion.active:
                try:
                    await self._completion.failed(record, dead, dead=True)
                except TransportError as error:  # the dead letter itself still carries why
                    logger.warning("could not record %s as dead: %s", record.job_id, error)
            await self._dead_letter(delivery, logical, dead, attempts=1)
            return
        try:
            outcome = await self._attempt(job)
        except TransportError as exc:  # the result backend or a workflow step's publish
            logger.warning("job %s not settled (%s); requeueing it", job.context.job_id, exc)
            await _reject_quietly(delivery)
            return
        if outcome is None:
            await self._settle_success(delivery, job.context)
            return
        delay = self._retry_delay(job, outcome)
        if not await self._record_failure(
            delivery, job.record, outcome, retrying=delay is not None
        ):
            return
        if delay is None:
            await self._dead_letter(
                delivery,
                logical,
                outcome,
                attempts=job.context.attempt,
                history=job.headers.history,
            )
        else:
            await self._retry(delivery, job, outcome, delay)

    async def _attempt(self, job: _Job) -> Outcome | None:
        """Run the job (unless it already succeeded) and record its success.

        Raises:
            TransportError: the result backend or the broker failed while recording it.
        """
        value: object
        done_before, value = await self._completion.finished_before(job.record)
        if not done_before:
            try:
                await self._completion.started(job.record)
            except TransportError as exc:  # a missing "running" state loses nothing
                logger.warning("could not record job %s as running: %s", job.record.job_id, exc)
            outcome, value = await self._run(job)
            if outcome is not None:
                return outcome
        try:
            await self._completion.succeeded(job.record, value)
        except EncodeError as exc:
            return Outcome("failed", exc)
        return None

    async def _record_failure(
        self, delivery: Delivery, record: JobRecord, outcome: Outcome, *, retrying: bool
    ) -> bool:
        """Record a retry or a failure for good; False (and requeued) if that failed."""
        try:
            if retrying:
                await self._completion.retrying(record)
            else:
                await self._completion.failed(record, outcome, dead=False)
        except TransportError as exc:
            logger.warning("job %s not settled (%s); requeueing it", record.job_id, exc)
            await _reject_quietly(delivery)
            return False
        return True

    def _resolve(self, delivery: Delivery, logical: str) -> _Job:
        """Read the headers, find the task, then decode the body (in that order)."""
        headers = read_headers(delivery.headers)
        task = self.queue.registry.get(headers.task)
        args, kwargs = decode_arguments(delivery.body)
        enqueued_at = headers.enqueued_at_ms / 1000
        due = headers.eta_ms / 1000 if headers.eta_ms is not None else enqueued_at
        context = JobContext(
            job_id=delivery.message_id or "",
            task=headers.task,
            queue=logical,
            # a delivery that came back unacked counts as an attempt: its worker died or lost
            # its connection (the broker cannot tell whether it had started)
            attempt=headers.attempt + delivery.delivery_count,
            args=args,
            kwargs=kwargs,
            enqueued_at=enqueued_at,
            due_at=due,
            started_at=time.time(),
            redelivered=delivery.redelivered,
            headers=headers.extra,
        )
        options = effective_options(task.options, headers.options)
        record = JobRecord(
            job_id=context.job_id,
            task=context.task,
            attempt=context.attempt,
            store=options.store_result and self._completion.active,
            links=workflow_links(headers),
            redelivered=delivery.redelivered,
        )
        if record.store:
            context.reporter = functools.partial(self._report_progress, record)
        return _Job(context, task, options, headers, record)

    async def _report_progress(self, record: JobRecord, progress: JSONValue) -> None:
        await self.queue.flows.record(
            JobState(
                record.job_id,
                JobStatus.RUNNING,
                task=record.task,
                attempt=record.attempt,
                progress=progress,
            )
        )

    async def _run(self, job: _Job) -> tuple[Outcome | None, object]:
        """Run the job through the middleware; return its failure (or None) and its value.

        Cancellation (shutdown) propagates: the job is then left unsettled on purpose.
        """
        token = set_current_job(job.context)
        try:
            call = build_chain(
                self.queue.middleware,
                job.context,
                functools.partial(self._invoke, job.task, job.context),
            )
            timeout = job.options.timeout
            deadline: anyio.CancelScope | None = None
            try:
                if timeout is None:  # no cancel scope for no limit: this is the hot path
                    value = await call()
                else:
                    with anyio.fail_after(timeout) as deadline:
                        value = await call()
            except Exception as exc:  # noqa: BLE001 - a task's exception is its outcome
                timed_out = (
                    isinstance(exc, TimeoutError)
                    and deadline is not None
                    and deadline.cancel_called
                )
                return Outcome("timeout" if timed_out else "failed", exc), None
            return None, value
        finally:
            reset_current_job(token)

    async def _invoke(self, task: Task[Any, Any], context: JobContext) -> object:
        if task.is_async:
            return await task.fn(*context.args, **context.kwargs)
        # plain functions never run on the event loop; contextvars (current_job) follow them
        return await anyio.to_thread.run_sync(
            functools.partial(task.fn, *context.args, **context.kwargs),
            limiter=self._threads,
            abandon_on_cancel=True,
        )

    def _retry_delay(self, job: _Job, outcome: Outcome) -> float | None:
        """Seconds until the next attempt, or None when the job is not retried."""
        policy = job.options.retry_policy()
        error = outcome.error
        if isinstance(error, Retry):
            if job.context.attempt >= policy.max_attempts:
                return None
            if error.delay is not None:
                return error.delay
        elif not policy.should_retry(error, job.context.attempt):
            return None
        return policy.delay(job.context.attempt, self._random.random())

    # -- settle ----------------------------------------------------------------------------

    async def _settle_success(self, delivery: Delivery, context: JobContext) -> None:
        try:
            await delivery.ack()
        except ConnectionLost as exc:
            logger.warning(
                "job %s succeeded but its ack was lost (%s); it will run again",
                context.job_id,
                exc,
            )
            return
        self._counts["succeeded"] += 1

    async def _retry(self, delivery: Delivery, job: _Job, outcome: Outcome, delay: float) -> None:
        """Publish the next attempt through the delay levels (confirmed), then ack."""
        self._counts["failed"] += 1
        delay_ms = math.ceil(delay * 1000)
        logger.info(
            "job %s attempt %d failed (%s: %s); retrying in %.2fs",
            job.context.job_id,
            job.context.attempt,
            type(outcome.error).__name__,
            outcome.error,
            delay,
        )

        def build() -> OutgoingMessage:
            # stamped after any first-time declaration of the delay levels, which can take
            # a second: the delay counts from the publish
            return retry_message(
                self.queue.names,
                delivery,
                job.context.queue,
                job.headers,
                attempt=job.context.attempt,
                outcome=outcome,
                delay_ms=delay_ms,
                now_ms=time.time_ns() // 1_000_000,
            )

        if await self._publish_then_ack(delivery, build, delayed=delay_ms > 0):
            self._counts["retried"] += 1

    async def _dead_letter(
        self,
        delivery: Delivery,
        logical: str,
        outcome: Outcome,
        *,
        attempts: int,
        history: tuple[Failure, ...] = (),
    ) -> None:
        """Publish the dead-letter copy (confirmed), then ack the original."""
        self._counts["failed"] += 1
        logger.warning(
            "job %s on %s dead-lettered after %d attempt(s) (%s): %s: %s",
            delivery.message_id,
            logical,
            attempts,
            outcome.reason,
            type(outcome.error).__name__,
            outcome.error,
        )
        message = dead_letter_message(
            self.queue.names,
            delivery,
            logical,
            outcome,
            attempts=attempts,
            history=history,
            now_ms=time.time_ns() // 1_000_000,
        )
        if await self._publish_then_ack(delivery, lambda: message, delayed=False):
            self._counts["dead_lettered"] += 1

    async def _publish_then_ack(
        self, delivery: Delivery, build: Callable[[], OutgoingMessage], *, delayed: bool
    ) -> bool:
        """Settle by moving the job: the new copy is confirmed before the original is acked."""
        try:
            if delayed:
                await self.queue.declare_delays()
            await self.queue.producer.publish(build())
            await delivery.ack()
        except ConnectionLost as exc:
            logger.warning(
                "moving %s interrupted (%s); it will be redelivered", delivery.message_id, exc
            )
            return False
        except Exception:  # the one catch-all: settling must never kill the worker
            logger.exception("moving %s failed; requeueing it", delivery.message_id)
            await _reject_quietly(delivery)
            return False
        return True


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


@dataclass(frozen=True, slots=True)
class _Job:
    context: JobContext
    task: Task[Any, Any]
    options: TaskOptions
    headers: JobHeaders
    record: JobRecord


def effective_options(options: TaskOptions, overrides: Mapping[str, JSONScalar]) -> TaskOptions:
    """The task's options with the per-job overrides sent at enqueue (bad ones are ignored)."""
    changes = {key: value for key, value in overrides.items() if key in PER_JOB_OPTIONS}
    if not changes:
        return options
    try:
        return dataclasses.replace(options, **changes)  # type: ignore[arg-type]
    except (ConfigurationError, TypeError) as exc:
        logger.warning("ignoring bad per-job options %r: %s", changes, exc)
        return options


async def _reject_quietly(delivery: Delivery) -> None:
    with contextlib.suppress(ConnectionLost):  # the broker requeues it with the channel
        await delivery.reject(requeue=True)
