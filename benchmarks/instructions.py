"""``python -m benchmarks.instructions``: client instructions per job, aqueue against raw aio-pika.

Wall-clock rates on a shared 2-core machine swing by tens of per cent between paired runs;
instruction counts do not. Each measurement runs one client process under ``valgrind
--tool=callgrind`` that drains (or publishes) ``n`` jobs and exits; the queue is filled
beforehand by this (uninstrumented) process. Two sizes are measured and the difference of
the two totals, divided by the difference of the sizes, is the cost of one job: interpreter
start-up, imports, connecting and declaring cancel out.

The count is the client's only (the broker is another process) and includes everything the
client does per job: aiormq's frame parsing, pamqp, asyncio, aqueue or the raw handler.

Scenarios: ``drain`` (no-op jobs, prefetch 200, one worker or one consumer) and
``enqueue_many`` (pipelined confirmed publishes, the same window on both sides).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from benchmarks import _raw
from benchmarks._common import (
    PREFETCH,
    QUEUE,
    SCENARIO_TIMEOUT,
    WINDOW,
    delete_topology,
    message_count,
    names,
    unique_prefix,
)

DEFAULT_URL = os.environ.get("AQUEUE_URL", "amqp://guest:guest@127.0.0.1:5672/")
SCENARIOS = ("drain", "enqueue_many")
SIDES = ("raw", "aqueue")
#: The two sizes whose difference gives the per-job cost (``--quick``: a smoke run).
SIZES = (400, 1200)
QUICK_SIZES = (20, 60)
_COLLECTED = re.compile(rb"Collected\s*:\s*(\d+)")
#: Seconds between two looks at the worker's counters in the child (slow under valgrind:
#: polling often would be counted as per-job work, since the run's length grows with n).
_CHILD_POLL = 0.05


@dataclass(frozen=True, slots=True)
class Count:
    """Instructions of one scenario on one side: the two totals and the cost per job."""

    scenario: str
    side: str
    sizes: tuple[int, int]
    totals: tuple[int, int]

    @property
    def per_job(self) -> float:
        """Instructions per job: the difference of the totals over that of the sizes."""
        return (self.totals[1] - self.totals[0]) / (self.sizes[1] - self.sizes[0])


# -- the child: what runs under valgrind --------------------------------------------------


async def _child_drain_raw(url: str, prefix: str, count: int) -> None:
    import aio_pika

    acked = 0
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal acked
        await message.ack()
        acked += 1
        if acked == count:
            done.set()

    async with await aio_pika.connect_robust(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(names(prefix).work_queue(QUEUE), ensure=False)
        await queue.consume(on_message, no_ack=False)
        async with asyncio.timeout(SCENARIO_TIMEOUT * 10):
            await done.wait()


async def _child_drain_aqueue(url: str, prefix: str, count: int) -> None:
    from aqueue import TaskQueue, Worker, WorkerSettings

    queue = TaskQueue(url, prefix=prefix, name="bench-aqueue")

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    async with queue:
        settings = WorkerSettings(queues=(QUEUE,), concurrency=PREFETCH, prefetch=PREFETCH)
        worker = Worker(queue, settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(SCENARIO_TIMEOUT * 10):
                while worker.statistics().succeeded < count:  # noqa: ASYNC110 - see _CHILD_POLL
                    await anyio.sleep(_CHILD_POLL)
            worker.stop()


async def _child_publish_raw(url: str, prefix: str, count: int) -> None:
    import aio_pika

    async with await aio_pika.connect_robust(url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(names(prefix).exchange, ensure=False)
        await _raw._publish_pipelined(exchange, count)


async def _child_publish_aqueue(url: str, prefix: str, count: int) -> None:
    from aqueue import TaskQueue

    queue = TaskQueue(url, prefix=prefix, name="bench-aqueue", max_in_flight=WINDOW)

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    async with queue:
        batch = await queue.enqueue_many(noop, [(i,) for i in range(count)])
        if batch.failures:
            raise SystemExit(f"{len(batch.failures)} jobs not confirmed")


_CHILDREN = {
    ("drain", "raw"): _child_drain_raw,
    ("drain", "aqueue"): _child_drain_aqueue,
    ("enqueue_many", "raw"): _child_publish_raw,
    ("enqueue_many", "aqueue"): _child_publish_aqueue,
}


# -- the parent: prepares the queue, runs the child under valgrind -------------------------


async def _declare(url: str, prefix: str) -> None:
    """aqueue's topology for `prefix` (both sides use the same names and arguments)."""
    from aqueue import TaskQueue

    queue = TaskQueue(url, prefix=prefix, name="bench-declare")

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    async with queue:
        pass


async def _prefill(url: str, prefix: str, side: str, count: int) -> None:
    from aqueue import TaskQueue

    if side == "raw":
        import aio_pika

        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(names(prefix).exchange, ensure=False)
            await _raw._publish_pipelined(exchange, count)
        return
    queue = TaskQueue(url, prefix=prefix, name="bench-prefill", max_in_flight=WINDOW)

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    async with queue:
        await queue.enqueue_many(noop, [(i,) for i in range(count)])


def _valgrind(argv: Sequence[str]) -> int:
    """Run `argv` under callgrind; the instructions it collected."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={Path(tmp) / 'out'}",
            *argv,
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts every run
        done = subprocess.run(command, capture_output=True, check=False, env=env)  # noqa: S603
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{tail}")
    return int(found.group(1))


async def _one(url: str, scenario: str, side: str, count: int) -> int:
    """One measurement; once more if the queue did not end as it should (a slow run under
    valgrind on a loaded machine can miss a heartbeat and lose its connection)."""
    try:
        return await _measure_once(url, scenario, side, count)
    except _Unexpected as exc:
        print(f"  !! {exc}; measuring again", file=sys.stderr)
        return await _measure_once(url, scenario, side, count)


class _Unexpected(RuntimeError):
    """The queue did not end with the messages it should have."""


async def _measure_once(url: str, scenario: str, side: str, count: int) -> int:
    prefix = unique_prefix(f"instr-{scenario}", side)
    try:
        await _declare(url, prefix)
        if scenario == "drain":
            await _prefill(url, prefix, side, count)
        argv = [sys.executable, "-m", "benchmarks.instructions", "--child"]
        argv += [scenario, side, prefix, str(count), "--url", url]
        total = await anyio.to_thread.run_sync(_valgrind, argv)
        left = await message_count(url, prefix)
        expected = 0 if scenario == "drain" else count
        if left != expected:
            raise _Unexpected(f"{scenario}/{side}: {left} messages left, expected {expected}")
        return total
    finally:
        await delete_topology(url, prefix)


async def measure(
    url: str,
    *,
    sizes: tuple[int, int] = SIZES,
    scenarios: Sequence[str] = SCENARIOS,
    sides: Sequence[str] = SIDES,
) -> list[Count]:
    """Instructions per job of each scenario on each side."""
    counts = []
    for scenario in scenarios:
        for side in sides:
            totals = (
                await _one(url, scenario, side, sizes[0]),
                await _one(url, scenario, side, sizes[1]),
            )
            count = Count(scenario, side, sizes, totals)
            print(
                f"{scenario:<12} {side:<6} {count.per_job:,.0f} instructions/job", file=sys.stderr
            )
            counts.append(count)
    return counts


def table(counts: Sequence[Count]) -> str:
    """The markdown table: instructions per job, raw and aqueue, and the ratio."""
    lines = [
        "| scenario | raw aio-pika | aqueue | aqueue/raw |",
        "|---|--:|--:|--:|",
    ]
    by_key = {(c.scenario, c.side): c for c in counts}
    for scenario in dict.fromkeys(c.scenario for c in counts):
        raw, aq = by_key.get((scenario, "raw")), by_key.get((scenario, "aqueue"))
        cells = [f"{c.per_job:,.0f}" if c else "" for c in (raw, aq)]
        ratio = f"{aq.per_job / raw.per_job:.2f}" if raw and aq else ""
        lines.append(f"| {scenario} (instructions per job) | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(args: Sequence[str] | None = None) -> None:
    """Measure and print the table (or, with ``--child``, be the measured client)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description="Client instructions per job (callgrind), aqueue against raw aio-pika.",
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--side", choices=("both", *SIDES), default="both")
    parser.add_argument("--child", nargs=4, metavar=("SCENARIO", "SIDE", "PREFIX", "N"))
    options = parser.parse_args(args)
    if options.child:
        scenario, side, prefix, n = options.child
        anyio.run(_CHILDREN[scenario, side], options.url, prefix, int(n))
        return
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    scenarios = [s for s in options.only.split(",") if s]
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    sides = SIDES if options.side == "both" else (options.side,)
    sizes = QUICK_SIZES if options.quick else SIZES
    counts = anyio.run(lambda: measure(options.url, sizes=sizes, scenarios=scenarios, sides=sides))
    print(table(counts), end="")


if __name__ == "__main__":
    main()
