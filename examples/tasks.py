"""The tasks of the FastAPI example, and the TaskQueue they share with it.

Configured from the environment, so the web app and ``aqueue worker`` see the same broker,
Redis and names:

- ``AQUEUE_URL``: the RabbitMQ URL (default ``amqp://guest:guest@localhost/``);
- ``AQUEUE_REDIS_URL``: where job states and results are kept (default
  ``redis://localhost:6379/0``);
- ``AQUEUE_PREFIX``: the prefix of every queue, exchange and Redis key (default
  ``aqueue-example``).

Run a worker with ``aqueue worker examples.tasks:queue``.
"""

from __future__ import annotations

import os

import anyio

from aqueue import RedisResultBackend, TaskQueue, current_job

URL = os.environ.get("AQUEUE_URL", "amqp://guest:guest@localhost/")
REDIS_URL = os.environ.get("AQUEUE_REDIS_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("AQUEUE_PREFIX", "aqueue-example")

queue = TaskQueue(
    URL,
    prefix=PREFIX,
    name="aqueue-example",
    results=RedisResultBackend(REDIS_URL, prefix=PREFIX),
    result_ttl=3600,
)


class ReportFailed(Exception):
    """What `report` raises when it is asked to fail (to see a failure end to end)."""


@queue.task(queue="reports", timeout=300)
async def report(
    name: str, steps: int = 5, seconds_per_step: float = 0.2, fail: bool = False
) -> dict[str, object]:
    """Build a report in `steps` steps, reporting progress after each one."""
    for step in range(1, steps + 1):
        await anyio.sleep(seconds_per_step)  # stands in for real work
        await current_job().report_progress({"step": step, "of": steps})
    if fail:
        raise ReportFailed(f"report {name!r} failed on purpose")
    return {"name": name, "steps": steps, "url": f"/reports/{name}.pdf"}


@queue.task()
def count_words(text: str) -> int:
    """Count the words of one text (a plain function: it runs in the worker's thread pool)."""
    return len(text.split())


@queue.task()
async def total(counts: list[int]) -> dict[str, object]:
    """A chord's callback: every member's count, in order, and their sum."""
    return {"counts": counts, "total": sum(counts)}
