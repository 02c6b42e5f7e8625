"""`task.call(...)`: typed arguments for `enqueue_many`, beside the untyped forms."""

from __future__ import annotations

import anyio
import pytest

from aqueue import TaskQueue
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker


async def test_typed_and_untyped_calls_run_with_their_arguments() -> None:
    """`task.call(...)`, a tuple and a mapping each enqueue one job with those arguments."""
    queue = TaskQueue("memory://", telemetry=False)
    seen: list[tuple[int, str]] = []

    @queue.task
    async def record(n: int, label: str = "-") -> None:
        seen.append((n, label))

    async with queue, running_worker(queue) as worker:
        batch = await queue.enqueue_many(
            record, [record.call(1, label="a"), (2, "b"), {"n": 3, "label": "c"}]
        )
        assert batch.ok
        with anyio.fail_after(5):
            await worker.wait_until(lambda stats: stats.succeeded == 3)
    assert sorted(seen) == [(1, "a"), (2, "b"), (3, "c")]


async def test_a_queue_opened_twice_closes_with_its_last_user() -> None:
    """A worker's session survives the application's own ``async with queue:`` closing."""
    queue = TaskQueue("memory://", telemetry=False)

    @queue.task
    async def noop() -> None:
        return None

    async with queue.session() as session:
        async with queue:
            await queue.enqueue(noop)
        await queue.enqueue(noop)  # still open: the session's block holds it
        assert await session.transport.message_count(session.names.work_queue("default")) == 2
    with pytest.raises(ConfigurationError, match="not open"):
        await queue.enqueue(noop)


async def test_two_opens_at_once_share_one_session_and_close_with_the_last_user() -> None:
    """Two ``open()`` calls racing (a worker and an app starting together) make one session,
    counted twice: the first ``aclose()`` leaves the queue open, the second closes it."""
    queue = TaskQueue("memory://", telemetry=False)

    @queue.task
    async def noop() -> None:
        return None

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.open)
        tg.start_soon(queue.open)
    await queue.aclose()
    await queue.enqueue(noop)  # still open: one user left
    await queue.aclose()
    with pytest.raises(ConfigurationError, match="not open"):
        await queue.enqueue(noop)
