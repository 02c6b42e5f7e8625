"""Tasks for results and workflows in worker subprocesses, with a Redis result backend.

Configured from the environment: ``AQUEUE_TEST_URL`` (RabbitMQ), ``AQUEUE_TEST_PREFIX`` (the
topology prefix, also the prefix of every Redis key) and ``AQUEUE_TEST_REDIS_URL``. What the
tasks did is recorded in Redis under the prefix, so what a killed worker did is still known:

- ``{prefix}:test:square-runs``: a counter of `square` runs (reruns included);
- ``{prefix}:test:collect-calls``: a list, one JSON item per `collect` invocation;
- ``{prefix}:test:errors``: a list, one JSON item per `on_error` invocation;
- ``{prefix}:test:gate:{name}``: a list the test pushes to, to let a `stepper` attempt go on.

The test process builds the same app with `make_app` to enqueue jobs and read their states.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import redis.asyncio as redis

from aqueue import RedisResultBackend, Retry, Task, TaskQueue, current_job
from tests.integration.apps.jobs import DEFAULT_URL

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
#: seconds a stepper waits for its gate
GATE_WAIT = 60
#: the delay of a stepper's retry: long enough for the test to see "retrying"
STEP_RETRY_DELAY = 1.0


class Exploded(Exception):
    """What `explode` raises on purpose."""


@dataclass
class Recorder:
    """A lazily opened Redis client, on the event loop of the worker that uses it."""

    url: str
    prefix: str
    _client: redis.Redis | None = field(default=None, repr=False)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.url)
        return self._client

    def key(self, name: str) -> str:
        """A key of this test: ``{prefix}:test:{name}``."""
        return f"{self.prefix}:test:{name}"


@dataclass(frozen=True)
class App:
    """A TaskQueue (with a Redis result backend) and its tasks."""

    queue: TaskQueue
    recorder: Recorder
    add: Task[[int, int], int]
    double: Task[[int], int]
    describe: Task[[int], str]
    square: Task[[int], int]
    collect: Task[[list[int]], int]
    explode: Task[[int], int]
    on_error: Task[[dict[str, Any]], None]
    stepper: Task[[str, bool], str]


def make_app(url: str, prefix: str, redis_url: str) -> App:  # noqa: C901 - a closure per task
    """The app; its Redis keys and its broker names share `prefix`."""
    queue = TaskQueue(
        url,
        prefix=prefix,
        name=f"{prefix}-workflows",
        results=RedisResultBackend(redis_url, prefix=prefix),
    )
    recorder = Recorder(redis_url, prefix)

    @queue.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    @queue.task(name="double")
    def double(x: int) -> int:  # a plain function: runs in the worker's thread pool
        return x * 2

    @queue.task(name="describe")
    async def describe(x: int) -> str:
        return f"value={x}"

    @queue.task(name="square")
    async def square(n: int) -> int:
        await recorder.client.incr(recorder.key("square-runs"))
        await anyio.sleep(0.01)
        return n * n

    @queue.task(name="collect")
    async def collect(values: list[int]) -> int:
        await recorder.client.rpush(recorder.key("collect-calls"), orjson.dumps(values))
        return len(values)

    @queue.task(name="explode")
    async def explode(n: int) -> int:
        if n == 2:
            raise Exploded(f"member {n} exploded")
        return n

    @queue.task(name="on_error")
    async def on_error(error: dict[str, Any]) -> None:
        await recorder.client.rpush(recorder.key("errors"), orjson.dumps(error))

    @queue.task(name="stepper", retries=1)
    async def stepper(gate: str, fail: bool) -> str:
        """Attempt 1 waits for gate ``{gate}:1`` then asks for a retry; attempt 2 waits for
        ``{gate}:2``, then fails for good (`fail`) or returns.
        """
        attempt = current_job().attempt
        await current_job().report_progress({"attempt": attempt, "waiting": True})
        if not await recorder.client.blpop([recorder.key(f"gate:{gate}:{attempt}")], GATE_WAIT):
            raise TimeoutError(f"gate {gate}:{attempt} was not opened")
        if attempt == 1:
            raise Retry(delay=STEP_RETRY_DELAY, reason="the test asked for a retry")
        if fail:
            raise Exploded(f"stepper {gate} failed on attempt {attempt}")
        return f"{gate} done"

    return App(queue, recorder, add, double, describe, square, collect, explode, on_error, stepper)


app = make_app(
    os.environ.get("AQUEUE_TEST_URL", DEFAULT_URL),
    os.environ.get("AQUEUE_TEST_PREFIX", "aqtest-apps"),
    os.environ.get("AQUEUE_TEST_REDIS_URL", DEFAULT_REDIS_URL),
)
queue = app.queue
