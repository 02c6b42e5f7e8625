"""The dashboard's test apps: one task on queue ``emails`` that fails while `broken` is set;
one on ``signups`` that fails twice, then succeeds (`Flaky`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from aqueue import RedisResultBackend, Task, TaskQueue, WorkerSettings
from tests.helpers.workers import delete_topology

#: Short heartbeats, so the live screens see a worker within a second.
WORKER = WorkerSettings(concurrency=10, grace=5, heartbeat_interval=0.2)


@dataclass
class Mail:
    """The app: `send` raises while `broken`, and records the addresses it sent to."""

    queue: TaskQueue
    send: Task[[str, str], str]
    broken: bool = False
    sent: list[str] = field(default_factory=list)


@pytest.fixture
async def mail(amqp_url: str, redis_url: str, prefix: str) -> AsyncIterator[Mail]:
    """The app on this test's prefix, with a Redis result backend; its topology deleted after."""
    queue = TaskQueue(
        amqp_url,
        prefix=prefix,
        name=f"{prefix}-dashboard",
        results=RedisResultBackend(redis_url, prefix=prefix),
    )
    app = Mail(queue, None)  # type: ignore[arg-type]

    @queue.task(queue="emails", name="send", redact=("password",))
    async def send(to: str, password: str) -> str:
        if app.broken:
            raise ValueError(f"cannot send to {to}")
        app.sent.append(to)
        return f"sent to {to}"

    app.send = send
    yield app
    await delete_topology(amqp_url, prefix, ["emails"])


#: The password `Flaky.sign_up` is called with in the tests: never to be stored.
SECRET = "hunter2-do-not-store"  # noqa: S105 - the test's own


@dataclass
class Flaky:
    """An app whose `sign_up` fails its first two attempts, then returns."""

    queue: TaskQueue
    backend: RedisResultBackend
    sign_up: Task[[str, str], str]
    runs: list[int] = field(default_factory=list)


@pytest.fixture
async def flaky(amqp_url: str, redis_url: str, prefix: str) -> AsyncIterator[Flaky]:
    backend = RedisResultBackend(redis_url, prefix=prefix)
    queue = TaskQueue(amqp_url, prefix=prefix, name=f"{prefix}-jobs", results=backend)
    app = Flaky(queue, backend, None)  # type: ignore[arg-type]

    @queue.task(
        queue="signups", name="sign_up", retries=2, backoff=0.1, jitter=0, redact=("password",)
    )
    async def sign_up(email: str, password: str) -> str:
        app.runs.append(len(app.runs) + 1)
        if len(app.runs) <= 2:
            raise ValueError(f"mail server <b>down</b> (run {len(app.runs)})")
        return f"welcome {email}"

    app.sign_up = sign_up
    yield app
    await delete_topology(amqp_url, prefix, ["signups"])
