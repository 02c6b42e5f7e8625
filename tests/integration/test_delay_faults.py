"""Issue 3 when the broker restarts: delayed jobs wait in the broker, so they survive it.

The node is a private one (``rabbit_node``), never the shared broker.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import anyio
import anyio.to_thread
import pytest

from aqueue import TaskQueue, WorkerSettings, current_job
from aqueue._core.delays import DELAY_LEVELS
from aqueue.testing import running_worker
from tests.helpers.rabbit_node import RabbitNode
from tests.helpers.workers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(240)]


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_delayed_jobs_survive_a_broker_restart(rabbit_node: RabbitNode, how: str) -> None:
    """500 jobs delayed 8-15 s; the node is stopped (or SIGKILLed) and started again while they
    wait in the delay levels; a worker started afterwards runs every one, none early.
    """
    total = 500
    queue = TaskQueue(rabbit_node.url, prefix="delays", name=f"restart-{how}")
    started: dict[str, list[tuple[float, float]]] = defaultdict(list)

    @queue.task(name="mark")
    async def mark(index: int) -> None:
        started[current_job().job_id].append((time.time(), current_job().due_at))

    rng = random.Random()
    enqueued: list[str] = []
    limiter = anyio.CapacityLimiter(20)

    async def send(index: int) -> None:
        async with limiter:
            job = await queue.enqueue_in(rng.uniform(8, 15), mark, index)
        enqueued.append(job.job_id)

    async with queue.session() as session:
        names = session.names
        began = time.monotonic()
        async with anyio.create_task_group() as tg:
            for index in range(total):
                tg.start_soon(send, index)
        enqueue_seconds = time.monotonic() - began
        assert await session.transport.message_count(names.work_queue("default")) == 0
        waiting = sum(
            [
                await session.transport.message_count(names.delay_queue(lvl))
                for lvl in range(DELAY_LEVELS)
            ]
        )
        assert waiting > 0
    assert len(set(enqueued)) == total

    restart_began = time.monotonic()
    await anyio.to_thread.run_sync(rabbit_node.kill if how == "kill" else rabbit_node.stop)
    await anyio.to_thread.run_sync(rabbit_node.start)
    down = time.monotonic() - restart_began

    settings = WorkerSettings(concurrency=100)
    async with queue, running_worker(queue, settings, start_timeout=30) as worker:
        await wait_until(worker, lambda s: s.succeeded >= total, timeout=60)
        await anyio.sleep(0.5)  # room for a second run of any job

    assert set(started) == set(enqueued)
    early = [job_id for job_id, runs in started.items() if any(at < due for at, due in runs)]
    assert early == []
    twice = sum(len(runs) > 1 for runs in started.values())
    lateness = sorted(at - due for runs in started.values() for at, due in runs)
    print(
        f"\n{total} delayed jobs enqueued in {enqueue_seconds:.1f} s; {waiting} ready in the "
        f"levels; node {how} + start took {down:.1f} s; all ran, {twice} twice; lateness "
        f"p50 {lateness[len(lateness) // 2]:.2f} s, max {lateness[-1]:.2f} s"
    )
