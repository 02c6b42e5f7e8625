"""A poison task: it kills its worker process every time it runs (a segfault, an OOM kill).

Beside it, `done` jobs are healthy: they sleep a little (so some are running or prefetched
when the poison kills the worker) and record ``done``. The queue type comes from
``AQUEUE_TEST_QUEUE_TYPE`` (``quorum`` by default), so one app serves both kinds of queue.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import anyio

from aqueue import TaskQueue
from aqueue._core.topology import QueueType
from tests.integration.apps.jobs import DEFAULT_URL, record

EXIT_CODE = 86
"""The poison task's exit code, told apart from any other way the worker could end."""
CRASH_LIMIT = 3
"""The worker's default ``crash_limit``: the poison kills this many workers, then is dead."""


def make_queue(
    url: str, prefix: str, *, queue_type: QueueType = "quorum", out: Path | None = None
) -> TaskQueue:
    """The app: `crash` records ``start`` and ends its process; `done` records ``done``."""
    queue = TaskQueue(url, prefix=prefix, queue_type=queue_type, name=f"{prefix}-poison")

    @queue.task(name="crash")
    async def crash() -> None:
        record("start", out)
        os._exit(EXIT_CODE)

    @queue.task(name="done")
    async def done(seconds: float = 0.0) -> None:
        await anyio.sleep(seconds)
        record("done", out)

    return queue


queue = make_queue(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqtest-apps"),
    queue_type=cast("QueueType", os.environ.get("AQUEUE_TEST_QUEUE_TYPE", "quorum")),
)
