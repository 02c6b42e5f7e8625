"""An app for the outbox tests: one task that records which job ran, in this process.

``aqueue outbox-relay tests.integration.apps.outbox:queue`` runs as a subprocess with the
broker and prefix from the environment (see `tests.helpers.worker_process.apps_env`); the test
process builds the same app with `make_app` to run the worker and count the runs.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from aqueue import RedisResultBackend, Task, TaskQueue, current_job

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class App:
    """A TaskQueue, its task, and the job ids and arguments its runs saw."""

    queue: TaskQueue
    record: Task[[int], int]
    runs: Counter[str] = field(default_factory=Counter)
    numbers: set[int] = field(default_factory=set)


def make_app(url: str, prefix: str, redis_url: str | None = None) -> App:
    """The app; with `redis_url`, a Redis result backend (which dedups republished rows)."""
    results = RedisResultBackend(redis_url, prefix=prefix) if redis_url else None
    queue = TaskQueue(url, prefix=prefix, results=results, name="aqueue-outbox-tests")
    app: App

    @queue.task(name="outbox.record", queue="default")
    async def record(number: int) -> int:
        app.runs[current_job().job_id] += 1
        app.numbers.add(number)
        return number

    app = App(queue, record)
    return app


queue = make_app(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqueue"),
    os.environ.get("AQUEUE_TEST_REDIS_URL") or None,
).queue
