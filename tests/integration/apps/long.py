"""A long job for a broker whose ``consumer_timeout`` is shorter than the job.

`render` records ``start``, sleeps `seconds`, records ``finish``. Results go to the Redis named
by ``AQUEUE_TEST_REDIS_URL``, so workers can lease long jobs.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from aqueue import RedisResultBackend, TaskQueue
from tests.integration.apps.jobs import DEFAULT_URL, record

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def make_queue(url: str, prefix: str, redis_url: str, *, out: Path | None = None) -> TaskQueue:
    """The app: one long task, results in Redis under `prefix`."""
    queue = TaskQueue(
        url,
        prefix=prefix,
        name=f"{prefix}-long",
        results=RedisResultBackend(redis_url, prefix=prefix),
    )

    @queue.task(name="render")
    async def render(seconds: float) -> str:
        record("start", out)
        await anyio.sleep(seconds)
        record("finish", out)
        return "rendered"

    return queue


queue = make_queue(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqtest-apps"),
    os.environ.get("AQUEUE_TEST_REDIS_URL", DEFAULT_REDIS_URL),
)
