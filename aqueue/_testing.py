"""`running_worker`: a worker for an ``async with`` block (re-exported by `aqueue.testing`).

The in-memory broker it is usually paired with lives in `aqueue._transport.memory_broker`;
what it models, and its test hooks, are on the testing page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from aqueue._client.queue import TaskQueue
from aqueue._core.config import WorkerSettings
from aqueue._worker.worker import Worker

__all__ = ["running_worker"]


@asynccontextmanager
async def running_worker(
    queue: TaskQueue, settings: WorkerSettings | None = None, *, start_timeout: float = 10.0
) -> AsyncIterator[Worker]:
    """Run a `Worker` for `queue` in the background for the ``async with`` block.

    The worker consumes before the block starts and is stopped gracefully when it ends (unless
    the block stopped it already; the block's end then waits for that stop); wait
    for what you expect with ``await worker.wait_until(lambda stats: ...)`` inside the block::

        async with queue, running_worker(queue) as worker:
            await queue.enqueue(send_welcome, 42)
            with anyio.fail_after(5):
                await worker.wait_until(lambda stats: stats.succeeded == 1)

    Raises:
        TimeoutError: the worker did not start consuming within `start_timeout` seconds.
    """
    worker = Worker(queue, settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(start_timeout):
            await worker.wait_started()
        try:
            yield worker
        finally:
            if not worker.stopping:  # a second stop would cancel its running jobs
                worker.stop()
