"""One delivery, start to finish: resolve → run the middleware chain → record → settle.

Settling is what makes the guarantees: a job is acked only after its outcome is settled
(success recorded, retry copy confirmed, or dead-letter copy confirmed). A job cancelled by
shutdown, or whose worker dies, is never acked, so the broker delivers it again.

Retries, the time limit and workflow continuation are steps here, not middleware: they decide
the settlement, which happens after the middleware chain has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_process

from aqueue._client.session import Session
from aqueue._core.config import TaskOptions
from aqueue._core.delays import MAX_DELAY_MS
from aqueue._core.errors import qualified_name
from aqueue._core.flow import RATE_LANDING_LEAD, shard_of
from aqueue._core.queues import deferred_destination
from aqueue._core.types import JSONValue
from aqueue._core.wire import (
    HEADER_TASK,
    Failure,
    JobHeaders,
    OutgoingMessage,
    dead_letter_message,
    deferral_message,
    handback_message,
    quarantine_message,
    read_headers,
    retry_message,
)
from aqueue._observability.hooks import JobObserver, Settlement, observe_job
from aqueue._results import JobStatus
from aqueue._results.states import Attempt
from aqueue._serialization import decode_arguments, dumps
from aqueue._tasks.context import JobContext, reset_current_job, set_current_job
from aqueue._tasks.middleware import Middleware, build_chain
from aqueue._tasks.task import Task, call_in_process
from aqueue._transport import Delivery
from aqueue._worker.cancels import Cancellations
from aqueue._worker.details import attempt_details
from aqueue._worker.flow import Deferral, FlowGate, Slot
from aqueue._worker.gates import Gates
from aqueue._worker.leases import LeasableDelivery, LeaseCopies, Leases
from aqueue._worker.outcome import Outcome
from aqueue._worker.parking import Parking, ReservedDelivery
from aqueue._worker.threads import ThreadBudgets
from aqueue._workflows import WorkflowLinks
from aqueue.exceptions import (
    ConfigurationError,
    ConnectionLost,
    DecodeError,
    EncodeError,
    JobCancelled,
    JobCrashed,
    JobExpired,
    JobInterrupted,
    TransportError,
    UnknownTaskError,
)

logger = logging.getLogger("aqueue.worker")

#: Seconds a stopping worker gives the hand-back of one interrupted job (shielded from the
#: stop's cancellation): a publish and its confirm, then the ack.
INTERRUPTED_HAND_BACK = 5.0
#: The most a delayed job that arrives early waits for its due time before it starts.
EARLY_WAIT_MAX = 0.1
#: How an interruption is named in a job's history (`Failure.type`).
INTERRUPTED = qualified_name(JobInterrupted)


@dataclass(frozen=True, slots=True)
class _Job:
    """A resolved delivery: what it runs, with which options, and what it records."""

    delivery: Delivery
    context: JobContext
    task: Task[Any, Any]
    options: TaskOptions
    headers: JobHeaders
    attempt: Attempt
    links: WorkflowLinks | None


class _Lost(Exception):
    """The job's delivery was lost while it ran: its run was cancelled, the broker redelivers."""


class JobRunner:
    """Processes deliveries for a worker.

    Args:
        session: the open queue's session (producer, states, flows, instrumentation).
        tasks: the registered tasks, by name.
        middleware: run around every job, outermost first.
        threads: the thread budgets of the queues, for plain (sync) task functions.
        crash_limit: a job whose deliveries came back unacked this many times is
            dead-lettered with reason ``crashed`` instead of running again.
    """

    def __init__(
        self,
        session: Session,
        tasks: Mapping[str, Task[Any, Any]],
        middleware: Sequence[Middleware],
        *,
        threads: ThreadBudgets,
        crash_limit: int = 3,
        lease_after: float | None = None,
        lease_ttl: float = 60.0,
        cancellations: Cancellations | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self._session = session
        # the worker's stop: a job cancelled while it is true is handed back, not left unacked
        self._stopping = stopping if stopping is not None else _never
        self._cancels = cancellations if cancellations is not None else Cancellations(session)
        self._tasks = tasks
        self._middleware = tuple(middleware)
        self._threads = threads
        self._crash_limit = crash_limit
        self._leases = Leases(session, after=lease_after, ttl=lease_ttl)
        self._lease_copies = LeaseCopies(session, ttl=lease_ttl)
        #: rate limits and concurrency caps (slots leased like long jobs, for `lease_ttl`)
        self.flow = FlowGate(session.states, slot_ttl=lease_ttl)
        self._gates = Gates(session)
        #: where rate-limited jobs of each logical queue wait for their reserved start (set by
        #: the worker; without one, every deferral goes through the delay levels)
        self.parkings: Mapping[str, Parking] = {}
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    async def process(self, delivery: Delivery, queue: str) -> Settlement:
        """Settle one delivery from the logical `queue`; return how.

        Never raises except on cancellation (the delivery then stays unacked). The queue's
        instrumentation observes it from its arrival until it is settled, so a tracing span
        covers the run *and* the publishes that settle it.
        """
        leases = self._leases.active
        if (
            leases
            and LeaseCopies.is_copy(delivery)
            and await self._lease_copies.check(delivery, queue) != "run"
        ):
            return "lease-checked"
        with observe_job(self._session.instruments.all, delivery, queue) as observer:
            if delivery.undecodable is not None:
                # first: its redeliveries (each one killed a connection before aqueue had the
                # frame guard) must not be quarantined, nor run on salvaged headers
                return await self._undecodable(
                    delivery,
                    queue,
                    DecodeError(
                        "its AMQP properties could not be decoded "
                        f"({delivery.undecodable}); the dead letter carries what could be "
                        "salvaged of them"
                    ),
                    observer,
                    reason="undecodable-properties",
                )
            if LeaseCopies.is_copy(delivery) or (
                (delivery.redelivered or delivery.delivery_count)
                and await self._may_have_crashed(delivery)
            ):
                return await self._came_back(delivery, queue, observer)
            received = delivery
            if leases:
                delivery = LeasableDelivery(delivery)
            try:
                job = self._resolve(delivery, queue)
            except (DecodeError, UnknownTaskError) as exc:
                return await self._undecodable(delivery, queue, exc, observer)
            refused = await self._gate(delivery, job, observer)
            if refused is not None:
                return refused
            await _not_before_due(job.headers.eta_ms)
            slot: Slot | None = None
            if job.task.options.flow.active:
                admission = await self._admit(delivery, job, observer, received)
                if isinstance(admission, str):
                    return admission
                slot = admission
            observer.started(job.context)
            # current until settled, not only while it runs: the log lines about its retry or
            # dead letter carry the job's fields too (see `aqueue._observability.logs`)
            token = set_current_job(job.context)
            try:
                async with self.flow.holding(slot):
                    return await self._run_and_settle(delivery, job, observer)
            finally:
                reset_current_job(token)

    async def _gate(
        self, delivery: Delivery, job: _Job, observer: JobObserver
    ) -> Settlement | None:
        """Settle a job that must not run (expired, a second tick copy); None: run it."""
        expires_at_ms = job.headers.expires_at_ms
        if expires_at_ms is not None and time.time_ns() // 1_000_000 > expires_at_ms:
            late = time.time() - expires_at_ms / 1000
            expired = JobExpired(f"delivered {late:.3f}s after its deadline (expires)")
            return await self._expired(delivery, job, Outcome("expired", expired), observer)
        try:
            root = job.links.root if job.links is not None else None
            # a task that keeps no states (store_result=False) costs no backend read either:
            # its jobs are checked against the notices this worker heard
            stored = job.options.store_result or job.links is not None
            if await self._cancels.cancelled(job.context.job_id, root, stored=stored):
                cancelled = JobCancelled("cancelled before it started")
                return await self._settle_cancelled(
                    delivery, job, Outcome("cancelled", cancelled), observer
                )
            duplicate = await self._gates.duplicate_tick(job.context.job_id, job.headers.extra)
        except TransportError as exc:  # the backend is down: let the job wait for it
            logger.warning(
                "job %s: cannot check it may run (%s); requeueing it", job.context.job_id, exc
            )
            await _reject_quietly(delivery)
            return _settled(observer, "requeued", exc)
        if not duplicate:
            return None
        with contextlib.suppress(ConnectionLost):
            await delivery.ack()
        return _settled(observer, "duplicate", None)

    async def _settle_cancelled(
        self, delivery: Delivery, job: _Job, outcome: Outcome, observer: JobObserver
    ) -> Settlement:
        """Record a cancelled job, fail its workflow (error callbacks see why), then ack it."""
        error = outcome.remote_error()
        try:
            await self._session.states.cancelled(job.attempt, error)
            if job.links is not None:
                await self._session.flows.failed(
                    job.links, job.context.job_id, error, status=JobStatus.CANCELLED
                )
        except TransportError as exc:
            logger.warning("job %s not settled (%s); requeueing it", job.context.job_id, exc)
            await _reject_quietly(delivery)
            return _settled(observer, "requeued", exc)
        except ConfigurationError as exc:  # e.g. an error callback and no result backend
            logger.error("job %s: its workflow cannot go on here: %s", job.context.job_id, exc)
        logger.info("job %s cancelled: %s", job.context.job_id, outcome.message)
        try:
            await delivery.ack()
        except ConnectionLost as exc:
            return _settled(observer, "requeued", exc)
        return _settled(observer, "cancelled", outcome.error)

    async def _expired(
        self, delivery: Delivery, job: _Job, outcome: Outcome, observer: JobObserver
    ) -> Settlement:
        """Settle a job past its deadline: record it expired, then dead-letter or drop it."""
        try:
            await self._session.states.expired(job.attempt, outcome.remote_error())
        except TransportError as exc:  # the dead letter still says why
            logger.warning("could not record %s as expired: %s", job.context.job_id, exc)
        if job.options.on_expire == "drop":
            logger.info("job %s dropped: %s", job.context.job_id, outcome.message)
            try:
                await delivery.ack()
            except ConnectionLost as exc:
                return _settled(observer, "requeued", exc)
            return _settled(observer, "expired", outcome.error)
        return await self._dead_letter(
            delivery,
            job.context.queue,
            outcome,
            observer,
            attempts=job.context.attempt,
            history=job.headers.history,
            settlement="expired",
        )

    # -- resolve ---------------------------------------------------------------------------

    def _resolve(self, delivery: Delivery, queue: str) -> _Job:
        """Read the headers, find the task, then decode the body (in that order)."""
        headers = read_headers(delivery.headers)
        task = self._tasks.get(headers.task)
        if task is None:
            raise UnknownTaskError(f"no task named {headers.task!r} is registered here")
        args, kwargs = decode_arguments(delivery.body)
        enqueued_at = headers.enqueued_at_ms / 1000
        due = headers.eta_ms / 1000 if headers.eta_ms is not None else enqueued_at
        context = JobContext(
            job_id=delivery.message_id or "",
            task=headers.task,
            queue=queue,
            # a delivery that came back unacked and may have run went to the quarantine (as
            # its next attempt); one that comes here never started: the same attempt
            attempt=headers.attempt,
            args=args,
            kwargs=kwargs,
            enqueued_at=enqueued_at,
            due_at=due,
            started_at=time.time(),
            # a quarantined copy is a fresh message, but its job came back all the same
            redelivered=delivery.redelivered or headers.crashes > 0,
            headers=headers.extra,
        )
        options = _with_overrides(task.options, headers)
        store = options.store_result and self._session.states.active
        attempt = Attempt(
            context.job_id,
            context.task,
            context.attempt,
            store,
            options.result_ttl,
            # the job screen's facts (issue 14): made only for stored states, redacted here
            attempt_details(task, context, headers, delivery.headers, delivery.body)
            if store
            else None,
        )
        if store:
            context.reporter = functools.partial(self._session.states.progress, attempt)
        links = WorkflowLinks.of(headers.extra)
        return _Job(delivery, context, task, options, headers, attempt, links)

    async def hand_back(self, delivery: Delivery, queue: str) -> bool:
        """Give back a delivery this worker took but never started (it is stopping).

        A fresh copy goes to the tail of its queue, confirmed before the original is acked:
        left unacked, it would come back redelivered and be quarantined as the neighbour of a
        crash. A delivery that came back already, a lease copy or an undecodable one is left
        to go back as it came (checked again like any redelivery). True if it was moved.
        """
        if (
            delivery.redelivered
            or delivery.delivery_count
            or delivery.undecodable is not None
            or LeaseCopies.is_copy(delivery)
        ):
            return False

        def build() -> OutgoingMessage:
            return handback_message(
                self._session.names, delivery, queue=queue, now_ms=time.time_ns() // 1_000_000
            )

        try:
            return await self._publish_then_ack(delivery, build, delayed=False)
        except EncodeError:  # pragma: no cover - it was received with these headers
            return False

    async def _may_have_crashed(self, delivery: Delivery) -> bool:
        """Whether a delivery that came back may have crashed its worker (else: run it).

        It may, unless the result backend shows its attempt never started: a quorum queue
        returns the messages assigned to a consumer that is cancelled (a worker stopping)
        before they were sent, marked redelivered, and so does a channel closed with
        deliveries not yet started. Those are not suspects, and need no quarantine.
        """
        if not self._session.states.active or delivery.message_id is None:
            return True
        try:
            attempt = read_headers(delivery.headers).attempt
            return await self._session.states.may_have_started(delivery.message_id, attempt)
        except (DecodeError, TransportError):  # cannot tell: the quarantine decides
            return True

    async def _came_back(self, delivery: Delivery, queue: str, observer: JobObserver) -> Settlement:
        """A delivery that came back unacked: a worker holding it died, or lost its connection.

        It could be the cause (a job that kills its worker), or a neighbour of the cause. It is
        not run here among other jobs: a fresh copy goes to the queue's quarantine, where
        workers run such jobs one at a time, so a crash counts against the job that caused
        it. Past `crash_limit` it is dead-lettered (reason ``crashed``).
        """
        try:
            headers = read_headers(delivery.headers)
        except DecodeError as exc:
            return await self._undecodable(delivery, queue, exc, observer)
        if (
            self._leases.active
            and not LeaseCopies.is_copy(delivery)
            and await self._lease_copies.stands_in(delivery)
        ):
            # acked early under a lease, then redelivered: the lease copy is the job now
            logger.info(
                "job %s came back, but its lease copy stands in for it", delivery.message_id
            )
            with contextlib.suppress(ConnectionLost):
                await delivery.ack()
            return _settled(observer, "lease-checked", None)
        came_back = max(delivery.delivery_count, 1)
        crashes = headers.crashes + came_back
        attempt = headers.attempt + came_back
        if crashes >= self._crash_limit:
            crashed = JobCrashed(
                f"its deliveries came back unacked {crashes} times (crash_limit="
                f"{self._crash_limit}): the worker holding it died or lost its connection"
            )
            return await self._dead_letter(
                delivery,
                queue,
                Outcome("crashed", crashed),
                observer,
                attempts=attempt,
                history=headers.history,
            )
        logger.warning(
            "job %s came back unacked (%d time(s)); quarantined to run alone",
            delivery.message_id,
            crashes,
        )

        def build() -> OutgoingMessage:
            return quarantine_message(
                self._session.names,
                delivery,
                queue=queue,
                attempt=attempt,
                crashes=crashes,
                now_ms=time.time_ns() // 1_000_000,
            )

        try:
            moved = await self._publish_then_ack(delivery, build, delayed=False)
        except EncodeError as exc:  # its own headers are too big to copy: it cannot run alone
            crashed = JobCrashed(
                f"it came back unacked ({crashes} time(s)) and cannot be quarantined: {exc}"
            )
            return await self._dead_letter(
                delivery,
                queue,
                Outcome("crashed", crashed),
                observer,
                attempts=attempt,
                history=headers.history,
            )
        return _settled(observer, "quarantined" if moved else "requeued", None)

    async def _undecodable(
        self,
        delivery: Delivery,
        queue: str,
        exc: Exception,
        observer: JobObserver,
        *,
        reason: str | None = None,
    ) -> Settlement:
        if reason is None:
            reason = "unknown-task" if isinstance(exc, UnknownTaskError) else "decode-error"
        dead = Outcome(reason, exc)
        states = self._session.states
        if states.active:
            attempt = Attempt(delivery.message_id or "", "", 1, store=True)
            try:
                await states.failed(attempt, dead.remote_error(), dead=True)
            except TransportError as error:  # the dead letter itself still carries why
                logger.warning("could not record %s as dead: %s", attempt.job_id, error)
        return await self._dead_letter(delivery, queue, dead, observer, attempts=1)

    # -- flow control ----------------------------------------------------------------------

    async def _admit(
        self, delivery: Delivery, job: _Job, observer: JobObserver, received: Delivery
    ) -> Slot | Settlement | None:
        """Ask the job's limits: a `Slot` (or None) to run it; how it was settled if not."""
        context = job.context
        try:
            # before a start is reserved: a deferral must not wait for the first declaration
            # of the delay levels (seconds, on quorum queues) and miss its reserved time
            await self._session.producer.declare_delays()
            admission = await self.flow.admit(
                job.task, context.args, context.kwargs, delivery.headers
            )
        except TransportError as exc:
            logger.warning(
                "job %s: its limits could not be read (%s); requeueing it", context.job_id, exc
            )
            await _reject_quietly(delivery)
            return _settled(observer, "requeued", exc)
        if not isinstance(admission, Deferral):
            return admission
        parking = self.parkings.get(context.queue)
        if (
            admission.reason == "rate"
            and admission.delay <= RATE_LANDING_LEAD
            and parking is not None
        ):
            return await self._park(received, job, admission, parking, observer)
        return await self._defer(delivery, job, admission, observer)

    async def _park(
        self,
        received: Delivery,
        job: _Job,
        deferral: Deferral,
        parking: Parking,
        observer: JobObserver,
    ) -> Settlement:
        """Keep a job whose reserved start is near in the parking (unacked, in no runner)."""
        due_ms = time.time_ns() // 1_000_000 + math.ceil(deferral.delay * 1000)
        logger.info(
            "job %s parked %.3fs for its reserved start (rate limit)",
            job.context.job_id,
            deferral.delay,
        )
        try:
            await self._session.states.deferred(
                job.attempt, deferral.reason, due_ms / 1000, deferral.times
            )
        except TransportError as exc:  # the state is for show
            logger.warning("could not record job %s as deferred: %s", job.context.job_id, exc)
        parking.put(ReservedDelivery(received, eta_ms=due_ms))
        return _settled(observer, "rate-limited", None)

    async def _defer(
        self, delivery: Delivery, job: _Job, deferral: Deferral, observer: JobObserver
    ) -> Settlement | None:
        """Publish the job again, due after the deferral (confirmed), then ack: not an attempt.

        None: the copy cannot be built (headers over a frame, which its own publish would
        have hit already): the job runs now rather than never.
        """
        due_ms = time.time_ns() // 1_000_000 + math.ceil(deferral.delay * 1000)
        delay_ms = max(1, min(math.ceil(deferral.delay * 1000), MAX_DELAY_MS))
        context = job.context
        logger.info(
            "job %s deferred %.3fs by its %s (deferral %d of this attempt)",
            context.job_id,
            delay_ms / 1000,
            "rate limit" if deferral.reason == "rate" else "concurrency cap",
            deferral.times,
        )

        # a reserved start comes back early and waits in the worker's parking for its time
        # (the delay levels run late under load, by as much as a second); a cap's retry has
        # no reserved time to keep
        early_ms = round(RATE_LANDING_LEAD * 1000) if deferral.reason == "rate" else 0

        def build() -> OutgoingMessage:
            # due at the reserved time, whenever the copy is built
            now_ms = time.time_ns() // 1_000_000
            return deferral_message(
                self._session.names,
                delivery,
                destination=deferred_destination(context.queue),
                reason=deferral.reason,
                delay_ms=max(1, min(due_ms - now_ms - early_ms, MAX_DELAY_MS)),
                now_ms=now_ms,
                eta_ms=due_ms,
            )

        try:
            await self._session.states.deferred(
                job.attempt, deferral.reason, time.time() + delay_ms / 1000, deferral.times
            )
        except TransportError as exc:  # the state is for show: the deferral goes on
            logger.warning("could not record job %s as deferred: %s", context.job_id, exc)
        try:
            moved = await self._publish_then_ack(delivery, build, delayed=True)
        except EncodeError as exc:  # its headers cannot fit a frame: run it now instead
            logger.error("job %s cannot be deferred (%s); running it now", context.job_id, exc)
            return None
        if not moved:
            return _settled(observer, "requeued", None)
        settlement: Settlement = (
            "rate-limited" if deferral.reason == "rate" else "concurrency-limited"
        )
        return _settled(observer, settlement, None)

    # -- run -------------------------------------------------------------------------------

    async def _run_and_settle(
        self, delivery: Delivery, job: _Job, observer: JobObserver
    ) -> Settlement:
        if not isinstance(delivery, LeasableDelivery):
            return await self._run_then_settle(delivery, job, observer)
        async with self._leases.keeping(delivery, job.context.queue) as lease:
            settlement = await self._run_then_settle(delivery, job, observer)
        if settlement != "requeued":  # else the lease expires, and its copy brings the job back
            await lease.end()
        return settlement

    async def _run_then_settle(
        self, delivery: Delivery, job: _Job, observer: JobObserver
    ) -> Settlement:
        try:
            outcome = await self._attempt(job, observer)
        except _Lost as exc:
            logger.warning(
                "job %s: its channel to the broker closed while it ran; this run is cancelled "
                "and the broker delivers the job again",
                job.context.job_id,
            )
            return _settled(observer, "requeued", exc)
        except TransportError as exc:  # the result backend or a workflow step's publish
            logger.warning("job %s not settled (%s); requeueing it", job.context.job_id, exc)
            await _reject_quietly(delivery)
            return _settled(observer, "requeued", exc)
        except anyio.get_cancelled_exc_class():
            leased = isinstance(delivery, LeasableDelivery) and delivery.leased
            if self._stopping() and not leased:  # a leased job's lease copy brings it back
                with anyio.CancelScope(shield=True), anyio.move_on_after(INTERRUPTED_HAND_BACK):
                    await self._interrupted(delivery, job, observer)
            raise
        if outcome is None:
            return await self._settle_success(delivery, job.context, observer)
        if outcome.reason == "cancelled":
            return await self._settle_cancelled(delivery, job, outcome, observer)
        policy = job.options.retry_policy()
        delay = policy.next_delay(outcome.error, job.context.attempt, self._random.random())
        if delay is not None and _past_deadline(job.headers, delay):
            # a retry never outlives the deadline: this failure is the last
            outcome, delay = Outcome("expired", outcome.error), None
        if not await self._record_failure(delivery, job, outcome, retrying=delay is not None):
            return _settled(observer, "requeued", outcome.error)
        if delay is None:
            return await self._dead_letter(
                delivery,
                job.context.queue,
                outcome,
                observer,
                attempts=job.context.attempt,
                history=job.headers.history,
                settlement="expired" if outcome.reason == "expired" else "dead-lettered",
            )
        return await self._retry(delivery, job, outcome, delay, observer)

    async def _interrupted(self, delivery: Delivery, job: _Job, observer: JobObserver) -> None:
        """The worker stops and its grace ran out under this job: hand it back, next attempt.

        Left unacked, it would come back redelivered and be quarantined as the neighbour of
        a crash. The copy is the next attempt, due now, with the interruption in its history;
        past `crash_limit` interruptions the job is dead-lettered (reason ``interrupted``)
        instead. If the hand-back fails, the delivery goes back unacked as before.
        """
        times = 1 + sum(1 for failure in job.headers.history if failure.type == INTERRUPTED)
        error = JobInterrupted(f"its worker stopped before it finished (interruption {times})")
        outcome = Outcome("interrupted", error)
        retrying = times <= self._crash_limit
        if not await self._record_failure(delivery, job, outcome, retrying=retrying):
            return
        if retrying:
            await self._retry(delivery, job, outcome, 0.0, observer)
            return
        await self._dead_letter(
            delivery,
            job.context.queue,
            outcome,
            observer,
            attempts=job.context.attempt,
            history=job.headers.history,
        )

    async def _attempt(self, job: _Job, observer: JobObserver) -> Outcome | None:
        """Run the job (unless it already succeeded), record its success, carry its workflow on.

        Raises:
            TransportError: the result backend or the broker failed while recording it.
        """
        states = self._session.states
        if not states.active and job.links is None:
            return (await self._run_observed(job, observer))[0]  # nothing to record: hot path
        value: object = None
        done_before = False
        # only redeliveries and workflow steps (whose ids repeat by design) are looked up
        if job.context.redelivered or job.links is not None:
            done_before, value = await states.succeeded_before(job.context.job_id)
        if not done_before:
            try:
                await states.running(job.attempt)
            except TransportError as exc:  # a missing "running" state loses nothing
                logger.warning("could not record job %s as running: %s", job.context.job_id, exc)
            outcome, value = await self._run_observed(job, observer)
            if outcome is not None:
                return outcome
        try:
            await self._succeeded(job, value)
        except (EncodeError, ConfigurationError) as exc:
            # a result that is not JSON, or a workflow step this worker cannot carry on (no
            # result backend for its barrier): a failed attempt, never a crashed worker
            return Outcome("failed", exc)
        return None

    async def _succeeded(self, job: _Job, value: object) -> None:
        """Record the result, then start what follows in the workflow.

        Raises:
            EncodeError: the result is not JSON (then the attempt counts as failed).
            TransportError: the backend or the broker failed; the delivery must not be acked.
        """
        if job.attempt.store or job.links is not None:
            dumps(value)  # a result that cannot be stored is a failure of the task
        result: JSONValue = value  # type: ignore[assignment]
        await self._session.states.succeeded(job.attempt, result)
        if job.links is not None:
            await self._session.flows.succeeded(job.links, result)

    async def _run_observed(
        self, job: _Job, observer: JobObserver
    ) -> tuple[Outcome | None, object]:
        started = time.perf_counter()
        outcome, value = await self._run(job)
        observer.finished(
            job.context, None if outcome is None else outcome.error, time.perf_counter() - started
        )
        return outcome, value

    async def _run(self, job: _Job) -> tuple[Outcome | None, object]:
        """Run the job through the middleware; return its failure (or None) and its value.

        Cancellation (shutdown) propagates: the job is then left unsettled on purpose. If the
        delivery is lost meanwhile (its channel died: the broker redelivers it), the run is
        cancelled and `_Lost` raised, so it cannot also settle.

        Raises:
            _Lost: the delivery was lost during the run.
        """
        result: tuple[Outcome | None, object] = None, None
        root = job.links.root if job.links is not None else None
        cooperative = not job.task.is_async and job.options.executor == "thread"
        run = self._cancels.running(job.context, root, cooperative=cooperative)
        with run as scope:
            job.delivery.on_lost(run.lose)
            try:
                result = await self._run_chain(job)
            finally:
                job.delivery.on_lost(None)
        if run.lost:
            raise _Lost(job.context.job_id)
        if scope.cancel_called or job.context.cancelled:
            # a sync function that returned after the cancellation: its result is discarded
            return Outcome("cancelled", JobCancelled("cancelled while it ran")), None
        return result

    async def _run_chain(self, job: _Job) -> tuple[Outcome | None, object]:
        token = set_current_job(job.context)
        try:
            call = build_chain(
                self._middleware,
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
            except BaseException as exc:
                # whatever it is (SystemExit, a CancelledError of its own, a BaseException
                # subclass): only a cancellation of this worker's own (shutdown, a lost
                # delivery) leaves the job unsettled
                if _cancelled_from_outside(exc):
                    raise
                timed_out = (
                    isinstance(exc, TimeoutError)
                    and deadline is not None
                    and deadline.cancel_called
                )
                if timed_out and not job.task.is_async and job.options.executor == "thread":
                    self._abandoned_at_timeout(job)
                return Outcome("timeout" if timed_out else "failed", exc), None
            return None, value
        finally:
            reset_current_job(token)

    async def _invoke(self, task: Task[Any, Any], context: JobContext) -> object:
        if task.is_async:
            return await task.fn(*context.args, **context.kwargs)
        if task.options.executor == "process":
            # cancellable: a timeout or a stop kills the pool process (SIGKILL), so unlike a
            # thread nothing runs on after its job; anyio starts a fresh process next time
            return await anyio.to_process.run_sync(
                call_in_process,
                task.fn.__module__,
                task.fn.__name__,
                tuple(context.args),
                dict(context.kwargs),
                cancellable=True,
            )
        # plain functions never run on the event loop; contextvars (current_job) follow them
        return await self._threads.for_queue(context.queue).run(
            context, functools.partial(task.fn, *context.args, **context.kwargs)
        )

    def _abandoned_at_timeout(self, job: _Job) -> None:
        threads = self._threads.for_queue(job.context.queue)
        entry = threads.timed_out(job.context)
        if entry is None:  # it returned at the last moment, or never got a thread
            return
        logger.warning(
            "job %s timed out (timeout %gs), but its sync function cannot be stopped: it runs "
            "on in its thread (for %.1fs so far), its result to be discarded, and keeps one of "
            "queue %s's threads until it returns (%d abandoned thread(s) running, %d of %d "
            "threads busy)",
            job.context.job_id,
            job.options.timeout,
            entry.running_for,
            threads.queue,
            threads.abandoned_count(),
            threads.busy(),
            threads.limit,
        )

    async def _record_failure(
        self, delivery: Delivery, job: _Job, outcome: Outcome, *, retrying: bool
    ) -> bool:
        """Record a retry or a failure for good; False (and requeued) if that failed."""
        states = self._session.states
        try:
            if retrying:
                await states.retrying(job.attempt, outcome.remote_error())
            else:
                error = outcome.remote_error()
                await states.failed(job.attempt, error, dead=False)
                if job.links is not None:
                    await self._session.flows.failed(job.links, job.context.job_id, error)
        except TransportError as exc:
            logger.warning("job %s not settled (%s); requeueing it", job.context.job_id, exc)
            await _reject_quietly(delivery)
            return False
        except ConfigurationError as exc:  # e.g. an error callback and no result backend
            logger.error("job %s: its workflow cannot go on here: %s", job.context.job_id, exc)
        return True

    # -- settle ----------------------------------------------------------------------------

    async def _settle_success(
        self, delivery: Delivery, context: JobContext, observer: JobObserver
    ) -> Settlement:
        try:
            await delivery.ack()
        except ConnectionLost as exc:
            logger.warning(
                "job %s succeeded but its ack was lost (%s); it will run again",
                context.job_id,
                exc,
            )
            return _settled(observer, "requeued", exc)
        return _settled(observer, "succeeded", None)

    async def _retry(
        self, delivery: Delivery, job: _Job, outcome: Outcome, delay: float, observer: JobObserver
    ) -> Settlement:
        """Publish the next attempt through the delay levels (confirmed), then ack."""
        delay_ms = min(math.ceil(delay * 1000), MAX_DELAY_MS)  # next_delay caps it already
        logger.info(
            "job %s attempt %d failed (%s: %s); retrying in %.2fs",
            job.context.job_id,
            job.context.attempt,
            outcome.type_name,
            outcome.message,
            delay,
        )

        def build() -> OutgoingMessage:
            # stamped after any first-time declaration of the delay levels, which can take
            # a second: the delay counts from the publish
            now_ms = time.time_ns() // 1_000_000
            return retry_message(
                self._session.names,
                delivery,
                job.headers,
                queue=job.context.queue,
                attempt=job.context.attempt,
                failure=outcome.failure(job.context.attempt, now_ms),
                delay_ms=delay_ms,
                now_ms=now_ms,
                # a fair-share job retries in its shard, still apart from other tenants
                destination=shard_of(self._session.names, job.context.queue, delivery.queue),
            )

        try:
            moved = await self._publish_then_ack(delivery, build, delayed=delay_ms > 0)
        except EncodeError as exc:  # its headers cannot fit a frame even trimmed
            logger.error(
                "job %s cannot be retried (%s); dead-lettering it", job.context.job_id, exc
            )
            return await self._dead_letter(
                delivery,
                job.context.queue,
                outcome,
                observer,
                attempts=job.context.attempt,
                history=job.headers.history,
            )
        return _settled(observer, "retried" if moved else "requeued", outcome.error)

    async def _dead_letter(
        self,
        delivery: Delivery,
        queue: str,
        outcome: Outcome,
        observer: JobObserver,
        *,
        attempts: int,
        history: tuple[Failure, ...] = (),
        settlement: Settlement = "dead-lettered",
    ) -> Settlement:
        """Publish the dead-letter copy (confirmed), then ack the original."""
        task = delivery.headers.get(HEADER_TASK)
        logger.warning(
            "job %s on %s dead-lettered after %d attempt(s) (%s): %s: %s",
            delivery.message_id,
            queue,
            attempts,
            outcome.reason,
            outcome.type_name,
            outcome.message,
            # the job may never have been decoded: no current job to take the fields from
            extra={
                "job_id": delivery.message_id or "",
                "task": task if isinstance(task, str) else "",
                "attempt": attempts,
                "queue": queue,
            },
        )
        message = dead_letter_message(
            self._session.names,
            delivery,
            queue=queue,
            cause=outcome.cause(),
            attempts=attempts,
            history=history,
            now_ms=time.time_ns() // 1_000_000,
        )
        try:
            moved = await self._publish_then_ack(delivery, lambda: message, delayed=False)
        except EncodeError as exc:  # a header the transport cannot send: the broker moves it
            logger.error(
                "job %s: its dead-letter copy cannot be sent (%s); rejecting it to the "
                "dead-letter queue as it is",
                delivery.message_id,
                exc,
            )
            moved = await _reject_to_dead_letters(delivery)
        return _settled(observer, settlement if moved else "requeued", outcome.error)

    async def _publish_then_ack(
        self, delivery: Delivery, build: Callable[[], OutgoingMessage], *, delayed: bool
    ) -> bool:
        """Settle by moving the job: the new copy is confirmed before the original is acked.

        Raises:
            EncodeError: `build` could not make the copy; nothing was published.
        """
        producer = self._session.producer
        try:
            if delayed:
                await producer.declare_delays()
            await producer.publish(build(), patient=True)
            await delivery.ack()
        except EncodeError:  # the copy cannot be built: the caller settles otherwise
            raise
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


def _past_deadline(headers: JobHeaders, delay: float) -> bool:
    """Whether a retry `delay` seconds from now would be due after the job's deadline."""
    deadline = headers.expires_at_ms
    return deadline is not None and time.time_ns() // 1_000_000 + math.ceil(delay * 1000) > deadline


async def _not_before_due(eta_ms: int | None) -> None:
    """Wait out a delayed job's last milliseconds if the delay levels brought it early.

    Their TTLs are RabbitMQ's clock, which can run a little early (measured: 4 ms early
    once in 1,000 random delays of up to 20 s, with a millisecond to spare per level). The
    wait is bounded by `EARLY_WAIT_MAX`: a job much earlier than that (a producer whose
    clock runs ahead) is not held in memory for it.
    """
    if eta_ms is None:
        return
    early = eta_ms / 1000 - time.time()
    if early > 0:
        await anyio.sleep(min(early, EARLY_WAIT_MAX))


def _never() -> bool:
    return False


def _cancelled_from_outside(exc: BaseException) -> bool:
    """Whether `exc` is a cancellation of the running task (not one a job raised itself).

    anyio cancels through ``Task.cancel()``, which `Task.cancelling` counts; a task that
    raises ``CancelledError`` itself, or awaits a future someone else cancelled, leaves it
    at 0.
    """
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _settled(
    observer: JobObserver, settlement: Settlement, error: BaseException | None
) -> Settlement:
    observer.settled(settlement, error)
    return settlement


def _with_overrides(options: TaskOptions, headers: JobHeaders) -> TaskOptions:
    """The task's options with the per-job overrides sent at enqueue (bad ones are ignored)."""
    try:
        return options.with_overrides(headers.options)
    except ConfigurationError as exc:
        logger.warning("ignoring bad per-job options %r: %s", dict(headers.options), exc)
        return options


async def _reject_to_dead_letters(delivery: Delivery) -> bool:
    """Reject without requeue: the work queue's dead-letter exchange takes the message as is."""
    try:
        await delivery.reject(requeue=False)
    except ConnectionLost as exc:
        logger.warning("rejecting %s interrupted (%s)", delivery.message_id, exc)
        return False
    return True


async def _reject_quietly(delivery: Delivery) -> None:
    with contextlib.suppress(ConnectionLost):  # the broker requeues it with the channel
        await delivery.reject(requeue=True)
