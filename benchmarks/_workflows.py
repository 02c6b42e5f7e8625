"""Scenarios with no raw aio-pika counterpart: job states in Redis, and a chord.

RabbitMQ has no results and no barriers, so the floor here is aqueue itself: the same no-op
jobs drained without a result backend (`_aqueue.drain`), beside them with one, and a chord.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from aqueue import RedisResultBackend, Task, TaskQueue, Worker, WorkerSettings, chord
from benchmarks._aqueue import _poll_until_settled
from benchmarks._common import (
    PREFETCH,
    QUEUE,
    SCENARIO_TIMEOUT,
    WINDOW,
    Stopwatch,
    delete_topology,
    unique_prefix,
)

Figures = dict[str, float]


@dataclass(slots=True)
class _Bench:
    queue: TaskQueue
    backend: RedisResultBackend
    noop: Task[[int], None]
    gather: Task[[list[None]], int]


@asynccontextmanager
async def _bench(url: str, redis_url: str, scenario: str) -> AsyncIterator[_Bench]:
    """An open `TaskQueue` with a Redis result backend; its queues and keys deleted after."""
    prefix = unique_prefix(scenario, "aqueue")
    backend = RedisResultBackend(redis_url, prefix=prefix)
    queue = TaskQueue(
        url, prefix=prefix, max_in_flight=WINDOW, name="bench-aqueue", results=backend
    )

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    @queue.task(queue=QUEUE, name="gather")
    async def gather(values: list[None]) -> int:
        return len(values)

    try:
        async with queue:
            yield _Bench(queue, backend, noop, gather)
            await _delete_keys(backend, prefix)
    finally:
        await delete_topology(url, prefix)


async def _delete_keys(backend: RedisResultBackend, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in backend.client.scan_iter(f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            await backend.client.unlink(*batch)
            batch.clear()
    if batch:
        await backend.client.unlink(*batch)


def _worker(bench: _Bench) -> Worker:
    settings = WorkerSettings(queues=(QUEUE,), concurrency=PREFETCH, prefetch=PREFETCH)
    return Worker(bench.queue, settings)


async def drain_with_results(url: str, count: int, *, redis_url: str) -> Figures:
    """`_aqueue.drain` with job states and results kept in Redis (queued, running, succeeded)."""
    async with _bench(url, redis_url, "results") as bench:
        batch = await bench.queue.enqueue_many(bench.noop, [(i,) for i in range(count)])
        if batch.failures:
            print(f"  !! aqueue: {len(batch.failures)} jobs not confirmed")
        worker = _worker(bench)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(SCENARIO_TIMEOUT):
                await worker.wait_started()
                watch = Stopwatch()
                await _poll_until_settled(worker, count)
            figures = watch.rate(count)
            worker.stop()
        if worker.statistics().failed:
            print(f"  !! aqueue: {worker.statistics().failed} jobs failed")
    return figures


async def chord_to_callback(url: str, count: int, *, redis_url: str) -> Figures:
    """A chord of `count` no-op members and a callback, to a running worker: from building the
    signatures to the callback's result in hand (the worker, in this process, runs the first
    members while the last ones are published).
    """
    async with _bench(url, redis_url, "chord") as bench:
        worker = _worker(bench)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(SCENARIO_TIMEOUT):
                await worker.wait_started()
                watch = Stopwatch()
                flow = chord([bench.noop.s(i) for i in range(count)], bench.gather.s())
                job = await bench.queue.enqueue(flow)
                gathered = await job.result(timeout=SCENARIO_TIMEOUT)
            figures = watch.rate(count)
            worker.stop()
        if gathered != count:
            print(f"  !! aqueue: the callback got {gathered} results, expected {count}")
    return figures
