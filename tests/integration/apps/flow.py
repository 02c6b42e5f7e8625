"""Flow-limited tasks for worker subprocesses, with a Redis result backend.

Configured from the environment: ``AQUEUE_TEST_URL``, ``AQUEUE_TEST_PREFIX`` (the topology
prefix and the Redis key prefix), ``AQUEUE_TEST_REDIS_URL`` and ``AQUEUE_TEST_OUT`` (a file
each task appends one JSON line to when it starts, and `capped` when it ends too; one
``write`` on an O_APPEND fd, so two worker processes never interleave their lines).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import orjson

from aqueue import RedisResultBackend, TaskQueue, current_job
from tests.integration.apps.jobs import DEFAULT_URL
from tests.integration.apps.workflows import DEFAULT_REDIS_URL

#: the rate limit of `limited`, per second
RATE = 20
#: the concurrency cap of `capped`, per tenant
CAP = 3


def record(**fields: object) -> None:
    """Append one JSON line: the fields, the job id, the time and this process's pid."""
    line = orjson.dumps(
        {**fields, "job": current_job().job_id, "t": time.time(), "pid": os.getpid()}
    )
    fd = os.open(Path(os.environ["AQUEUE_TEST_OUT"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)


def make_queue(url: str, prefix: str, redis_url: str) -> TaskQueue:
    """The app's queue (the test builds the same one to enqueue)."""
    return TaskQueue(
        url,
        prefix=prefix,
        results=RedisResultBackend(redis_url, prefix=prefix),
        telemetry=False,
        name=f"{prefix}-flow",
    )


queue = make_queue(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqueue-test"),
    os.environ.get("AQUEUE_TEST_REDIS_URL", DEFAULT_REDIS_URL),
)


@queue.task(queue="limited", rate_limit=f"{RATE}/s", store_result=False)
async def limited(n: int) -> None:
    """Starts at most RATE times a second across every worker."""
    record(event="start", n=n, due=current_job().due_at)


@queue.task(queue="capped", max_concurrency=CAP, concurrency_key="tenant", store_result=False)
async def capped(tenant: str, n: int, hold: float) -> None:
    """At most CAP run at once per tenant; each holds its slot `hold` seconds.

    A job that came back (its worker was killed) holds it no longer: it just ends.
    """
    record(event="start", tenant=tenant, n=n)
    await anyio.sleep(0.0 if current_job().redelivered else hold)
    record(event="end", tenant=tenant, n=n)


@queue.task(queue="fair", fair_key="tenant", store_result=False)
async def fair(tenant: str, n: int) -> None:
    """50 ms of work, on a fair-share queue (one tenant's flood does not delay the others)."""
    record(event="start", tenant=tenant, n=n, enq=current_job().enqueued_at)
    await anyio.sleep(0.05)


@queue.task(queue="unfair", store_result=False)
async def unfair(tenant: str, n: int) -> None:
    """The same work on a plain queue, for comparison."""
    record(event="start", tenant=tenant, n=n, enq=current_job().enqueued_at)
    await anyio.sleep(0.05)
