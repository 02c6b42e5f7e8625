"""Issue 9 on the shared RabbitMQ: a slow queue saturated with 30 s jobs does not raise the wait
of a fast queue in the same worker (p95 under 100 ms), for async tasks and for sync tasks.

The slow queue (``slow``: concurrency 2, so 2 threads) gets 10 jobs of 30 s: two run, taking
both its runners and, for sync tasks, both its threads; the other eight wait in the broker
(prefetch 2). The worker's ``threads=2`` is the point of the sync case: with one pool for every
queue (as before each queue had its own), the slow jobs held all of it and the fast queue's
sync jobs waited for them. Each test stops its worker with no grace as soon as the fast jobs
are measured, so the 30 s jobs are cancelled (async) or abandoned and released (sync).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import anyio
import pytest

from aqueue import QueueLimits, Task, TaskQueue, WorkerSettings, current_job
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.workers import delete_topology

pytestmark = [pytest.mark.integration, pytest.mark.serial]

logger = logging.getLogger(__name__)

SLOW_JOBS = 10
SLOW_SECONDS = 30.0
FAST_JOBS = 40
P95_LIMIT = 0.1
WAIT = 10.0

Kind = Literal["async", "sync"]


@pytest.fixture
async def queue(amqp_url: str, prefix: str) -> AsyncIterator[TaskQueue]:
    """This test's TaskQueue (closed); its topology is deleted afterwards."""
    yield TaskQueue(amqp_url, prefix=prefix, name=prefix)
    await delete_topology(amqp_url, prefix, ["slow", "fast"])


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set when the test ends: the abandoned slow sync functions return, so no thread outlives
    the test (interpreter exit would wait 30 s for each)."""
    event = threading.Event()
    yield event
    event.set()


def _tasks(
    queue: TaskQueue, kind: Kind, release: threading.Event
) -> tuple[Task[[], None], Task[[], None], list[float], list[str]]:
    """Register the slow and fast tasks; return them, the fast waits and the slow starts.

    A fast job's wait is taken in the task's body: for a sync task that is once it has a
    thread, which is what the shared pool used to delay (``current_job().started_at`` is
    stamped before the job asks for a thread, so it would not show it).
    """
    waits: list[float] = []
    slow_started: list[str] = []

    def waited() -> None:
        waits.append(time.time() - current_job().due_at)

    if kind == "async":

        @queue.task(name="slow", queue="slow")
        async def slow() -> None:
            slow_started.append(current_job().job_id)
            await anyio.sleep(SLOW_SECONDS)

        @queue.task(name="fast", queue="fast")
        async def fast() -> None:
            waited()

        return slow, fast, waits, slow_started

    @queue.task(name="slow", queue="slow")
    def slow_sync() -> None:
        slow_started.append(current_job().job_id)
        release.wait(SLOW_SECONDS)

    @queue.task(name="fast", queue="fast")
    def fast_sync() -> None:
        waited()

    return slow_sync, fast_sync, waits, slow_started


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_saturated_slow_queue_does_not_raise_the_fast_queues_wait(
    queue: TaskQueue, kind: Kind, release: threading.Event
) -> None:
    """With the slow queue's runners (and threads) all taken by 30 s jobs, jobs of the fast queue
    in the same worker still start within 100 ms at the 95th percentile."""
    slow, fast, waits, slow_started = _tasks(queue, kind, release)
    settings = WorkerSettings(
        queues=(QueueLimits("slow", concurrency=2), "fast"), concurrency=8, threads=2, grace=0
    )
    assert settings.limits("slow").threads == settings.limits("fast").threads == 2
    async with queue, running_worker(queue, settings) as worker:
        await queue.enqueue_many(slow, [slow.call() for _ in range(SLOW_JOBS)])
        await wait_for(
            lambda: len(slow_started) == 2,
            timeout=WAIT,
            what="the slow queue's two runners to be busy",
        )
        for _ in range(FAST_JOBS):
            # one at a time, as traffic arrives: each wait is the worker's, not a burst's
            # queueing behind itself
            await queue.enqueue(fast)
        await wait_for(
            lambda: len(waits) == FAST_JOBS,
            timeout=WAIT,
            what=f"{FAST_JOBS} fast jobs to run",
            details=lambda: f"{len(waits)} ran",
        )
        # still saturated all along: no slow job finished, none more started
        assert len(slow_started) == 2
        assert worker.statistics().in_flight == 2
        worker.stop(now=True)  # the 30 s jobs are not waited for
    p95 = _p95(waits)
    logger.info(
        "%s: fast queue wait p50 %.1f ms, p95 %.1f ms, max %.1f ms over %d jobs",
        kind,
        sorted(waits)[len(waits) // 2] * 1000,
        p95 * 1000,
        max(waits) * 1000,
        len(waits),
    )
    assert p95 < P95_LIMIT, f"p95 wait {p95 * 1000:.1f} ms (waits: {sorted(waits)})"
