"""One delivery, start to finish: decode → resolve → run the middleware chain → settle.

Settling is what makes the guarantees: a job is acked only after its outcome is settled
(success recorded, retry copy confirmed, or dead-letter copy confirmed). A job cancelled by
shutdown, or whose worker dies, is never acked, so the broker delivers it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from aqueue._client.queue import TaskQueue
from aqueue._core.config import PER_JOB_OPTIONS, TaskOptions
from aqueue._core.topology import HEADER_TASK
from aqueue._core.types import JSONScalar, JSONValue
from aqueue._core.wire import Failure, JobHeaders, read_headers
from aqueue._observability.hooks import JobObserver, observe_job
from aqueue._results import JobState, JobStatus
from aqueue._serialization import decode_arguments
from aqueue._tasks.context import JobContext, reset_current_job, set_current_job
from aqueue._tasks.middleware import build_chain
from aqueue._tasks.task import Task
from aqueue._transport import Delivery, OutgoingMessage
from aqueue._worker.completion import Completion, JobRecord, workflow_links
from aqueue._worker.settle import Outcome, dead_letter_message, retry_message
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


class JobRunner:
    """Processes deliveries for a worker; shares the worker's counters.

    Args:
        queue: the task queue (registry, middleware, producer, result flows).
        threads: the limiter of the thread pool for plain (sync) task functions.
        logical: broker queue name → logical queue name, filled by the worker.
        counts: the worker's counters, updated in place.
    """

    def __init__(
        self,
        queue: TaskQueue,
        *,
        threads: anyio.CapacityLimiter,
        logical: Mapping[str, str],
        counts: dict[str, int],
    ) -> None:
        self.queue = queue
        self._threads = threads
        self._logical = logical
        self._counts = counts
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        self._completion = Completion(queue.flows)

    async def process(self, delivery: Delivery) -> None:
        """Settle one delivery; never raises except on cancellation (it stays unacked).

        The queue's instrumentation observes it from its arrival until it is settled, so a
        tracing span covers the run *and* the publishes that settle it.
        """
        logical = self._logical.get(delivery.queue, delivery.queue)
        with observe_job(self.queue.instrumentation, delivery, logical) as observer:
            try:
                job = self._resolve(delivery, logical)
            except (DecodeError, UnknownTaskError) as exc:
                await self._undecodable(delivery, logical, exc, observer)
                return
            observer.started(job.context)
            # current until settled, not only while it runs: the log lines about its retry or
            # dead letter carry the job's fields too (see `aqueue._observability.logs`)
            token = set_current_job(job.context)
            try:
                await self._run_and_settle(delivery, logical, job, observer)
            finally:
                reset_current_job(token)

    async def _undecodable(
        self, delivery: Delivery, logical: str, exc: Exception, observer: JobObserver
    ) -> None:
        reason = "unknown-task" if isinstance(exc, UnknownTaskError) else "decode-error"
        dead = Outcome(reason, exc)
        record = JobRecord(delivery.message_id or "", "", 1, True, None, delivery.redelivered)
        if self._completion.active:
            try:
                await self._completion.failed(record, dead, dead=True)
            except TransportError as error:  # the dead letter itself still carries why
                logger.warning("could not record %s as dead: %s", record.job_id, error)
        await self._dead_letter(delivery, logical, dead, observer, attempts=1)

    async def _run_and_settle(
        self, delivery: Delivery, logical: str, job: _Job, observer: JobObserver
    ) -> None:
        try:
            outcome = await self._attempt(job, observer)
        except TransportError as exc:  # the result backend or a workflow step's publish
            logger.warning("job %s not settled (%s); requeueing it", job.context.job_id, exc)
            await _reject_quietly(delivery)
            observer.settled("requeued", exc)
            return
        if outcome is None:
            await self._settle_success(delivery, job.context, observer)
            return
        delay = self._retry_delay(job, outcome)
        if not await self._record_failure(
            delivery, job.record, outcome, retrying=delay is not None
        ):
            observer.settled("requeued", outcome.error)
            return
        if delay is None:
            await self._dead_letter(
                delivery,
                logical,
                outcome,
                observer,
                attempts=job.context.attempt,
                history=job.headers.history,
            )
        else:
            await self._retry(delivery, job, outcome, delay, observer)

    async def _attempt(self, job: _Job, observer: JobObserver) -> Outcome | None:
        """Run the job (unless it already succeeded) and record its success.

        Raises:
            TransportError: the result backend or the broker failed while recording it.
        """
        if not self._completion.active and job.record.links is None:
            return (await self._run_observed(job, observer))[0]  # nothing to record: hot path
        value: object
        done_before, value = await self._completion.finished_before(job.record)
        if not done_before:
            try:
                await self._completion.started(job.record)
            except TransportError as exc:  # a missing "running" state loses nothing
                logger.warning("could not record job %s as running: %s", job.record.job_id, exc)
            outcome, value = await self._run_observed(job, observer)
            if outcome is not None:
                return outcome
        try:
            await self._completion.succeeded(job.record, value)
        except (EncodeError, ConfigurationError) as exc:
            # a result that is not JSON, or a workflow step this worker cannot carry on (no
            # result backend for its barrier): a failed attempt, never a crashed worker
            return Outcome("failed", exc)
        return None

    async def _run_observed(
        self, job: _Job, observer: JobObserver
    ) -> tuple[Outcome | None, object]:
        started = time.perf_counter()
        outcome, value = await self._run(job)
        observer.finished(
            job.context, None if outcome is None else outcome.error, time.perf_counter() - started
        )
        return outcome, value

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
        except ConfigurationError as exc:  # e.g. an error callback and no result backend
            logger.error("job %s: its workflow cannot go on here: %s", record.job_id, exc)
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
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a task's exception is its outcome;
                # SystemExit too: a task calling sys.exit() must not stop the worker
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

    async def _settle_success(
        self, delivery: Delivery, context: JobContext, observer: JobObserver
    ) -> None:
        try:
            await delivery.ack()
        except ConnectionLost as exc:
            logger.warning(
                "job %s succeeded but its ack was lost (%s); it will run again",
                context.job_id,
                exc,
            )
            observer.settled("requeued", exc)
            return
        self._counts["succeeded"] += 1
        observer.settled("succeeded", None)

    async def _retry(
        self, delivery: Delivery, job: _Job, outcome: Outcome, delay: float, observer: JobObserver
    ) -> None:
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
            observer.settled("retried", outcome.error)
        else:
            observer.settled("requeued", outcome.error)

    async def _dead_letter(
        self,
        delivery: Delivery,
        logical: str,
        outcome: Outcome,
        observer: JobObserver,
        *,
        attempts: int,
        history: tuple[Failure, ...] = (),
    ) -> None:
        """Publish the dead-letter copy (confirmed), then ack the original."""
        self._counts["failed"] += 1
        task = delivery.headers.get(HEADER_TASK)
        logger.warning(
            "job %s on %s dead-lettered after %d attempt(s) (%s): %s: %s",
            delivery.message_id,
            logical,
            attempts,
            outcome.reason,
            type(outcome.error).__name__,
            outcome.error,
            # the job may never have been decoded: no current job to take the fields from
            extra={
                "job_id": delivery.message_id or "",
                "task": task if isinstance(task, str) else "",
                "attempt": attempts,
                "queue": logical,
            },
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
            observer.settled("dead-lettered", outcome.error)
        else:
            observer.settled("requeued", outcome.error)

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
