"""What the worker records and starts around a job when results or workflows are in play.

Every step here happens *before* the delivery is acked: a worker that dies in the middle is
redelivered and does it again, with the same job ids and the same data, so it is idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aqueue._client.flows import Flows
from aqueue._core.types import JSONValue
from aqueue._core.wire import JobHeaders
from aqueue._results import JobState, JobStatus, RemoteError
from aqueue._serialization import dumps
from aqueue._worker.settle import Outcome, qualified_name, traceback_tail
from aqueue._workflows import HEADER_WORKFLOW, WorkflowLinks

logger = logging.getLogger("aqueue.worker")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the completion steps need to know about one attempt."""

    job_id: str
    task: str
    attempt: int
    store: bool
    links: WorkflowLinks | None
    redelivered: bool


def workflow_links(headers: JobHeaders) -> WorkflowLinks | None:
    """The job's workflow links, if it is a workflow step.

    Raises:
        DecodeError: the workflow header is malformed.
    """
    value = headers.extra.get(HEADER_WORKFLOW)
    return None if value is None else WorkflowLinks.decode(value)


def remote_error(outcome: Outcome) -> RemoteError:
    """The text form of a failure, as kept in the result backend."""
    error = outcome.error
    return RemoteError(qualified_name(type(error)), str(error), traceback_tail(error))


class Completion:
    """Job states, deduplication of finished steps, and workflow continuations."""

    def __init__(self, flows: Flows) -> None:
        self._flows = flows

    @property
    def active(self) -> bool:
        """Whether anything is recorded at all (a result backend is configured)."""
        return self._flows.backend is not None

    async def finished_before(self, record: JobRecord) -> tuple[bool, JSONValue]:
        """Whether this job already succeeded (a redelivered step), and its stored result.

        Only redeliveries and workflow steps (whose ids repeat by design) are looked up.
        """
        backend = self._flows.backend
        if backend is None or not (record.redelivered or record.links is not None):
            return False, None
        state = await backend.get_state(record.job_id)
        if state is not None and state.status is JobStatus.SUCCEEDED:
            return True, state.result
        return False, None

    async def started(self, record: JobRecord) -> None:
        """Record that an attempt is running."""
        if record.store:
            await self._flows.record(
                JobState(record.job_id, JobStatus.RUNNING, task=record.task, attempt=record.attempt)
            )

    async def succeeded(self, record: JobRecord, value: object) -> None:
        """Record the result, then start what follows in the workflow.

        Raises:
            EncodeError: the result is not JSON (then the attempt counts as failed).
            TransportError: the backend or the broker failed; the delivery must not be acked.
        """
        if record.store or record.links is not None:
            dumps(value)  # a result that cannot be stored is a failure of the task
        result: JSONValue = value  # type: ignore[assignment]
        if record.store:
            await self._flows.record(
                JobState(
                    record.job_id,
                    JobStatus.SUCCEEDED,
                    task=record.task,
                    attempt=record.attempt,
                    result=result,
                )
            )
        if record.links is not None:
            await self._flows.succeeded(record.links, result)

    async def retrying(self, record: JobRecord) -> None:
        """Record that the job waits for its next attempt."""
        if record.store:
            await self._flows.record(
                JobState(
                    record.job_id, JobStatus.RETRYING, task=record.task, attempt=record.attempt
                )
            )

    async def failed(self, record: JobRecord, outcome: Outcome, *, dead: bool) -> None:
        """Record the failure for good; fail the workflow handles that wait on this job."""
        error = remote_error(outcome)
        if record.store:
            status = JobStatus.DEAD if dead else JobStatus.FAILED
            await self._flows.record(
                JobState(
                    record.job_id, status, task=record.task, attempt=record.attempt, error=error
                )
            )
        if record.links is not None:
            await self._flows.failed(record.links, record.job_id, error)
