"""An every-second schedule with a Redis result backend, for scheduler failover tests.

Configured from the environment like the other apps (``AQUEUE_TEST_URL``,
``AQUEUE_TEST_PREFIX``, ``AQUEUE_TEST_REDIS_URL``, ``AQUEUE_TEST_OUT``). Each process names
its connections ``{prefix}-{pid}-...``, so a test can close one process's connections.
"""

from __future__ import annotations

import os

from aqueue import RedisResultBackend, TaskQueue
from tests.integration.apps.jobs import DEFAULT_URL, record
from tests.integration.apps.workflows import DEFAULT_REDIS_URL

PREFIX = os.environ.get("AQUEUE_TEST_PREFIX", "aqtest-periodic")
queue = TaskQueue(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    prefix=PREFIX,
    name=f"{PREFIX}-{os.getpid()}",
    results=RedisResultBackend(
        os.environ.get("AQUEUE_TEST_REDIS_URL", DEFAULT_REDIS_URL), prefix=PREFIX
    ),
)


@queue.periodic(every=1, name="second")
@queue.task(name="tick")
async def tick() -> None:
    """Record ``ran <job id>`` (the job id is ``second@<tick time>``)."""
    record("ran")
