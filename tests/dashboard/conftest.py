"""The dashboard's test app: one task on queue ``emails`` that fails while `broken` is set."""

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
