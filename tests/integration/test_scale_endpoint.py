"""Issue 9, point 6: ``GET /scale`` on the port of ``aqueue worker --metrics-port``, against
a real RabbitMQ, while a backlog waits."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import anyio.to_thread
import pytest

from tests.helpers.polling import wait_for
from tests.helpers.worker_process import WorkerProcess, apps_env
from tests.helpers.workers import delete_topology
from tests.integration.apps import jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def get_json(url: str) -> tuple[int, dict[str, object]]:
    """GET `url`: its status and JSON body (for error statuses too)."""

    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, body = await anyio.to_thread.run_sync(get)
    return status, json.loads(body)


async def test_scale_reports_a_backlog_and_suggests_more_workers(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """With 2 runners busy on 5 s jobs and 20 more ready, ``/scale`` names the worker, shows
    the backlog (ready, busy ratio 1, a rising oldest wait) and, for the worker's
    --target-wait of 0.2 s, suggests more than its one worker; for a target of 1,000 s it
    suggests one; a target that is not a number is a 400."""
    out = tmp_path / "records"
    app = jobs.make_app(amqp_url, prefix, out=out)
    worker = WorkerProcess(
        "tests.integration.apps.jobs:queue",
        [
            "--autoscale",
            "2:2",  # a fixed concurrency of 2, with a --target-wait for /scale
            "--target-wait",
            "0.2",
            "--grace",
            "0",
            "--metrics-port",
            "0",
            "--metrics-address",
            "127.0.0.1",
        ],
        env=apps_env(amqp_url, prefix, out),
        log=tmp_path / "worker.log",
    )
    try:
        # the backlog first: the worker's first ready read (at start) sees it
        async with app.queue:
            batch = await app.queue.enqueue_many(app.slow, [(5.0,)] * 22)
            assert batch.ok
        worker.start()
        await worker.wait_started()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/scale", worker.output())
        assert match is not None, worker.output_tail()
        url = f"http://127.0.0.1:{match[1]}/scale"
        document: dict[str, object] = {}

        async def backlog_seen() -> bool:
            nonlocal document
            status, document = await get_json(url)
            queue = document["queues"].get("default")  # type: ignore[attr-defined]
            return (
                status == 200
                and queue is not None
                and (queue["ready"] or 0) > 0
                and queue["busy_ratio"] == 1.0
                and queue["oldest_wait"] > 0.2
            )

        await wait_for(
            backlog_seen, timeout=30, what="the backlog on /scale", details=lambda: str(document)
        )
        figures = document["queues"]["default"]  # type: ignore[index]
        assert figures["concurrency"] == 2
        assert figures["workers"] == 1  # this worker's consumer, from the passive declare
        assert document["target_wait"] == 0.2
        assert figures["suggested_workers"] >= 2
        assert document["worker"] == {
            "id": document["worker"]["id"],  # type: ignore[index]
            "host": socket.gethostname(),
            "pid": worker.pid,
        }
        assert str(document["worker"]["id"]).startswith(f"{socket.gethostname()}:{worker.pid}:")

        status, relaxed = await get_json(f"{url}?target_wait=1000")
        assert status == 200
        assert relaxed["target_wait"] == 1000.0
        assert relaxed["queues"]["default"]["suggested_workers"] == 1  # type: ignore[index]

        status, refused = await get_json(f"{url}?target_wait=soon")
        assert status == 400
        assert "target_wait" in str(refused["error"])
        await worker.terminate()
    finally:
        worker.cleanup()
        await delete_topology(amqp_url, prefix)
