"""A poison task: it kills its worker process every time it runs (a segfault, an OOM kill).

Its queue has ``delivery_limit=2``: after the broker has handed the message to workers that
died too often, it dead-letters it with reason ``delivery_limit``.
"""

from __future__ import annotations

import os
from pathlib import Path

from aqueue import TaskQueue
from tests.integration.apps.jobs import DEFAULT_URL, record

DELIVERY_LIMIT = 2
EXIT_CODE = 86
"""The poison task's exit code, told apart from any other way the worker could end."""


def make_queue(url: str, prefix: str, *, out: Path | None = None) -> TaskQueue:
    """The app: `crash` records ``start`` and ends its process; `done` records ``done``."""
    queue = TaskQueue(url, prefix=prefix, delivery_limit=DELIVERY_LIMIT, name=f"{prefix}-poison")

    @queue.task(name="crash")
    async def crash() -> None:
        record("start", out)
        os._exit(EXIT_CODE)

    @queue.task(name="done")
    async def done() -> None:
        record("done", out)

    return queue


queue = make_queue(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqtest-apps"),
)
