"""Client memory with 1,000 jobs in flight: the resident set of a fresh consuming process.

Each measurement runs a process of its own (``python -m benchmarks._memory``), so neither
side inherits the other's heap: it connects, reads its resident set, subscribes with prefetch
and concurrency `IN_FLIGHT` to a queue pre-filled with `IN_FLIGHT` jobs whose handlers wait,
and reads it again once every job is in flight. The figure is the growth, in MiB (and the
total). The jobs are then released and acked.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import anyio

from aqueue import TaskQueue, Worker, WorkerSettings
from benchmarks import _raw
from benchmarks._common import (
    QUEUE,
    SCENARIO_TIMEOUT,
    delete_topology,
    names,
    raw_queue_arguments,
    unique_prefix,
)

Figures = dict[str, float]
IN_FLIGHT = 1000
#: Seconds between two looks at the in-flight count.
_POLL = 0.01


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _child_raw(url: str, prefix: str) -> Figures:
    release = asyncio.Event()
    in_flight = 0
    async with await aio_pika.connect_robust(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=IN_FLIGHT)
        queue = await channel.get_queue(names(prefix).work_queue(QUEUE), ensure=False)
        before = _rss_mib()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal in_flight
            in_flight += 1
            await release.wait()
            await message.ack()

        await queue.consume(on_message, no_ack=False)
        with anyio.fail_after(SCENARIO_TIMEOUT):
            while in_flight < IN_FLIGHT:  # noqa: ASYNC110 - a count, no event to wait on
                await anyio.sleep(_POLL)
        during = _rss_mib()
        release.set()
    return {"rss": during - before, "total": during}


async def _child_aqueue(url: str, prefix: str) -> Figures:
    queue = TaskQueue(url, prefix=prefix, name="bench-aqueue")
    release = anyio.Event()

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        await release.wait()

    async with queue:
        settings = WorkerSettings(queues=(QUEUE,), concurrency=IN_FLIGHT, prefetch=IN_FLIGHT)
        worker = Worker(queue, settings)
        before = _rss_mib()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(SCENARIO_TIMEOUT):
                # polled: the worker wakes its watchers when jobs end, not when they start
                while worker.statistics().in_flight < IN_FLIGHT:  # noqa: ASYNC110
                    await anyio.sleep(_POLL)
            during = _rss_mib()
            release.set()
            await worker.wait_until(lambda stats: stats.succeeded >= IN_FLIGHT)
            worker.stop()
    return {"rss": during - before, "total": during}


async def _prefilled(url: str, side: str) -> str:
    prefix = unique_prefix("memory", side)
    n = names(prefix)
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(
            n.exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        await channel.declare_exchange(
            n.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        arguments: dict[str, Any] = dict(raw_queue_arguments(prefix))
        queue = await channel.declare_queue(n.work_queue(QUEUE), durable=True, arguments=arguments)
        await queue.bind(exchange, routing_key=QUEUE)
    if side == "raw":
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await _raw._publish_pipelined(await channel.get_exchange(n.exchange), IN_FLIGHT)
        return prefix
    queue_ = TaskQueue(url, prefix=prefix, name="bench-prefill")

    @queue_.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    async with queue_:
        await queue_.enqueue_many(noop, [(i,) for i in range(IN_FLIGHT)])
    return prefix


async def _measure(side: str, url: str, count: int) -> Figures:
    del count  # always IN_FLIGHT jobs
    prefix = await _prefilled(url, side)
    try:
        command = [sys.executable, "-m", "benchmarks._memory", side, url, prefix]
        done = await anyio.run_process(command, check=False, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout.decode()[-2000:]}")
        figures: Figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return figures
    finally:
        await delete_topology(url, prefix)


async def raw(url: str, count: int) -> Figures:
    """A raw aio-pika consumer with `IN_FLIGHT` handlers waiting."""
    return await _measure("raw", url, count)


async def aqueue(url: str, count: int) -> Figures:
    """An aqueue `Worker` with `IN_FLIGHT` jobs running (waiting)."""
    return await _measure("aqueue", url, count)


if __name__ == "__main__":
    side, url, prefix = sys.argv[1:4]
    child = _child_raw if side == "raw" else _child_aqueue
    print(json.dumps(anyio.run(child, url, prefix)))
