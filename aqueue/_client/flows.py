"""Running workflows and keeping job states: the TaskQueue's side of results and workflows.

`Flows` publishes the jobs a workflow step starts (confirmed), records job states in the
result backend, and carries a workflow on after a step succeeds or fails for good. The worker
calls it before it acks, so a step that crashes is redelivered and publishes the same jobs (same
ids, same data) again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from aqueue._core.types import JSONValue
from aqueue._core.wire import Envelope
from aqueue._results import JobState, JobStatus, RemoteError, ResultBackend
from aqueue._workflows import (
    HEADER_WORKFLOW,
    Continuation,
    Join,
    Node,
    PlannedJob,
    WorkflowLinks,
    final_ids,
    first_id,
    plan,
)
from aqueue.exceptions import ConfigurationError

if TYPE_CHECKING:
    from aqueue._client.queue import TaskQueue

logger = logging.getLogger("aqueue.workflows")


class Flows:
    """Workflow steps and job states for one open `TaskQueue`."""

    def __init__(self, queue: TaskQueue, backend: ResultBackend | None, ttl: float) -> None:
        self._queue = queue
        self.backend = backend
        self.ttl = ttl

    # -- states ----------------------------------------------------------------------------

    async def record(self, state: JobState) -> None:
        """Store a job state, when a backend is configured."""
        if self.backend is not None:
            await self.backend.set_state(replace(state, updated_at=time.time()), ttl=self.ttl)

    async def record_many(self, states: Sequence[JobState]) -> None:
        """Store job states in one round trip, when a backend is configured."""
        if self.backend is not None:
            now = time.time()
            stamped = [replace(state, updated_at=now) for state in states]
            await self.backend.set_states(stamped, ttl=self.ttl)

    def require_backend(self, what: str) -> ResultBackend:
        """The backend, or a clear error saying `what` needs one."""
        if self.backend is None:
            raise ConfigurationError(
                f"{what} needs a result backend: pass results=RedisResultBackend(...) to TaskQueue"
            )
        return self.backend

    # -- starting nodes --------------------------------------------------------------------

    async def start(
        self,
        node: Node,
        *,
        root: str,
        then: Sequence[Continuation] = (),
        fail: Sequence[str] = (),
        on_error: Sequence[Node] = (),
        result: JSONValue = None,
        has_result: bool = False,
    ) -> list[PlannedJob]:
        """Publish (confirmed) the jobs that start `node`; return them.

        Raises:
            EncodeError: an argument is not JSON; nothing was published.
            PublishError, ConnectionLost: as for `enqueue` (some jobs may have been published:
                the caller is redelivered and publishes the same ids again).
        """
        jobs = plan(
            node,
            root=root,
            then=then,
            fail=fail,
            on_error=on_error,
            result=result,
            has_result=has_result,
        )
        producer = self._queue.producer
        now_ms = time.time_ns() // 1_000_000
        messages = [producer.job_message(self._envelope(job, now_ms)) for job in jobs]
        for queue in sorted({job.queue for job in jobs}):
            await self._queue.declare_queue(queue)
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
        await self.record_many(states)
        return jobs

    @staticmethod
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

    # -- after a step ----------------------------------------------------------------------

    async def succeeded(self, links: WorkflowLinks, result: JSONValue) -> None:
        """Start the side branches and what follows a step that returned `result`."""
        for branch in links.links:
            await self.start(branch, root=links.root, result=result, has_result=True)
        pending = links.next
        while pending:
            head, pending = pending[0], pending[1:]
            if isinstance(head, Join):
                backend = self.require_backend("a group inside a workflow")
                values = await backend.join_barrier(
                    head.barrier, head.index, head.size, result, ttl=self.ttl
                )
                if values is None:
                    return  # other members are still running; the last one goes on
                result = list(values)
                continue
            await self.start(
                head.node,
                root=links.root,
                then=pending,
                fail=links.fail,
                on_error=links.on_error,
                result=result,
                has_result=True,
            )
            return

    async def failed(self, links: WorkflowLinks, job_id: str, error: RemoteError) -> None:
        """A step failed for good: fail the handles that wait on it; run error callbacks once.

        Each error callback is claimed in the backend by the first step that fails (and by
        that step's redeliveries, which publish it again with the same id): a group whose
        members all fail runs its error callback once, with the first failure.
        """
        for target in links.fail:
            if target != job_id:
                await self.record(
                    JobState(target, JobStatus.FAILED, error=error, extra={"failed_job": job_id})
                )
        if not links.on_error:
            return
        backend = self.require_backend("an error callback")
        payload: JSONValue = {
            "job_id": job_id,
            "type": error.type,
            "message": error.message,
            "traceback": error.traceback,
        }
        for node in links.on_error:
            once = f"{links.root}:error:{first_id(node)}"
            if await backend.claim(once, job_id, ttl=self.ttl):
                await self.start(node, root=links.root, result=payload, has_result=True)
