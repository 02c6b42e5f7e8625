"""Issue 9 on the shared RabbitMQ: the wait signal (from due, never inflated by a requested
delay), the oldest-wait estimate, and the in-process autoscaler.

Speed figures are printed (run with ``-s``) for the scaling page; the assertions use wide
margins for a loaded 2-core machine, and every wait is on a condition with a timeout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue import Retry, Task, TaskQueue, Worker, WorkerSettings, current_job
from aqueue._core.config import Autoscale, parse_queues
from aqueue._observability.metrics import Counter, Gauge, Histogram, JobMetrics
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.workers import delete_topology

pytestmark = [pytest.mark.integration, pytest.mark.serial, pytest.mark.timeout(120)]


class WaitSink:
    """A `MetricSink` that keeps every queue wait it is given, by task."""

    def __init__(self) -> None:
        self.waits: dict[str, list[float]] = {}

    def count(self, counter: Counter, task: str, queue: str) -> None:
        pass

    def observe(self, histogram: Histogram, seconds: float, task: str, queue: str) -> None:
        if histogram == "queue_wait":
            self.waits.setdefault(task, []).append(seconds)

    def in_flight(self, delta: int, task: str, queue: str) -> None:
        pass

    def gauge(self, gauge: Gauge, value: float, queue: str) -> None:
        pass


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    """Delete this test's queues, delay levels and exchanges after it."""
    yield
    await delete_topology(amqp_url, prefix, ["default"])


async def peak_concurrency(worker: Worker, peak: list[int]) -> None:
    """Keep the highest concurrency the worker's queue reaches in ``peak[0]`` (observation)."""
    while True:
        stats = worker.queue_stats().get("default")
        if stats is not None:
            peak[0] = max(peak[0], stats.concurrency)
        await anyio.sleep(0.05)


async def drain_seconds(
    queue: TaskQueue, settings: WorkerSettings, count: int, task: Task[[], None]
) -> tuple[float, Worker, int]:
    """Enqueue `count` jobs, then time a worker with `settings` draining them."""
    await queue.enqueue_many(task, [() for _ in range(count)])
    peak = [0]
    async with running_worker(queue, settings) as worker, anyio.create_task_group() as tg:
        tg.start_soon(peak_concurrency, worker, peak)
        started = time.perf_counter()
        with anyio.fail_after(90):
            await worker.wait_until(lambda s: s.succeeded == count)
        seconds = time.perf_counter() - started
        tg.cancel_scope.cancel()
    return seconds, worker, peak[0]


@pytest.mark.usefixtures("cleanup")
async def test_delayed_and_retried_jobs_wait_from_when_they_were_due(
    amqp_url: str, prefix: str
) -> None:
    """A job delayed 5 s, and a retry delayed 2 s, both started on time, show waits under
    1 s in aqueue_job_queue_wait_seconds: the requested delay is never counted as a wait."""
    sink = WaitSink()
    queue = TaskQueue(amqp_url, prefix=prefix, telemetry=False, instrumentation=[JobMetrics(sink)])

    @queue.task
    async def later() -> None:
        pass

    @queue.task(retries=2)
    async def flaky() -> None:
        if current_job().attempt == 1:
            raise Retry(delay=2)

    async with queue, running_worker(queue, WorkerSettings(concurrency=4)) as worker:
        enqueued = time.time()
        await queue.enqueue_in(5, later)
        await queue.enqueue(flaky)
        with anyio.fail_after(30):
            await worker.wait_until(lambda s: s.succeeded == 2)
        took = time.time() - enqueued
    assert took >= 5  # the delay was served, not skipped
    print(f"\nwaits: delayed {sink.waits[later.name]}, retried {sink.waits[flaky.name]}")
    assert len(sink.waits[later.name]) == 1
    assert sink.waits[later.name][0] < 1
    assert len(sink.waits[flaky.name]) == 2  # the first attempt and its retry
    assert max(sink.waits[flaky.name]) < 1


@pytest.mark.usefixtures("cleanup")
async def test_oldest_wait_rises_while_a_backlog_is_not_served_then_falls_to_zero(
    amqp_url: str, prefix: str
) -> None:
    """With every runner busy on blocked jobs and a backlog in the queue, the oldest-wait
    estimate rises with the clock; once the backlog drains it is 0 and ready reads 0."""
    queue = TaskQueue(amqp_url, prefix=prefix, telemetry=False)
    release = anyio.Event()

    @queue.task
    async def blocked() -> None:
        await release.wait()

    settings = WorkerSettings(concurrency=2, ready_interval=0.2)
    async with queue, running_worker(queue, settings) as worker:
        await queue.enqueue_many(blocked, [() for _ in range(20)])

        def stats() -> tuple[int | None, float]:
            snapshot = worker.queue_stats()["default"]
            return snapshot.ready, snapshot.oldest_wait

        await wait_for(lambda: (stats()[0] or 0) > 0, timeout=10, what="ready read")
        await wait_for(lambda: stats()[1] > 0.3, timeout=10, what="an oldest wait")
        first = stats()[1]
        await wait_for(lambda: stats()[1] > first + 0.5, timeout=10, what="the wait rising")
        release.set()
        with anyio.fail_after(30):
            await worker.wait_until(lambda s: s.succeeded == 20)
        await wait_for(lambda: stats() == (0, 0.0), timeout=10, what="drained: ready 0, wait 0")


@pytest.mark.usefixtures("cleanup")
async def test_oldest_wait_rises_while_the_worker_is_paused_then_falls_to_zero(
    amqp_url: str, prefix: str
) -> None:
    """A paused worker (its consumer cancelled) with a backlog in the queue: the oldest-wait
    estimate rises with the clock; resumed, it drains and the estimate is 0 again."""
    queue = TaskQueue(amqp_url, prefix=prefix, telemetry=False)

    @queue.task
    async def quick() -> None: ...

    settings = WorkerSettings(concurrency=2, ready_interval=0.2)
    async with queue, running_worker(queue, settings) as worker:
        await queue.enqueue(quick)
        with anyio.fail_after(10):
            await worker.wait_until(lambda s: s.succeeded == 1)
        await worker.pause()
        await queue.enqueue_many(quick, [() for _ in range(20)])

        def stats() -> tuple[int | None, float]:
            snapshot = worker.queue_stats()["default"]
            return snapshot.ready, snapshot.oldest_wait

        await wait_for(lambda: stats()[0] == 20, timeout=10, what="the backlog read as ready")
        await wait_for(lambda: stats()[1] > 0.3, timeout=10, what="an oldest wait")
        first = stats()[1]
        await wait_for(lambda: stats()[1] > first + 0.5, timeout=10, what="the wait rising")
        assert worker.statistics().succeeded == 1  # paused: nothing was served meanwhile
        await worker.resume()
        with anyio.fail_after(30):
            await worker.wait_until(lambda s: s.succeeded == 21)
        await wait_for(lambda: stats() == (0, 0.0), timeout=10, what="drained: ready 0, wait 0")


@pytest.mark.usefixtures("cleanup")
async def test_autoscale_drains_an_io_backlog_much_faster_then_returns_to_the_minimum(
    amqp_url: str, prefix: str
) -> None:
    """--autoscale 2:100 --target-wait 1 drains 3,000 jobs of 100 ms at least 5x the rate of
    a fixed concurrency of 2 (measured on 200 jobs: 3,000 would take 150 s), and its
    concurrency is back at 2 once idle."""
    queue = TaskQueue(amqp_url, prefix=prefix, telemetry=False)

    @queue.task
    async def io() -> None:
        await anyio.sleep(0.1)

    async with queue:
        fixed_s, _, _ = await drain_seconds(queue, WorkerSettings(concurrency=2), 200, io)
        scaled = WorkerSettings(autoscale=Autoscale(2, 100, target_wait=1.0), ready_interval=0.5)
        await queue.enqueue_many(io, [() for _ in range(3000)])
        peak = [0]
        async with running_worker(queue, scaled) as worker, anyio.create_task_group() as tg:
            tg.start_soon(peak_concurrency, worker, peak)
            started = time.perf_counter()
            with anyio.fail_after(60):
                await worker.wait_until(lambda s: s.succeeded == 3000)
            scaled_s = time.perf_counter() - started
            back = await wait_for(
                lambda: worker.queue_stats()["default"].concurrency == 2,
                timeout=20,
                what="concurrency back at the minimum",
            )
            tg.cancel_scope.cancel()
    fixed_rate, scaled_rate = 200 / fixed_s, 3000 / scaled_s
    print(
        f"\nfixed 2: {fixed_rate:.1f} jobs/s; autoscale 2:100: {scaled_rate:.1f} jobs/s "
        f"({scaled_rate / fixed_rate:.1f}x), peak concurrency {peak[0]}, back at 2 {back:.1f}s "
        "after the drain"
    )
    assert scaled_rate >= 5 * fixed_rate


@pytest.mark.usefixtures("cleanup")
async def test_cpu_bound_backlog_does_not_drive_concurrency_to_the_maximum(
    amqp_url: str, prefix: str
) -> None:
    """Jobs that compute 20 ms without awaiting hold the event loop: the autoscaler sees the
    loop lag (or no throughput gain) and stops well below the maximum of 100."""
    queue = TaskQueue(amqp_url, prefix=prefix, telemetry=False)

    @queue.task
    async def spin() -> None:
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    async with queue:
        settings = WorkerSettings(autoscale=Autoscale(2, 100, target_wait=1.0), ready_interval=0.5)
        seconds, _, peak = await drain_seconds(queue, settings, 400, spin)
    print(f"\nCPU-bound: 400 jobs in {seconds:.1f}s, peak concurrency {peak}")
    assert peak < 100


async def test_autoscale_bounds_apply_per_queue(amqp_url: str, prefix: str) -> None:
    """One worker, three queues with the same backlog: a bare queue grows past 4 within the
    worker's bounds (2:50), a queue with its own ``max=4`` never passes 4, and a queue with a
    fixed concurrency of 3 stays at 3."""
    names = ["wide", "narrow", "fixed"]
    queue = TaskQueue(amqp_url, prefix=prefix, telemetry=False)
    tasks = {}
    for name in names:

        async def nap() -> None:
            await anyio.sleep(0.05)

        tasks[name] = queue.task(name=f"nap-{name}", queue=name)(nap)
    settings = WorkerSettings(
        queues=parse_queues("wide,narrow:max=4,fixed:3"),
        autoscale=Autoscale(2, 50, target_wait=0.3),
    )
    peaks = dict.fromkeys(names, 0)
    lows = dict.fromkeys(names, 10**6)

    async def watch(worker: Worker) -> None:
        while True:
            for name, stats in worker.queue_stats().items():
                peaks[name] = max(peaks[name], stats.concurrency)
                lows[name] = min(lows[name], stats.concurrency)
            await anyio.sleep(0.05)

    try:
        async with queue:
            for name in names:
                await queue.enqueue_many(tasks[name], [() for _ in range(600)])
            async with running_worker(queue, settings) as worker, anyio.create_task_group() as tg:
                tg.start_soon(watch, worker)
                with anyio.fail_after(90):
                    await worker.wait_until(lambda s: s.succeeded == 1800)
                tg.cancel_scope.cancel()
    finally:
        await delete_topology(amqp_url, prefix, names)
    print(f"\nper-queue bounds: peaks {peaks}, lows {lows}")
    assert peaks["wide"] > 4
    assert peaks["wide"] <= 50
    assert peaks["narrow"] == 4
    assert (lows["fixed"], peaks["fixed"]) == (3, 3)
