"""The burst scenario (issue 9, point 7): IO-bound jobs arrive at a steady rate for a while;
fixed concurrencies against ``--autoscale``, one worker process per configuration.

The parent publishes on schedule; each configuration's worker is a child process
(``python -m benchmarks._burst child ...``), so its CPU seconds are the worker's alone. The
child measures everything itself, on the wall clock both share: each job's wait (due to
start, from ``current_job().due_at``), the drain (the first job's due time to the last job's
end), the slot-seconds (the queue's concurrency sampled every 100 ms from
``Worker.queue_stats()``, integrated over the drain) and its CPU seconds over the same span.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.abc

from aqueue import Autoscale, Task, TaskQueue, Worker, WorkerSettings, current_job
from benchmarks._common import QUEUE, delete_topology, percentile, unique_prefix

#: Seconds between two samples of the queue's concurrency (the slot-seconds' resolution).
SAMPLE = 0.1
#: Seconds between two publishes of the schedule (each publishes rate x TICK jobs).
TICK = 0.1


@dataclass(frozen=True, slots=True)
class Burst:
    """How many jobs, arriving how fast, each sleeping how long."""

    jobs: int
    rate: float
    sleep: float


FULL_BURST = Burst(jobs=20_000, rate=1_000.0, sleep=0.2)
QUICK_BURST = Burst(jobs=2_000, rate=200.0, sleep=0.2)
TARGET_WAIT = 2.0
#: (label, the child's worker option): a concurrency, or MIN:MAX for --autoscale.
CONFIGURATIONS = (
    ("fixed 10", "10"),
    ("fixed 50", "50"),
    ("fixed 200", "200"),
    # past what Little's law asks for (200), so that the table names the smallest fixed size
    # that holds the target, which the autoscaler's slot-seconds are compared with
    ("fixed 300", "300"),
    ("fixed 400", "400"),
    (f"autoscale 10:400, target {TARGET_WAIT:g} s", "10:400"),
)
#: The figures of one configuration, in the order of the table's columns.
COLUMNS = (
    ("wait_p50", "wait p50 (s)"),
    ("wait_p95", "wait p95 (s)"),
    ("wait_p99", "wait p99 (s)"),
    ("wait_max", "wait max (s)"),
    ("drain", "drain (s)"),
    ("slot_seconds", "slot-seconds"),
    ("peak_concurrency", "peak concurrency"),
    ("cpu", "worker CPU (s)"),
)


def _producer(url: str, prefix: str) -> tuple[TaskQueue, Task[[float], None]]:
    """The parent's queue: the task is declared for its name and queue, never run here."""
    queue = TaskQueue(url, prefix=prefix, name="bench-burst", telemetry=False)

    @queue.task(name="burst", queue=QUEUE)
    async def burst(sleep: float) -> None:
        await anyio.sleep(sleep)

    return queue, burst


async def _child(url: str, prefix: str, jobs: int, option: str) -> dict[str, float]:
    """Run one worker until `jobs` jobs ran; its figures."""
    queue = TaskQueue(url, prefix=prefix, name="bench-burst-worker", telemetry=False)
    waits: list[float] = []
    first_due, last_end = [float("inf")], [0.0]

    @queue.task(name="burst", queue=QUEUE)
    async def burst(sleep: float) -> None:
        job = current_job()
        now = time.time()
        waits.append(max(0.0, now - job.due_at))
        first_due[0] = min(first_due[0], job.due_at)
        await anyio.sleep(sleep)
        last_end[0] = time.time()

    low, _, high = option.partition(":")
    settings = (
        WorkerSettings(queues=(QUEUE,), autoscale=Autoscale(int(low), int(high), TARGET_WAIT))
        if high
        else WorkerSettings(queues=(QUEUE,), concurrency=int(low))
    )
    worker = Worker(queue, settings)
    # (epoch, concurrency) every SAMPLE seconds, integrated over the drain afterwards
    samples: list[tuple[float, int]] = []

    async def sample() -> None:
        while True:
            stats = worker.queue_stats().get(QUEUE)
            if stats is not None:
                samples.append((time.time(), stats.concurrency))
            await anyio.sleep(SAMPLE)

    async with queue, anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await worker.wait_started()
        tg.start_soon(sample)
        cpu_start = time.process_time()
        print("ready", flush=True)  # the parent publishes from now on
        with anyio.fail_after(1_800):
            await worker.wait_until(lambda s: s.succeeded >= jobs)
        cpu = time.process_time() - cpu_start
        worker.stop()
        tg.cancel_scope.cancel()
    start, end = first_due[0], last_end[0]
    if high:
        # how the autoscaler moved, for reading its row: the concurrency at each second
        timeline = [c for at, c in samples[:: round(1 / SAMPLE)] if start <= at <= end]
        print(f"burst {option}: concurrency per second: {timeline}", file=sys.stderr, flush=True)
    spans = [
        (min(b[0], end) - max(a[0], start)) * a[1]
        for a, b in zip(samples, [*samples[1:], (end, 0)], strict=True)
        if b[0] > start and a[0] < end
    ]
    return {
        "wait_p50": percentile(waits, 0.5),
        "wait_p95": percentile(waits, 0.95),
        "wait_p99": percentile(waits, 0.99),
        "wait_max": max(waits),
        "drain": end - start,
        "slot_seconds": sum(spans),
        "peak_concurrency": max(c for _, c in samples),
        "cpu": cpu,
    }


async def _publish(queue: TaskQueue, task: Task[[float], None], burst: Burst) -> None:
    """Publish `burst.jobs` jobs at `burst.rate` per second, TICK by TICK, on schedule."""
    sent, started = 0, anyio.current_time()
    while sent < burst.jobs:
        due = min(burst.jobs, round((anyio.current_time() - started + TICK) * burst.rate))
        if due > sent:
            batch = await queue.enqueue_many(task, [(burst.sleep,)] * (due - sent))
            if not batch.ok:
                raise RuntimeError(f"{len(batch.failures)} jobs were not enqueued")
            sent = due
        await anyio.sleep(TICK)


async def run_configuration(url: str, burst: Burst, option: str) -> dict[str, float]:
    """One worker process for `option`; publish the burst; the figures it reports."""
    prefix = unique_prefix("burst", option.replace(":", "-"))
    queue, task = _producer(url, prefix)
    command = [sys.executable, "-m", "benchmarks._burst", "child", url, prefix]
    try:
        async with await anyio.open_process(
            [*command, str(burst.jobs), option], stderr=None
        ) as child:
            if child.stdout is None:  # pragma: no cover - piped by open_process
                raise RuntimeError("no pipe to the child")
            lines = _lines(child.stdout)
            if await lines.__anext__() != "ready":
                raise RuntimeError("the burst worker did not start")
            async with queue:
                await _publish(queue, task, burst)
            figures: dict[str, float] = json.loads(await lines.__anext__())
            await child.wait()
            return figures
    finally:
        await delete_topology(url, prefix)


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[str]:
    """The stream's lines, decoded and stripped."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode().strip()


Results = list[tuple[str, dict[str, float]]]


async def run_burst(url: str, burst: Burst) -> Results:
    """Every configuration in turn (one worker process each), with its figures."""
    results: Results = []
    for label, option in CONFIGURATIONS:
        print(f"burst: {label} ...", file=sys.stderr, flush=True)
        results.append((label, await run_configuration(url, burst, option)))
    return results


def burst_table(results: Results, burst: Burst) -> str:
    """The markdown table of the burst, one row per configuration."""
    lines = [
        f"### Burst: {burst.jobs:,} jobs of {burst.sleep * 1000:g} ms (async sleep) arriving "
        f"at {burst.rate:,.0f}/s for {burst.jobs / burst.rate:g} s",
        "",
        "| configuration | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for label, figures in results:
        cells = [
            f"{figures[key]:.0f}"
            if key in ("slot_seconds", "peak_concurrency")
            else f"{figures[key]:.2f}"
            for key, _ in COLUMNS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _main_child() -> None:
    _, _, url, prefix, jobs, option = sys.argv
    figures = anyio.run(_child, url, prefix, int(jobs), option)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    _main_child()
