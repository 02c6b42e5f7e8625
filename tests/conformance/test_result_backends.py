"""One suite for every result backend: the in-memory one and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue._results import (
    JobState,
    JobStatus,
    Lease,
    MemoryResultBackend,
    RemoteError,
    ResultBackend,
    redis_backend,
)
from aqueue._results.redis_backend import RedisResultBackend
from tests.helpers.polling import wait_for


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
    # a redelivered completing member completes it again, with the same data
    assert await backend.join_barrier("b", 1, 3, "other", ttl=60) == ["a", {"x": 1}, "c"]


async def test_only_the_completing_member_carries_on(backend: ResultBackend) -> None:
    """Regression: a redelivered member that did not complete the barrier, joining after it
    completed, gets None, so it cannot publish the chord's callback a second time.
    """
    assert await backend.join_barrier("c", 0, 2, "a", ttl=60) is None
    assert await backend.join_barrier("c", 1, 2, "b", ttl=60) == ["a", "b"]
    assert await backend.join_barrier("c", 0, 2, "a", ttl=60) is None
    assert await backend.join_barrier("c", 1, 2, "b", ttl=60) == ["a", "b"]


async def test_a_barrier_of_ten_thousand(backend: ResultBackend) -> None:
    """Regression: Redis's Lua unpack() refuses ~8,000 values; a chord of 10,000 completes."""
    size = 10_000
    for index in range(1, size):
        assert await backend.join_barrier("big", index, size, index * 2, ttl=60) is None
    assert await backend.join_barrier("big", 0, size, 0, ttl=60) == [i * 2 for i in range(size)]


async def test_claim_is_once_per_key_but_again_for_its_owner(backend: ResultBackend) -> None:
    """Only the first owner's error path runs; its redelivery (same owner) may run it again."""
    assert await backend.claim("f", "job-1", ttl=60) is True
    assert await backend.claim("f", "job-2", ttl=60) is False
    assert await backend.claim("f", "job-1", ttl=60) is True
    assert await backend.claim("g", "job-2", ttl=60) is True


async def test_an_initial_state_never_replaces_another(backend: ResultBackend) -> None:
    """Regression: "queued", written after the publish, cannot hide a worker's "running"."""
    await backend.set_state(JobState("q", JobStatus.RUNNING, progress=5), ttl=60)
    await backend.set_state(JobState("q", JobStatus.QUEUED), ttl=60)
    state = await backend.get_state("q")
    assert state is not None
    assert (state.status, state.progress) == (JobStatus.RUNNING, 5)
    await backend.set_state(JobState("fresh", JobStatus.SCHEDULED), ttl=60)
    assert await backend.get_state("fresh") == JobState("fresh", JobStatus.SCHEDULED)
    # a retry's "retrying" and the next attempt's "running" do replace what was before
    await backend.set_state(JobState("q", JobStatus.RETRYING, attempt=1), ttl=60)
    await backend.set_state(JobState("q", JobStatus.RUNNING, attempt=2), ttl=60)
    state = await backend.get_state("q")
    assert state is not None
    assert (state.status, state.attempt) == (JobStatus.RUNNING, 2)


async def test_set_states_follows_the_same_rules(backend: ResultBackend) -> None:
    """The batched write stores each state as set_state would."""
    await backend.set_state(JobState("s1", JobStatus.SUCCEEDED, result=1), ttl=60)
    await backend.set_states(
        [JobState("s1", JobStatus.QUEUED), JobState("s2", JobStatus.QUEUED, task="t")], ttl=60
    )
    first, second = await backend.get_state("s1"), await backend.get_state("s2")
    assert first is not None
    assert second is not None
    assert (first.status, second.status, second.task) == (
        JobStatus.SUCCEEDED,
        JobStatus.QUEUED,
        "t",
    )
    await backend.set_states([], ttl=60)


async def test_pending_gives_way_to_queued_and_nothing_else_to_pending(
    backend: ResultBackend,
) -> None:
    """A workflow handle is pending until its step is published (queued), and pending never
    hides what came after it.
    """
    await backend.set_state(JobState("p", JobStatus.PENDING), ttl=60)
    await backend.set_state(JobState("p", JobStatus.QUEUED, task="t"), ttl=60)
    await backend.set_state(JobState("p", JobStatus.PENDING), ttl=60)  # a redelivered planner
    state = await backend.get_state("p")
    assert state is not None
    assert (state.status, state.task) == (JobStatus.QUEUED, "t")
    await backend.set_state(JobState("r", JobStatus.PENDING), ttl=60)
    await backend.set_state(JobState("r", JobStatus.FAILED), ttl=60)
    await backend.set_state(JobState("r", JobStatus.PENDING), ttl=60)
    state = await backend.get_state("r")
    assert state is not None
    assert state.status is JobStatus.FAILED


async def test_wait_final_sees_a_result_whose_notification_was_lost(
    backend: ResultBackend, backend_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: Redis pub/sub delivers at most once; a waiter whose notification is lost
    (a reconnect) read the state only after a notification, so it waited until its timeout.
    It reads the state again after a few seconds of silence.
    """
    if not isinstance(backend, RedisResultBackend):
        pytest.skip(f"pub/sub is Redis's ({backend_kind} wakes its waiters in-process)")
    monkeypatch.setattr(redis_backend, "RECHECK", 0.1)
    state = JobState("lost", JobStatus.SUCCEEDED, result="late")

    async def write_without_notifying() -> None:
        await anyio.sleep(0.3)
        await backend.client.set(backend._key("job", "lost"), state.encode())

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_without_notifying)
        with anyio.fail_after(5):
            found = await backend.wait_final("lost", timeout=30)
    assert found == state


async def test_lease_is_held_renewed_ended_and_expires(backend: ResultBackend) -> None:
    """A lease is one owner's until it ends or expires; an ended lease is never taken again."""
    assert await backend.lease("job") is None
    assert await backend.hold_lease("job", "run-1", ttl=30)
    assert await backend.hold_lease("job", "run-1", ttl=30)  # renewed by its owner
    assert not await backend.hold_lease("job", "run-2", ttl=30)
    assert await backend.lease("job") == Lease("run-1", ended=False)

    await backend.end_lease("job", "run-2", ttl=30)  # not its lease: nothing changes
    assert await backend.lease("job") == Lease("run-1", ended=False)
    await backend.end_lease("job", "run-1", ttl=30)
    assert await backend.lease("job") == Lease("run-1", ended=True)
    assert not await backend.hold_lease("job", "run-1", ttl=30)
    assert not await backend.hold_lease("job", "run-2", ttl=30)

    assert await backend.hold_lease("short", "run-1", ttl=0.05)

    async def expired() -> bool:  # its owner died: nobody renews it
        return await backend.lease("short") is None

    await wait_for(expired, timeout=5, what="the lease to expire")
    assert await backend.hold_lease("short", "run-2", ttl=30)
    assert await backend.lease("short") == Lease("run-2", ended=False)
