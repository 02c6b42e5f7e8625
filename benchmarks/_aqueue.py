"""The same scenarios through aqueue's public API: `enqueue`, `enqueue_many`, `Worker`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from aqueue import Instrumentation, Task, TaskQueue, Worker, WorkerSettings, WorkerStatistics
from benchmarks._common import (
    PREFETCH,
    QUEUE,
    SCENARIO_TIMEOUT,
    SLEEP,
    WINDOW,
    Stopwatch,
    delete_topology,
    message_count,
    percentile,
    unique_prefix,
)

Figures = dict[str, float]
#: Seconds between two looks at the worker's counters while it drains.
POLL = 0.001


@dataclass(slots=True)
class _Bench:
    url: str
    prefix: str
    queue: TaskQueue
    noop: Task[[int], None]
    nap: Task[[int], None]
    probe: Task[[int], None]
    samples: list[float] = field(default_factory=list)


@asynccontextmanager
async def _bench(
    url: str, scenario: str, *, instrumentation: Sequence[Instrumentation] | None = None
) -> AsyncIterator[_Bench]:
    """An open `TaskQueue` on fresh queues (declared at open), deleted afterwards.

    `instrumentation` replaces the default one (OpenTelemetry through the API); ``()``: none.
    """
    prefix = unique_prefix(scenario, "aqueue")
    queue = TaskQueue(
        url,
        prefix=prefix,
        max_in_flight=WINDOW,
        name="bench-aqueue",
        telemetry=instrumentation is None,
        instrumentation=instrumentation or (),
    )
    samples: list[float] = []

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    @queue.task(queue=QUEUE, name="nap")
    async def nap(index: int) -> None:
        await anyio.sleep(SLEEP)

    @queue.task(queue=QUEUE, name="probe")
    async def probe(sent_ns: int) -> None:
        samples.append((time.perf_counter_ns() - sent_ns) / 1e6)

    try:
        async with queue:
            yield _Bench(url, prefix, queue, noop, nap, probe, samples)
    finally:
        await delete_topology(url, prefix)


def _worker(bench: _Bench) -> Worker:
    settings = WorkerSettings(queues=(QUEUE,), concurrency=PREFETCH, prefetch=PREFETCH)
    return Worker(bench.queue, settings)


def _settled(count: int) -> Callable[[WorkerStatistics], bool]:
    return lambda stats: stats.succeeded + stats.failed >= count


async def _poll_until_settled(worker: Worker, count: int) -> None:
    """Wait for `count` settled jobs by polling every millisecond.

    Not `Worker.wait_until`: a watcher costs the worker a wake-up and an event per job, which
    no production worker pays (the raw side counts acks in its handler: also nearly free).
    """
    settled = _settled(count)
    while not settled(worker.statistics()):  # noqa: ASYNC110 - polling on purpose, see above
        await anyio.sleep(POLL)


async def _check_count(bench: _Bench, expected: int) -> None:
    found = await message_count(bench.url, bench.prefix)
    if found != expected:
        print(f"  !! aqueue: {found} messages in the queue, expected {expected}")


async def _prefill(bench: _Bench, task: Task[[int], None], count: int) -> None:
    batch = await bench.queue.enqueue_many(task, [(i,) for i in range(count)])
    if batch.failures:
        print(f"  !! aqueue: {len(batch.failures)} jobs not confirmed")


async def enqueue_many(url: str, count: int) -> Figures:
    """`enqueue_many` of `count` jobs (pipelined confirms, ``max_in_flight`` in flight)."""
    async with _bench(url, "many") as bench:
        calls = [(i,) for i in range(count)]
        watch = Stopwatch()
        batch = await bench.queue.enqueue_many(bench.noop, calls)
        figures = watch.rate(count)
        if batch.failures:
            print(f"  !! aqueue: {len(batch.failures)} jobs not confirmed")
        await _check_count(bench, count)
    return figures


async def enqueue_one(url: str, count: int) -> Figures:
    """``await queue.enqueue(...)`` in a loop."""
    async with _bench(url, "one") as bench:
        watch = Stopwatch()
        for index in range(count):
            await bench.queue.enqueue(bench.noop, index)
        figures = watch.rate(count)
        await _check_count(bench, count)
    return figures


async def _drain(
    url: str,
    count: int,
    scenario: str,
    *,
    io: bool,
    instrumentation: Sequence[Instrumentation] | None = None,
) -> Figures:
    """Pre-fill `count` jobs, then time worker subscribed → last ack."""
    async with _bench(url, scenario, instrumentation=instrumentation) as bench:
        await _prefill(bench, bench.nap if io else bench.noop, count)
        worker = _worker(bench)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(SCENARIO_TIMEOUT):
                await worker.wait_started()  # connected, topology declared, consuming
                watch = Stopwatch()
                await _poll_until_settled(worker, count)
            figures = watch.rate(count)
            worker.stop()
        if worker.statistics().failed:
            print(f"  !! aqueue: {worker.statistics().failed} jobs failed")
    return figures


async def drain(url: str, count: int) -> Figures:
    """No-op jobs run by one in-process worker."""
    return await _drain(url, count, "drain", io=False)


async def io_bound(url: str, count: int) -> Figures:
    """Jobs that each ``await anyio.sleep(SLEEP)``."""
    return await _drain(url, count, "io", io=True)


async def latency(url: str, count: int) -> Figures:
    """``await queue.enqueue(probe, sent_ns)`` one at a time to an idle worker."""
    async with _bench(url, "latency") as bench:
        worker = _worker(bench)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(SCENARIO_TIMEOUT):
                await worker.wait_started()
                for index in range(count):
                    await bench.queue.enqueue(bench.probe, time.perf_counter_ns())
                    # the worker is idle again before the next one
                    await worker.wait_until(_settled(index + 1))
            worker.stop()
        samples = bench.samples
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99)}
