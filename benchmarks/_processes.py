"""The processes scenario: drain pre-filled no-op jobs with 1, 2 and 3 worker processes.

aqueue: ``python -m aqueue worker benchmarks._process_app:queue --processes N``, the supervisor
the scaling table is about (``--processes 1`` is the plain single worker, no supervisor, which
is what a user gets). Raw: N processes of `raw_main` below, each the idiomatic aio-pika
consumer of `benchmarks._raw` (prefetch `PREFETCH`, ack after a no-op) on the same queue.

Timed: from just before the processes are spawned to the last job handled, so interpreter
start-up and connecting are inside the figure on both sides (aqueue also starts a supervisor
interpreter for N > 1). "Handled" is the sum of the processes' `_tally` counters reaching the
count; the work queue's ready count is checked to be 0 afterwards. CPU: every child process's
user + system seconds over its whole life (start-up and stop included), from
``getrusage(RUSAGE_CHILDREN)`` once they have exited; the supervisor's children count too,
since it waits for them.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from aio_pika.abc import AbstractIncomingMessage
from anyio.abc import Process

from benchmarks import _aqueue, _raw, _tally
from benchmarks._common import PREFETCH, QUEUE, SCENARIO_TIMEOUT, Sizes, message_count

if TYPE_CHECKING:
    from benchmarks._scenarios import Results, Side

Figures = dict[str, float]
#: How many worker processes each run uses, in one scenario run.
PROCESS_COUNTS = (1, 2, 3)
#: Seconds between two looks at the counters (coarse: the parent shares the 2 cores).
POLL = 0.005
_ROOT = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _timed(
    commands: Sequence[Sequence[str]], env: dict[str, str], tally: Path, count: int
) -> tuple[float, float]:
    """Run `commands` until `count` jobs are counted in `tally`; stop them; (wall, CPU) s."""
    environment = {**os.environ, **env, _tally.ENV: str(tally)}
    logs = [(tally / f"stderr-{index}.log").open("wb") for index in range(len(commands))]
    cpu_before = _children_cpu()
    processes: list[Process] = []
    try:
        start = time.perf_counter()
        for command, log in zip(commands, logs, strict=True):
            processes.append(
                await anyio.open_process(
                    command, env=environment, cwd=_ROOT, stdout=subprocess.DEVNULL, stderr=log
                )
            )
        with anyio.fail_after(SCENARIO_TIMEOUT):
            while _tally.total(tally) < count:
                dead = [p.returncode for p in processes if p.returncode is not None]
                if dead:
                    raise RuntimeError(f"a worker process exited early ({dead}); see {tally}")
                await anyio.sleep(POLL)
        wall = time.perf_counter() - start
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # aqueue: a graceful stop; raw: exits
        with anyio.fail_after(60):
            for process in processes:
                await process.wait()
        for log in logs:
            log.close()
    return wall, _children_cpu() - cpu_before


def _figures(figures: Figures, processes: int, count: int, wall: float, cpu: float) -> None:
    figures[f"rate{processes}"] = count / wall
    figures[f"cpu{processes}"] = cpu / count * 1000


async def _check_empty(url: str, prefix: str, side: str) -> None:
    found = await message_count(url, prefix)
    if found:
        print(f"  !! {side}: {found} messages still ready in the queue")


async def aqueue_side(url: str, count: int) -> Figures:
    """``aqueue worker --processes N`` for each N of `PROCESS_COUNTS`, on fresh queues each."""
    figures: Figures = {}
    for processes in PROCESS_COUNTS:
        async with _aqueue._bench(url, f"procs{processes}") as bench:
            await _aqueue._prefill(bench, bench.noop, count)
            command = [
                sys.executable,
                *("-m", "aqueue", "worker", "benchmarks._process_app:queue"),
                *("--queues", QUEUE, "--processes", str(processes)),
                *("--concurrency", str(PREFETCH), "--prefetch", str(PREFETCH)),
            ]
            env = {_tally.URL_ENV: url, _tally.PREFIX_ENV: bench.prefix}
            with tempfile.TemporaryDirectory(prefix="aqueue-bench-") as tally:
                wall, cpu = await _timed([command], env, Path(tally), count)
            await _check_empty(url, bench.prefix, "aqueue")
        _figures(figures, processes, count, wall, cpu)
    return figures


async def raw_side(url: str, count: int) -> Figures:
    """N `raw_main` processes for each N of `PROCESS_COUNTS`, on fresh queues each."""
    figures: Figures = {}
    for processes in PROCESS_COUNTS:
        async with _raw._publisher(url, f"procs{processes}") as publisher:
            await _raw._publish_pipelined(publisher.exchange, count)
            command = [sys.executable, "-m", "benchmarks._processes", url, publisher.prefix]
            with tempfile.TemporaryDirectory(prefix="aqueue-bench-") as tally:
                wall, cpu = await _timed([command] * processes, {}, Path(tally), count)
            await _check_empty(url, publisher.prefix, "raw")
        _figures(figures, processes, count, wall, cpu)
    return figures


async def _raw_consume(url: str, prefix: str) -> None:
    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        _tally.bump()

    async with _raw._consuming(url, prefix, on_message):
        await anyio.sleep_forever()  # until SIGTERM, which ends the process (nothing to save)


def raw_main(argv: Sequence[str]) -> None:
    """One raw consumer process: ``python -m benchmarks._processes URL PREFIX``."""
    url, prefix = argv
    anyio.run(_raw_consume, url, prefix)


def table(results: Results, sizes: Sizes) -> str:
    """processes | raw jobs/s | aqueue jobs/s | aqueue/raw | CPU s per 1,000 jobs, each side."""
    count = sizes.drain

    def median(side: Side, key: str) -> float | None:
        return results.median("processes", side, key)

    def cell(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"{count:,} no-op jobs enqueued before the workers start; wall time from spawning the "
        "processes to the last job handled; CPU of all the child processes, start-up included:",
        "",
        "| processes | raw jobs/s | aqueue jobs/s | aqueue/raw "
        "| raw CPU s per 1,000 jobs | aqueue CPU s per 1,000 jobs |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for n in PROCESS_COUNTS:
        raw, aq = median("raw", f"rate{n}"), median("aqueue", f"rate{n}")
        ratio = None if raw is None or aq is None else aq / raw
        lines.append(
            f"| {n} | {cell(raw, ',.0f')} | {cell(aq, ',.0f')} | {cell(ratio, '.2f')} "
            f"| {cell(median('raw', f'cpu{n}'), '.3f')} "
            f"| {cell(median('aqueue', f'cpu{n}'), '.3f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raw_main(sys.argv[1:])
