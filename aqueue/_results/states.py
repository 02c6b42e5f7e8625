"""Job states: the one object that writes them (enqueue, every attempt, workflow handles).

Without a result backend every write is skipped, so nothing here costs a fire-and-forget
application anything. The worker's writes happen *before* a delivery is acked: a worker that
dies in the middle is redelivered and writes them again, which is harmless (see
`ResultBackend.set_state`: an initial state never replaces another).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aqueue._core.types import JSONValue
from aqueue._results.base import (
    FailedAttempt,
    JobState,
    JobStatus,
    RemoteError,
    ResultBackend,
    merge_attempts,
)
from aqueue.exceptions import ConfigurationError

#: States a job is in before any attempt of it runs (`JobStates.may_have_started`).
_BEFORE_A_START = frozenset(
    {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
)


@dataclass(slots=True)
class JobDetails:
    """What every state of one attempt carries besides its status (the job screen's facts).

    Attributes:
        arguments: the JSON text of the job's arguments, already redacted and bounded
            (`aqueue._tasks.redact.stored_arguments`): never a redacted value.
        enqueued_at: when the job was enqueued, Unix seconds.
        started_at: when this attempt started.
        history: the earlier failed attempts, oldest first: from the message's headers at
            first (no tracebacks there), merged with the stored ones (with their
            tracebacks) when the attempt starts running.
        trace_id: the W3C trace id of the job's message, if any.
    """

    arguments: str | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    history: tuple[FailedAttempt, ...] = ()
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of one job, as its states name it.

    Attributes:
        job_id: the job.
        task: its task name.
        attempt: 1 for the first run.
        store: whether its states are written (a backend is configured and the task keeps
            its results).
        ttl: seconds its states are kept; None: the queue's ``result_ttl``.
        details: its arguments, times and earlier failures, written into each of its states
            (None: only the status is written).
    """

    job_id: str
    task: str
    attempt: int
    store: bool
    ttl: float | None = None
    details: JobDetails | None = None

    def state(
        self,
        status: JobStatus,
        *,
        result: JSONValue = None,
        error: RemoteError | None = None,
        progress: JSONValue = None,
        failed: bool = False,
    ) -> JobState:
        """A state of this attempt.

        With `failed`, `error` is this attempt's failure, and is kept in the history too.
        """
        state = JobState(
            self.job_id,
            status,
            task=self.task,
            attempt=self.attempt,
            result=result,
            error=error,
            progress=progress,
        )
        details = self.details
        if details is None:
            return state
        history = details.history
        if failed and error is not None:
            failure = FailedAttempt(
                self.attempt, error.type, error.message, error.traceback, time.time()
            )
            history = merge_attempts(history, [failure])
        return replace(
            state,
            arguments=details.arguments,
            history=history,
            enqueued_at=details.enqueued_at,
            started_at=details.started_at,
            finished_at=time.time() if status.is_final else None,
            trace_id=details.trace_id,
        )


class JobStates:
    """Writes and reads job states in a `ResultBackend` (or does nothing without one).

    Args:
        backend: where states live; None for fire-and-forget.
        ttl: seconds every state is kept.
    """

    def __init__(self, backend: ResultBackend | None, ttl: float) -> None:
        self.backend = backend
        self.ttl = ttl

    @property
    def active(self) -> bool:
        """Whether anything is recorded at all (a result backend is configured)."""
        return self.backend is not None

    def require_backend(self, what: str) -> ResultBackend:
        """The backend, or a clear error saying `what` needs one.

        Raises:
            ConfigurationError: no result backend is configured.
        """
        if self.backend is None:
            raise ConfigurationError(
                f"{what} needs a result backend: pass results=RedisResultBackend(...) to TaskQueue"
            )
        return self.backend

    async def record(self, state: JobState, *, ttl: float | None = None) -> None:
        """Store a job state for `ttl` seconds (None: the queue's), when a backend exists."""
        if self.backend is not None:
            await self.backend.set_state(
                replace(state, updated_at=time.time()), ttl=self.ttl if ttl is None else ttl
            )

    async def record_many(self, states: Sequence[JobState], *, ttl: float | None = None) -> None:
        """Store job states in one round trip, when a backend is configured."""
        if self.backend is not None and states:
            now = time.time()
            stamped = [replace(state, updated_at=now) for state in states]
            await self.backend.set_states(stamped, ttl=self.ttl if ttl is None else ttl)

    # -- one attempt -----------------------------------------------------------------------

    async def succeeded_before(self, job_id: str) -> tuple[bool, JSONValue]:
        """Whether the job already succeeded (a redelivery), and its stored result."""
        if self.backend is None:
            return False, None
        state = await self.backend.get_state(job_id)
        if state is not None and state.status is JobStatus.SUCCEEDED:
            return True, state.result
        return False, None

    async def may_have_started(self, job_id: str, attempt: int) -> bool:
        """Whether `attempt` of the job may have started somewhere; True when nothing tells.

        A worker records ``running`` before it runs an attempt, so a redelivered job whose
        state is still from before that attempt (queued, scheduled, deferred, pending, or
        the previous attempt's ``retrying``) cannot have crashed a worker: it never ran. A
        job that already succeeded did run, but not again: the run path acks it. Any other
        state (``running``, a final one) or none (no backend, ``store_result=False``, an
        expired state) may be a crash.
        """
        if self.backend is None:
            return True
        state = await self.backend.get_state(job_id)
        if state is None:
            return True
        if state.status is JobStatus.SUCCEEDED:
            return False
        if state.status in _BEFORE_A_START:
            return state.attempt > attempt
        if state.status is JobStatus.RETRYING:
            return state.attempt >= attempt
        return True

    async def running(self, attempt: Attempt) -> None:
        """Record that an attempt is running.

        A retry's (attempt 2 on) reads the state first: the earlier attempts' tracebacks are
        kept there, not in the message, and go on in every state of this attempt.
        """
        if not attempt.store:
            return
        details = attempt.details
        if details is not None and attempt.attempt > 1 and self.backend is not None:
            before = await self.backend.get_state(attempt.job_id)
            if before is not None:
                details.history = merge_attempts(details.history, before.history)
                details.arguments = details.arguments or before.arguments
        await self.record(attempt.state(JobStatus.RUNNING), ttl=attempt.ttl)

    async def progress(self, attempt: Attempt, progress: JSONValue) -> None:
        """Record a progress value the running task reported."""
        if attempt.store:
            await self.record(attempt.state(JobStatus.RUNNING, progress=progress), ttl=attempt.ttl)

    async def succeeded(self, attempt: Attempt, result: JSONValue) -> None:
        """Record the result."""
        if attempt.store:
            await self.record(attempt.state(JobStatus.SUCCEEDED, result=result), ttl=attempt.ttl)

    async def retrying(self, attempt: Attempt, error: RemoteError | None = None) -> None:
        """Record that the job waits for its next attempt (`error`: why this one failed)."""
        if attempt.store:
            state = attempt.state(JobStatus.RETRYING, error=error, failed=True)
            await self.record(state, ttl=attempt.ttl)

    async def expired(self, attempt: Attempt, error: RemoteError) -> None:
        """Record that the job was delivered after its deadline and will not run."""
        if attempt.store:
            await self.record(attempt.state(JobStatus.EXPIRED, error=error), ttl=attempt.ttl)

    async def cancelled(self, attempt: Attempt, error: RemoteError) -> None:
        """Record that the job was cancelled (before it started, or while it ran)."""
        if attempt.store:
            await self.record(attempt.state(JobStatus.CANCELLED, error=error), ttl=attempt.ttl)

    async def deferred(self, attempt: Attempt, reason: str, until: float, times: int) -> None:
        """Record that the job waits in the broker for its turn (why, until when, how often)."""
        if attempt.store:
            state = attempt.state(JobStatus.DEFERRED)
            extra: dict[str, JSONValue] = {"reason": reason, "until": until, "times": times}
            await self.record(replace(state, extra=extra))

    async def failed(self, attempt: Attempt, error: RemoteError, *, dead: bool) -> None:
        """Record the failure for good (``dead``: it could not even be run)."""
        if attempt.store:
            status = JobStatus.DEAD if dead else JobStatus.FAILED
            await self.record(attempt.state(status, error=error, failed=True), ttl=attempt.ttl)
