"""One suite for every result backend: the in-memory one and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue._results import JobState, JobStatus, MemoryResultBackend, RemoteError, ResultBackend
from aqueue._results._redis import RedisResultBackend


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend(
    backend_kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[ResultBackend]:
    if backend_kind == "memory":
        yield MemoryResultBackend()
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"aqtest-{uuid.uuid4().hex[:8]}"
    redis_backend = RedisResultBackend(url, prefix=prefix)
    async with redis_backend:
        yield redis_backend
        keys = [key async for key in redis_backend.client.scan_iter(f"{prefix}:*")]
        if keys:
            await redis_backend.client.delete(*keys)


async def test_state_roundtrip(backend: ResultBackend) -> None:
    """A stored state reads back equal, error and progress included."""
    state = JobState(
        "j1",
        JobStatus.FAILED,
        task="app.t",
        attempt=3,
        error=RemoteError("ValueError", "bad", "Traceback ..."),
        progress={"done": 3},
        updated_at=12.5,
    )
    await backend.set_state(state, ttl=60)
    assert await backend.get_state("j1") == state
    assert await backend.get_state("unknown") is None


async def test_final_state_is_never_replaced_by_a_running_one(backend: ResultBackend) -> None:
    """A late 'running' from a redelivered copy cannot hide a result."""
    await backend.set_state(JobState("j", JobStatus.SUCCEEDED, result=[1, "a"]), ttl=60)
    await backend.set_state(JobState("j", JobStatus.RUNNING), ttl=60)
    state = await backend.get_state("j")
    assert state is not None
    assert (state.status, state.result) == (JobStatus.SUCCEEDED, [1, "a"])


async def test_wait_final_wakes_on_the_result(backend: ResultBackend) -> None:
    """A waiter is woken by the final state, not by progress or a running state."""
    got: list[JobState | None] = []

    async def waiter() -> None:
        got.append(await backend.wait_final("w", timeout=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()  # the waiter is waiting before the result lands
        await backend.set_state(JobState("w", JobStatus.RUNNING, progress=1), ttl=60)
        await backend.set_state(JobState("w", JobStatus.SUCCEEDED, result=42), ttl=60)
    assert got[0] is not None
    assert got[0].result == 42


async def test_wait_final_returns_at_once_when_already_final(backend: ResultBackend) -> None:
    """A result stored before the wait starts is returned without waiting."""
    await backend.set_state(JobState("done", JobStatus.DEAD), ttl=60)
    with anyio.fail_after(2):
        state = await backend.wait_final("done", timeout=30)
    assert state is not None
    assert state.status is JobStatus.DEAD


async def test_wait_final_times_out(backend: ResultBackend) -> None:
    """Without a final state the wait ends with None at its timeout."""
    with anyio.fail_after(5):
        assert await backend.wait_final("never", timeout=0.2) is None


async def test_barrier_completes_once_with_first_values_in_order(backend: ResultBackend) -> None:
    """Members join in any order; first value per index wins; completion gives all in order."""
    assert await backend.join_barrier("b", 2, 3, "c", ttl=60) is None
    assert await backend.join_barrier("b", 0, 3, "a", ttl=60) is None
    assert await backend.join_barrier("b", 0, 3, "changed", ttl=60) is None
    assert await backend.join_barrier("b", 1, 3, {"x": 1}, ttl=60) == ["a", {"x": 1}, "c"]
    # a redelivered member completing it again sees the same data
    assert await backend.join_barrier("b", 1, 3, "other", ttl=60) == ["a", {"x": 1}, "c"]


async def test_barrier_failure_is_marked_once(backend: ResultBackend) -> None:
    """Only the first failure of a barrier runs its error path."""
    assert await backend.mark_barrier_failed("f", ttl=60) is True
    assert await backend.mark_barrier_failed("f", ttl=60) is False
