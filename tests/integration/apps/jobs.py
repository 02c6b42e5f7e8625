"""Well-behaved tasks for worker subprocesses: they record when they start and finish.

The test process builds the same app with `make_app` (same task names, same queue settings)
to enqueue jobs and to read the queues.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from aqueue import Task, TaskQueue, current_job

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def record(event: str, out: Path | None = None) -> None:
    """Append ``<event> <job id>`` to the output file in one ``write`` on an O_APPEND fd."""
    path = out if out is not None else Path(os.environ["AQUEUE_TEST_OUT"])
    line = f"{event} {current_job().job_id}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class App:
    """A TaskQueue and its tasks."""

    queue: TaskQueue
    done: Task[[float, float], None]
    slow: Task[[float], None]
    slow_sync: Task[[float], None]


def make_app(
    url: str, prefix: str, *, connect_timeout: float = 10.0, out: Path | None = None
) -> App:
    """The app: `done`, `slow` and `slow_sync`.

    `done` records ``done`` (and ``start`` first, when it sleeps `delay` seconds in between; it
    sleeps `first_delay` instead, when given, on the message's first delivery). `slow` records
    ``start`` and ``finish`` around `seconds` of sleep; `slow_sync` too, as a plain function
    (in a thread, which nothing can interrupt).
    """
    queue = TaskQueue(url, prefix=prefix, connect_timeout=connect_timeout, name=f"{prefix}-jobs")

    @queue.task(name="done")
    async def done(delay: float = 0.0, first_delay: float = 0.0) -> None:
        if first_delay and not current_job().redelivered:
            delay = first_delay
        if delay:
            record("start", out)
            await anyio.sleep(delay)
        record("done", out)

    @queue.task(name="slow")
    async def slow(seconds: float) -> None:
        record("start", out)
        await anyio.sleep(seconds)
        record("finish", out)

    @queue.task(name="crunch")
    async def crunch(seconds: float) -> None:
        # CPU-bound on the event loop: it never awaits, so the loop lags (the autoscaler's
        # "CPU-bound" case)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        record("done", out)

    @queue.task(name="slow_sync")
    def slow_sync(seconds: float) -> None:
        record("start", out)
        time.sleep(seconds)  # noqa: TID251 - a sync task blocks its thread, not the loop
        record("finish", out)

    return App(queue, done, slow, slow_sync)


app = make_app(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqtest-apps"),
    connect_timeout=float(os.environ.get("AQUEUE_TEST_CONNECT_TIMEOUT", "10")),
)
queue = app.queue
not_a_queue = "a string, not a TaskQueue"
