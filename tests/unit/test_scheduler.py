"""The scheduler on the in-memory broker: one leader, ticks enqueued once, hand-over."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import anyio
import pytest

from aqueue import TaskQueue
from aqueue._core.schedules import Mark
from aqueue._results import MemoryResultBackend
from aqueue._scheduler.scheduler import Scheduler
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for

pytestmark = pytest.mark.anyio


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    await wait_for(condition, timeout=timeout, what="the condition")


def _app(url: str, ran: list[str]) -> TaskQueue:
    queue = TaskQueue(url, telemetry=False, results=MemoryResultBackend())

    @queue.periodic(every=0.2, name="tick")
    @queue.task()
    async def tick() -> None:
        from aqueue import current_job

        ran.append(current_job().job_id)

    return queue


async def test_one_of_two_schedulers_leads_and_each_tick_runs_once() -> None:
    """Two schedulers on one broker: one leads, its ticks have deterministic ids, each runs once;
    when the leader stops, the other takes over."""
    url = f"memory://{uuid.uuid4().hex}"
    ran: list[str] = []
    queue = _app(url, ran)
    async with queue.session() as session, running_worker(queue):
        first, second = Scheduler(session, queue.schedules), Scheduler(session, queue.schedules)
        async with anyio.create_task_group() as tg:
            scope_first = anyio.CancelScope()

            async def run_first() -> None:
                with scope_first:
                    await first.run()

            tg.start_soon(run_first)
            await _until(lambda: first.leading)
            tg.start_soon(second.run)
            await _until(lambda: len(ran) >= 3)
            assert first.leading
            assert not second.leading
            scope_first.cancel()
            await _until(lambda: second.leading)
            count = len(ran)
            await _until(lambda: len(ran) >= count + 3)
            tg.cancel_scope.cancel()
    assert all(job_id.startswith("tick@") for job_id in ran)
    assert len(ran) == len(set(ran))
    assert not set(first.fired) & set(second.fired)  # the hand-over passes the marks


@pytest.mark.parametrize("backend", [True, False])
async def test_a_tick_published_twice_runs_once_only_with_a_result_backend(backend: bool) -> None:
    """Two leaders for a moment publish the same tick twice (same job id, two copy tokens):
    with a result backend the second copy is acked without running; without one both run
    (what the schedules page says can happen during a failover)."""
    ran: list[str] = []
    queue = TaskQueue(
        "memory://", telemetry=False, results=MemoryResultBackend() if backend else None
    )

    @queue.periodic(every=3600, name="hourly")
    @queue.task()
    async def hourly() -> None:
        from aqueue import current_job

        ran.append(current_job().job_id)

    async with queue.session() as session, running_worker(queue) as worker:
        one, two = Scheduler(session, queue.schedules), Scheduler(session, queue.schedules)
        tick = 1_800_000_000.0
        mark = one.marks.get("hourly")
        await one._enqueue(queue.schedules["hourly"], tick, mark or _mark())
        await two._enqueue(queue.schedules["hourly"], tick, mark or _mark())
        await wait_for(
            lambda: worker.statistics().succeeded + worker.statistics().duplicates == 2,
            timeout=5,
            what="both copies settled",
        )
    assert ran == (["hourly@2027-01-15T08:00:00Z"] * (1 if backend else 2))
    assert worker.statistics().duplicates == (1 if backend else 0)


def _mark() -> Mark:
    return Mark()


async def test_overlap_false_skips_ticks_while_the_previous_run_is_unfinished() -> None:
    """overlap=False: while the first run blocks, later ticks are skipped, not enqueued; once
    it finished, the next tick runs."""
    release = anyio.Event()
    ran: list[str] = []
    queue = TaskQueue("memory://", telemetry=False, results=MemoryResultBackend())

    @queue.periodic(every=0.2, name="blocking", overlap=False)
    @queue.task()
    async def blocking() -> None:
        from aqueue import current_job

        ran.append(current_job().job_id)
        if len(ran) == 1:
            await release.wait()

    async with queue.session() as session, running_worker(queue):
        scheduler = Scheduler(session, queue.schedules)
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            await _until(lambda: len(scheduler.skipped) >= 2)
            assert len(ran) == 1
            release.set()
            await _until(lambda: len(ran) >= 2)
            tg.cancel_scope.cancel()
    assert not set(scheduler.skipped) & set(ran)
