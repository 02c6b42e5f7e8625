"""`aqueue.contrib.fastapi`: the lifespan opens the queue and the dependency hands it over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from aqueue import TaskQueue
from aqueue.contrib.fastapi import AqueueDependency, aqueue_dependency, lifespan
from aqueue.exceptions import ConfigurationError


async def test_the_dependency_is_the_open_queue_of_the_lifespan() -> None:
    """Inside the lifespan the endpoint gets the queue, open, and can enqueue; the app's own
    lifespan runs inside it; after it the queue is closed."""
    queue = TaskQueue("memory://", prefix="t")
    events: list[str] = []

    @queue.task()
    async def hello(name: str) -> str:
        return name

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        events.append("own start")
        yield
        events.append("own end")

    app = FastAPI(lifespan=lifespan(queue, then=own))

    @app.post("/hello/{name}")
    async def endpoint(name: str, jobs: AqueueDependency) -> dict[str, object]:
        job = await jobs.enqueue(hello, name)
        return {"same": jobs is queue, "job_id": job.job_id}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/hello/ada")
    assert response.status_code == 200, response.text
    assert response.json()["same"] is True
    assert events == ["own start", "own end"]
    with pytest.raises(ConfigurationError, match="not open"):
        await queue.enqueue(hello, "late")


async def test_without_the_lifespan_the_dependency_says_so() -> None:
    """An app built without the lifespan fails the request with a message naming the fix."""
    app = FastAPI()

    @app.get("/")
    async def endpoint(jobs: AqueueDependency) -> None:
        raise AssertionError("not reached")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(ConfigurationError, match="lifespan"):
            await client.get("/")


def test_lifespan_refuses_what_is_not_a_task_queue() -> None:
    """A lifespan of something else fails when the app is built, not at the first request."""
    with pytest.raises(ConfigurationError, match="TaskQueue"):
        lifespan(object())  # type: ignore[arg-type]


async def test_tests_can_override_the_dependency() -> None:
    """``app.dependency_overrides[aqueue_dependency]`` hands endpoints another queue."""
    test_queue = TaskQueue("memory://", prefix="t")
    app = FastAPI()

    @app.get("/")
    async def endpoint(jobs: AqueueDependency) -> dict[str, bool]:
        return {"same": jobs is test_queue}

    app.dependency_overrides[aqueue_dependency] = lambda: test_queue
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/")
    assert response.json() == {"same": True}
