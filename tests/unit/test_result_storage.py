"""Results users opt out of: store_result=False writes nothing; result_ttl per task."""

from __future__ import annotations

import pytest

from aqueue import JobState, MemoryResultBackend, TaskQueue
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker
from tests.helpers.workers import wait_until

pytestmark = pytest.mark.anyio


class TtlRecorder(MemoryResultBackend):
    """A memory backend that remembers the ttl of every state written, by job id."""

    def __init__(self) -> None:
        super().__init__()
        self.ttls: dict[str, list[float]] = {}
        self.reads: list[str] = []

    async def get_state(self, job_id: str) -> JobState | None:
        self.reads.append(job_id)
        return await super().get_state(job_id)

    async def set_state(self, state: JobState, *, ttl: float) -> None:
        self.ttls.setdefault(state.job_id, []).append(ttl)
        await super().set_state(state, ttl=ttl)


async def test_store_result_false_and_result_ttl_per_task() -> None:
    """A fire-and-forget task writes (and reads) no state at all, even with a backend; a task's
    result_ttl is the ttl of every state of its jobs; others keep the queue's."""
    backend = TtlRecorder()
    queue = TaskQueue("memory://", telemetry=False, results=backend, result_ttl=600)

    @queue.task(store_result=False)
    async def fire_and_forget() -> None: ...

    @queue.task(result_ttl=30)
    async def short_lived() -> int:
        return 1

    @queue.task()
    async def kept() -> int:
        return 2

    async with queue, running_worker(queue) as worker:
        ignored = await queue.enqueue(fire_and_forget)
        short = await queue.enqueue(short_lived)
        normal = await queue.enqueue(kept)
        await wait_until(worker, lambda s: s.succeeded == 3)
        assert await short.result(timeout=5) == 1
    assert ignored.job_id not in backend.ttls
    assert ignored.job_id not in backend.reads  # not even the check for a cancellation
    assert set(backend.ttls[short.job_id]) == {30}
    assert set(backend.ttls[normal.job_id]) == {600}
    assert len(backend.ttls[short.job_id]) == 3  # queued, running, succeeded


def test_bad_result_ttl_fails_at_decoration() -> None:
    """result_ttl is a positive number of seconds."""
    queue = TaskQueue("memory://", telemetry=False)
    with pytest.raises(ConfigurationError, match="result_ttl must be a positive number"):
        queue.task(result_ttl=0)
