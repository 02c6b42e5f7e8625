"""The README demo: fan out thousands of jobs to a worker, with a progress bar and a summary.

Run it with ``make demo`` (or ``scripts/demo``), which starts RabbitMQ when none answers.
``python -m examples.demo --jobs 5000 --url amqp://guest:guest@127.0.0.1:5672/``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import aqueue
from aqueue import CallNext, JobContext, TaskQueue, Worker, WorkerSettings

URL = os.environ.get("AQUEUE_URL", "amqp://guest:guest@127.0.0.1:5672/")


def build_queue(
    url: str, prefix: str, waits: list[float]
) -> tuple[TaskQueue, aqueue.Task[[int], int]]:
    """A queue whose middleware records each job's queue wait."""

    async def record_wait(job: JobContext, call_next: CallNext) -> object:
        waits.append(job.queue_wait)
        return await call_next()

    queue = TaskQueue(url, prefix=prefix, middleware=[record_wait], name="aqueue-demo")

    @queue.task(queue="demo")
    async def square(n: int) -> int:
        await anyio.sleep(0.001)  # stands in for a little I/O
        return n * n

    return queue, square


async def run_demo(url: str, jobs: int, concurrency: int) -> dict[str, float]:
    """Enqueue `jobs` jobs, run them with one worker, and return the figures."""
    waits: list[float] = []
    queue, square = build_queue(url, f"aqueue-demo-{os.getpid()}", waits)
    console = Console()
    async with queue:
        worker = Worker(queue, WorkerSettings(queues=("demo",), concurrency=concurrency))
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await worker.wait_started()
            started = time.perf_counter()
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("enqueue + run", total=jobs)
                enqueued: list[aqueue.BatchResult[int]] = []

                async def fan_out() -> None:
                    enqueued.append(await queue.enqueue_many(square, [(i,) for i in range(jobs)]))

                tg.start_soon(fan_out)
                while not enqueued or worker.statistics().succeeded < enqueued[0].confirmed:
                    progress.update(bar, completed=worker.statistics().succeeded)
                    await anyio.sleep(0.1)  # redraw rate of the progress bar
                progress.update(bar, completed=worker.statistics().succeeded)
            run_seconds = time.perf_counter() - started
            worker.stop()
        batch = enqueued[0]
        async with queue.session() as session:
            await session.transport.delete_queue(session.names.work_queue("demo"))
            await session.transport.delete_queue(session.names.dead_letter_queue("demo"))
    ordered = sorted(waits)
    return {
        "jobs": float(jobs),
        "failed_to_enqueue": float(len(batch.failures)),
        "run_per_s": jobs / run_seconds,
        "wait_p50": statistics.median(ordered),
        "wait_p99": ordered[int(len(ordered) * 0.99) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--url", default=URL)
    options = parser.parse_args()
    figures = anyio.run(run_demo, options.url, options.jobs, options.concurrency)
    table = Table("figure", "value", title="aqueue demo")
    table.add_row("jobs run", f"{figures['jobs']:.0f}")
    table.add_row("not confirmed at enqueue", f"{figures['failed_to_enqueue']:.0f}")
    table.add_row("throughput (enqueue to done)", f"{figures['run_per_s']:,.0f} jobs/s")
    table.add_row("queue wait p50", f"{figures['wait_p50'] * 1000:,.0f} ms")
    table.add_row("queue wait p99", f"{figures['wait_p99'] * 1000:,.0f} ms")
    Console().print(table)


if __name__ == "__main__":
    main()
