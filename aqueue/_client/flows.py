"""Running workflows: publish the jobs a step starts, and carry a workflow on after it.

The worker calls `Flows` before it acks a step, so a step that crashes is redelivered and
publishes the same jobs (same ids, same data) again. Job states are `JobStates`'; barriers
and run-once error callbacks need its result backend.
"""

from __future__ import annotations

import logging
import time

from aqueue._client.producer import Producer
from aqueue._core.types import JSONValue
from aqueue._core.wire import HEADER_WORKFLOW, Envelope
from aqueue._results import JobState, JobStatus, RemoteError
from aqueue._results.states import JobStates
from aqueue._workflows import (
    Join,
    Node,
    PlannedJob,
    Resume,
    WorkflowLinks,
    final_ids,
    first_id,
    plan,
)

logger = logging.getLogger("aqueue.workflows")


class Flows:
    """Workflow steps of one open `TaskQueue`: starts and continuations."""

    def __init__(self, producer: Producer, states: JobStates) -> None:
        self._producer = producer
        self._states = states

    async def start(
        self, node: Node, *, root: str, resume: Resume | None = None
    ) -> list[PlannedJob]:
        """Publish (confirmed) the jobs that start `node`; return them.

        Raises:
            EncodeError: an argument is not JSON; nothing was published.
            PublishError, ConnectionLost: as for `enqueue` (some jobs may have been published:
                the caller is redelivered and publishes the same ids again).
        """
        jobs = plan(node, root=root, resume=resume)
        producer = self._producer
        now_ms = time.time_ns() // 1_000_000
        messages = [producer.encode(_envelope(job, now_ms)) for job in jobs]
        for queue in sorted({job.queue for job in jobs}):
            await producer.declare_queue(queue)
        failures = await producer.publish_many(messages)
        if failures:
            raise failures[0].error
        # after the publish, so no state names a job that was never sent; a worker may have
        # started it already, and an initial state never replaces another (see set_state).
        # The node's handles that wait for other steps (a chord's callback, the end of a
        # chain) are known from now on too, as pending.
        started = {job.job_id for job in jobs}
        states = [JobState(job.job_id, JobStatus.QUEUED, task=job.task) for job in jobs]
        states += [
            JobState(job_id, JobStatus.PENDING)
            for job_id in dict.fromkeys(final_ids(node))
            if job_id not in started
        ]
        await self._states.record_many(states)
        return jobs

    async def succeeded(self, links: WorkflowLinks, result: JSONValue) -> None:
        """Start the side branches and what follows a step that returned `result`."""
        for branch in links.links:
            await self.start(branch, root=links.root, resume=Resume(result=result, has_result=True))
        pending = links.next
        while pending:
            head, pending = pending[0], pending[1:]
            if isinstance(head, Join):
                backend = self._states.require_backend("a group inside a workflow")
                values = await backend.join_barrier(
                    head.barrier, head.index, head.size, result, ttl=self._states.ttl
                )
                if values is None:
                    return  # other members are still running; the last one goes on
                result = list(values)
                continue
            resume = Resume(pending, links.fail, links.on_error, result, has_result=True)
            await self.start(head.node, root=links.root, resume=resume)
            return

    async def failed(
        self,
        links: WorkflowLinks,
        job_id: str,
        error: RemoteError,
        *,
        status: JobStatus = JobStatus.FAILED,
    ) -> None:
        """A step failed for good: fail the handles that wait on it; run error callbacks once.

        `status` is what the handles become: failed, or cancelled (a cancelled step).

        Each error callback is claimed in the backend by the first step that fails (and by
        that step's redeliveries, which publish it again with the same id): a group whose
        members all fail runs its error callback once, with the first failure.
        """
        for target in links.fail:
            if target != job_id:
                await self._states.record(
                    JobState(target, status, error=error, extra={"failed_job": job_id})
                )
        if not links.on_error:
            return
        backend = self._states.require_backend("an error callback")
        payload: JSONValue = {
            "job_id": job_id,
            "type": error.type,
            "message": error.message,
            "traceback": error.traceback,
        }
        for node in links.on_error:
            once = f"{links.root}:error:{first_id(node)}"
            if await backend.claim(once, job_id, ttl=self._states.ttl):
                resume = Resume(result=payload, has_result=True)
                await self.start(node, root=error_root(links.root), resume=resume)


def error_root(root: str) -> str:
    """The workflow id an error callback of workflow `root` runs under.

    A workflow of its own: cancelling a workflow cancels its steps by their root, and the
    error callbacks the cancellation starts must still run.
    """
    return f"{root}:on-error"


def _envelope(job: PlannedJob, now_ms: int) -> Envelope:
    return Envelope(
        job_id=job.job_id,
        task=job.task,
        queue=job.queue,
        args=job.args,
        kwargs=job.kwargs,
        enqueued_at_ms=now_ms,
        options=job.options,
        extra_headers={HEADER_WORKFLOW: job.links.encode()},
    )
