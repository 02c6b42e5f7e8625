"""``python -m benchmarks.window``: `enqueue_many`'s rate by batch size and confirm window.

Each configuration publishes the same jobs to a fresh quorum queue; configurations run
interleaved, ``--repeat`` times, and the table gives each one's median rate and range. Used
to pick the defaults of ``publish_batch`` and ``max_in_flight`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from collections.abc import Sequence

import anyio

from aqueue import TaskQueue
from benchmarks._common import QUEUE, Stopwatch, delete_topology, unique_prefix

DEFAULT_URL = os.environ.get("AQUEUE_URL", "amqp://guest:guest@127.0.0.1:5672/")
BATCHES = (1, 20, 50, 100, 250, 500)
WINDOWS = (500, 1000, 2000)


async def rate(url: str, count: int, batch: int, window: int) -> float:
    """Jobs per second of one `enqueue_many` of `count` jobs."""
    prefix = unique_prefix(f"window-{batch}-{window}", "aqueue")
    queue = TaskQueue(
        url, prefix=prefix, name="bench-window", publish_batch=batch, max_in_flight=window
    )

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    try:
        async with queue:
            watch = Stopwatch()
            outcome = await queue.enqueue_many(noop, [(i,) for i in range(count)])
            figures = watch.rate(count)
            if outcome.failures:
                raise RuntimeError(f"{len(outcome.failures)} jobs not confirmed")
    finally:
        await delete_topology(url, prefix)
    return figures["rate"]


async def sweep(
    url: str, count: int, repeat: int, batches: Sequence[int], windows: Sequence[int]
) -> dict[tuple[int, int], list[float]]:
    """Every configuration `repeat` times, interleaved."""
    rates: dict[tuple[int, int], list[float]] = {}
    configurations = list(itertools.product(batches, windows))
    for index in range(repeat):
        for batch, window in configurations if index % 2 == 0 else configurations[::-1]:
            value = await rate(url, count, batch, window)
            rates.setdefault((batch, window), []).append(value)
            print(
                f"[{index + 1}/{repeat}] batch {batch:>4} window {window:>5}: {value:,.0f}/s",
                file=sys.stderr,
            )
    return rates


def main(args: Sequence[str] | None = None) -> None:
    """Run the sweep and print the markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.window", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--windows", default=",".join(map(str, WINDOWS)))
    options = parser.parse_args(args)
    batches = [int(b) for b in options.batches.split(",")]
    windows = [int(w) for w in options.windows.split(",")]
    rates = anyio.run(sweep, options.url, options.jobs, options.repeat, batches, windows)
    print("| publish_batch | max_in_flight | rate (median) | range |")
    print("|--:|--:|--:|--:|")
    for (batch, window), values in rates.items():
        print(
            f"| {batch} | {window} | {statistics.median(values):,.0f} jobs/s "
            f"| {min(values):,.0f} to {max(values):,.0f} |"
        )


if __name__ == "__main__":
    main()
