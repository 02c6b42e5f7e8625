"""A task that fails its first attempts, then succeeds: retries in flight for worker subprocesses.

Records (see ``jobs.record``): ``start <job id>`` when an attempt starts, ``fail <job id>`` when
it fails on purpose, ``ok <job id>`` when it succeeds. The test process builds the same app with
`make_app` to enqueue jobs and read the queues.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import anyio

from aqueue import Task, TaskQueue, current_job
from tests.integration.apps.jobs import DEFAULT_URL, record

#: Far more retries than the failures asked for: a job redelivered after its worker was killed
#: counts that delivery as an attempt too, and none may end in the dead-letter queue.
RETRIES = 10
BACKOFF = 0.3
MAX_BACKOFF = 1.0


class PlannedFailure(Exception):
    """The failure a `flaky` attempt raises on purpose."""


@dataclass(frozen=True)
class App:
    """A TaskQueue and its task."""

    queue: TaskQueue
    flaky: Task[[int, float], None]


def make_app(url: str, prefix: str, *, out: Path | None = None) -> App:
    """The app: `flaky(failures, seconds)` runs `seconds`, then fails while its attempt number
    is at most `failures`; retried after 0.3 s, 0.6 s, then every 1 s (jitter 20 %).
    """
    queue = TaskQueue(url, prefix=prefix, name=f"{prefix}-retrying")

    @queue.task(name="flaky", retries=RETRIES, backoff=BACKOFF, max_backoff=MAX_BACKOFF)
    async def flaky(failures: int, seconds: float) -> None:
        record("start", out)
        await anyio.sleep(seconds)
        if current_job().attempt <= failures:
            record("fail", out)
            raise PlannedFailure(f"attempt {current_job().attempt} of {failures} to fail")
        record("ok", out)

    return App(queue, flaky)


app = make_app(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqtest-apps"),
)
queue = app.queue
