"""The FastAPI example (``examples/fastapi_app.py``) end to end: its lifespan opens the
TaskQueue on the shared RabbitMQ and Redis, and ``aqueue worker examples.tasks:queue`` runs in
a subprocess. Requests go through ``httpx.ASGITransport``, in this process.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from aqueue import JobStatus, RedisResultBackend, TaskQueue
from tests.helpers.polling import wait_for
from tests.helpers.worker_process import WorkerProcess
from tests.helpers.workers import delete_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TASKS_APP = "examples.tasks:queue"


@pytest.fixture
def env(amqp_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The example's configuration: this test's broker, Redis and prefix."""
    return {"AQUEUE_URL": amqp_url, "AQUEUE_REDIS_URL": redis_url, "AQUEUE_PREFIX": prefix}


@pytest.fixture
def example(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``examples.fastapi_app`` imported afresh with `env` (it reads it at import)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for module in ("examples.fastapi_app", "examples.tasks"):
        sys.modules.pop(module, None)
    yield importlib.import_module("examples.fastapi_app")
    for module in ("examples.fastapi_app", "examples.tasks"):
        sys.modules.pop(module, None)


@pytest.fixture
async def client(
    example: ModuleType, amqp_url: str, prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app, inside its lifespan; cleans the broker and Redis after."""
    app = example.app
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
                yield http
            queue: TaskQueue = example.queue
            async with queue.session() as session:  # the lifespan's: the queue is open
                backend = session.states.backend
            assert isinstance(backend, RedisResultBackend)
            keys = [key async for key in backend.client.scan_iter(f"{prefix}:*")]
            if keys:
                await backend.client.delete(*keys)
    finally:
        await delete_topology(amqp_url, prefix, queues=("default", "reports"))


@pytest.fixture
async def worker(env: dict[str, str], tmp_path: Path) -> AsyncIterator[WorkerProcess]:
    """``aqueue worker examples.tasks:queue``, consuming; stopped with SIGTERM after."""
    process = WorkerProcess(
        TASKS_APP, ["--concurrency", "20"], env=env, log=tmp_path / "worker.log"
    )
    process.start()
    try:
        await process.wait_started(timeout=30)
        yield process
        await process.terminate()
    finally:
        process.cleanup()


async def get_job(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await http.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_final(
    http: httpx.AsyncClient, job_id: str, seen: list[dict[str, Any]]
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until the job is final; every answer is appended to `seen`."""

    async def final() -> bool:
        seen.append(await get_job(http, job_id))
        return JobStatus(seen[-1]["status"]).is_final

    await wait_for(final, timeout=30, what=f"job {job_id} to finish", interval=0.05)
    return seen[-1]


async def test_post_a_job_then_follow_it_to_its_result(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    """``POST /jobs`` enqueues a report; ``GET /jobs/{id}`` shows it queued or running with
    its progress, then succeeded with its result.
    """
    response = await client.post("/jobs", json={"name": "q3", "steps": 4, "seconds_per_step": 0.1})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["url"] == f"/jobs/{accepted['job_id']}"

    seen: list[dict[str, Any]] = []
    done = await wait_final(client, accepted["job_id"], seen)
    assert done["status"] == "succeeded"
    assert done["result"] == {"name": "q3", "steps": 4, "url": "/reports/q3.pdf"}
    assert done["error"] is None
    progress = [answer["progress"] for answer in seen if answer["status"] == "running"]
    assert {"step": 2, "of": 4} in progress or {"step": 3, "of": 4} in progress, seen
    assert seen[0]["status"] in ("queued", "running")


async def test_a_failed_job_shows_its_error(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    """A job that raises shows ``failed`` with the remote type, message and traceback."""
    response = await client.post(
        "/jobs", json={"name": "broken", "steps": 1, "seconds_per_step": 0, "fail": True}
    )
    assert response.status_code == 202, response.text
    done = await wait_final(client, response.json()["job_id"], [])
    assert done["status"] == "failed"
    assert done["result"] is None
    error = done["error"]
    assert error["type"] == "examples.tasks.ReportFailed"
    assert error["message"] == "report 'broken' failed on purpose"
    assert "raise ReportFailed" in error["traceback"]


async def test_a_workflow_returns_the_chords_result(
    client: httpx.AsyncClient, worker: WorkerProcess
) -> None:
    """``POST /workflows`` starts a chord; its id shows pending, then the callback's result."""
    texts = ["one", "two words", "and three words", "", "a b c d"]
    response = await client.post("/workflows", json={"texts": texts})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    seen: list[dict[str, Any]] = []
    done = await wait_final(client, job_id, seen)
    assert done["status"] == "succeeded", done
    assert done["result"] == {"counts": [1, 2, 3, 0, 4], "total": 10}
    assert seen[0]["status"] in ("pending", "queued", "running", "succeeded")


async def test_unknown_job_is_404_and_bad_input_is_422(client: httpx.AsyncClient) -> None:
    """An id nobody enqueued is a 404; a request the models refuse is a 422 (no job sent)."""
    response = await client.get("/jobs/0123456789abcdef0123456789abcdef")
    assert response.status_code == 404
    assert "no job" in response.json()["detail"]
    assert (await client.post("/jobs", json={"name": "", "steps": 0})).status_code == 422
    assert (await client.post("/workflows", json={"texts": []})).status_code == 422
