"""Job handles: what `enqueue` returns, and what `queue.job(job_id)` gives in any process."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import anyio

from aqueue._core.types import JSONValue
from aqueue._results.base import JobState, JobStatus, ResultBackend
from aqueue.exceptions import ConfigurationError, JobFailed, ResultTimeout

R = TypeVar("R")

_NO_BACKEND = (
    "no result backend is configured for this TaskQueue, so jobs are fire-and-forget and their "
    "results and states are not kept: pass results=RedisResultBackend(...) to TaskQueue"
)


@dataclass(frozen=True, slots=True)
class Job(Generic[R]):
    """A handle on one enqueued job.

    Attributes:
        job_id: the job id (AMQP ``message_id``), stable across attempts.
        task: the task name.
        queue: the logical queue it was sent to.
    """

    job_id: str
    task: str
    queue: str
    backend: ResultBackend | None = field(default=None, repr=False, compare=False)
    #: cancels a job id (`TaskQueue.cancel`); None for a handle made without a queue
    canceller: Callable[[str], Awaitable[bool]] | None = field(
        default=None, repr=False, compare=False
    )
    #: the workflow this job ends (its result handle), if any: `cancel` cancels all of it
    root: str | None = field(default=None, repr=False, compare=False)

    async def cancel(self) -> bool:
        """Cancel the job; for a workflow's handle, every step of it that has not finished.

        A queued or delayed job never starts; a running async job gets ``CancelledError``
        and is settled as ``cancelled`` (acked, not retried); a running sync job sees
        ``current_job().cancelled`` become true (threads cannot be stopped from outside); a
        job in a process pool has its process killed. See the cancellation page.

        Returns:
            False when the result backend knows the job finished already.

        Raises:
            ConfigurationError: the queue is not open, or this handle has no queue.
        """
        if self.canceller is None:
            raise ConfigurationError("this handle cannot cancel: use queue.cancel(job_id)")
        return await self.canceller(self.root or self.job_id)

    def _require_backend(self) -> ResultBackend:
        if self.backend is None:
            raise ConfigurationError(_NO_BACKEND)
        return self.backend

    async def state(self) -> JobState | None:
        """Everything known about the job, or None if nothing is (unknown id, or expired).

        Raises:
            ConfigurationError: no result backend is configured.
        """
        return await self._require_backend().get_state(self.job_id)

    async def status(self) -> JobStatus | None:
        """Where the job is: queued, scheduled, running, retrying, succeeded, failed or dead.

        Raises:
            ConfigurationError: no result backend is configured.
        """
        state = await self.state()
        return None if state is None else state.status

    async def progress(self) -> JSONValue:
        """The last progress the task reported (``current_job().report_progress(...)``)."""
        state = await self.state()
        return None if state is None else state.progress

    async def result(self, *, timeout: float | None = None) -> R:
        """Wait for the job's result, without polling.

        Raises:
            JobFailed: the job failed for good; carries the remote type, message, traceback.
            ResultTimeout: no result within `timeout` seconds (None: wait for ever).
            ConfigurationError: no result backend is configured.
        """
        backend = self._require_backend()
        state = await backend.wait_final(
            self.job_id, timeout=math.inf if timeout is None else timeout
        )
        if state is None:
            raise ResultTimeout(f"job {self.job_id} has no result after {timeout}s")
        if state.status is JobStatus.SUCCEEDED:
            return cast("R", state.result)
        error = state.error
        if error is None:
            raise JobFailed(self.job_id, "aqueue.JobFailed", f"job ended {state.status.value}")
        raise JobFailed(self.job_id, error.type, error.message, error.traceback)


@dataclass(frozen=True, slots=True)
class GroupJob:
    """A handle on a group's members; its result is theirs, in order."""

    jobs: Sequence[Job[Any]]

    async def cancel(self) -> bool:
        """Cancel the group's workflow: every member that has not finished (see `Job.cancel`).

        Raises:
            ConfigurationError: the queue is not open, or the handles have no queue.
        """
        cancelled = [await job.cancel() for job in self.jobs[:1]]  # they share one root
        return any(cancelled)

    async def result(self, *, timeout: float | None = None) -> list[Any]:
        """Every member's result, in member order.

        Raises:
            JobFailed: a member failed (the first one in order that did).
            ResultTimeout: not every member finished within `timeout`.
        """
        results: list[Any] = []
        with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
            results.extend([await job.result() for job in self.jobs])
        if scope.cancelled_caught:
            raise ResultTimeout(f"group of {len(self.jobs)} has no full result after {timeout}s")
        return results
