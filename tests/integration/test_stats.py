"""Issue 9: worker heartbeats on RabbitMQ, read by ``aqueue stats APP --json``.

Workers are spawned ``aqueue worker`` processes with a 0.5 s heartbeat interval
(``AQUEUE_HEARTBEAT_INTERVAL``, read by the worker and by ``aqueue stats``), so the drop-out
interval (3 x 0.5 s) is short; every wait is a `wait_for` on a condition, with a timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from tests.helpers.polling import wait_for
from tests.helpers.rabbit_node import free_ports
from tests.helpers.worker_process import (
    ROOT,
    WorkerProcess,
    apps_env,
    aqueue_command,
    subprocess_env,
)
from tests.helpers.workers import delete_topology

pytestmark = pytest.mark.integration

APP = "tests.integration.apps.jobs:queue"
INTERVAL = "0.5"


@pytest.fixture
async def env(amqp_url: str, prefix: str) -> AsyncIterator[dict[str, str]]:
    """The apps' environment for this test, with the short heartbeat interval; cleaned up after."""
    yield {**apps_env(amqp_url, prefix), "AQUEUE_HEARTBEAT_INTERVAL": INTERVAL}
    await delete_topology(amqp_url, prefix)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Two ``aqueue worker`` processes (concurrency 2 and 3), SIGKILLed after the test."""
    made = [
        WorkerProcess(APP, ("--concurrency", str(n)), env=env, log=tmp_path / f"w{n}.log")
        for n in (2, 3)
    ]
    for worker in made:
        worker.start()
    yield made
    for worker in made:
        worker.cleanup()


def stats_json(env: dict[str, str]) -> dict[str, Any]:
    """Run ``aqueue stats APP --json`` once; its parsed output."""
    done = subprocess.run(
        aqueue_command("stats", APP, "--json"),
        cwd=ROOT,
        env=subprocess_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_stats_lists_both_workers_and_their_queue_then_drops_a_killed_one(
    env: dict[str, str], workers: list[WorkerProcess]
) -> None:
    """Two live workers appear with their fields; a SIGKILLed one is gone after 3 intervals."""
    for worker in workers:
        await worker.wait_started()
    latest: dict[str, Any] = {}

    async def both_listed() -> bool:
        latest.update(await anyio.to_thread.run_sync(stats_json, env))
        return {w["pid"] for w in latest["workers"]} == {w.pid for w in workers}

    await wait_for(both_listed, timeout=20, what="both workers in aqueue stats", details=str)
    assert latest["version"] == 1
    by_pid = {w["pid"]: w for w in latest["workers"]}
    for worker, concurrency in zip(workers, (2, 3), strict=True):
        row = by_pid[worker.pid]
        assert (row["queues"], row["concurrency"], row["in_flight"]) == (
            ["default"],
            concurrency,
            0,
        )
        assert row["host"]
        assert row["worker_id"]
        assert 0 <= row["last_seen"] < 1.5
    [queue] = latest["queues"]
    assert (queue["queue"], queue["ready"], queue["unacked"], queue["consumers"]) == (
        "default",
        0,
        0,
        2,
    )
    assert queue["workers"] == 2
    assert queue["out_per_s"] == 0.0
    assert set(queue) >= {"in_per_s", "wait_p50", "wait_p95", "oldest_wait"}

    killed, alive = workers
    killed.send_signal(signal.SIGKILL)  # no stopping heartbeat: only the silence tells
    assert await killed.wait(timeout=10) == -signal.SIGKILL

    async def only_alive_listed() -> bool:
        latest.update(await anyio.to_thread.run_sync(stats_json, env))
        return [w["pid"] for w in latest["workers"]] == [alive.pid]

    await wait_for(only_alive_listed, timeout=15, what="the killed worker to drop out")
    assert latest["queues"][0]["consumers"] == 1


async def test_a_worker_stopped_gracefully_disappears_at_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A SIGTERMed worker's last heartbeat says stopping: the next stats run lists no worker."""
    worker = WorkerProcess(APP, (), env=env, log=tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_started()
        await wait_for(
            lambda: len(stats_json(env)["workers"]) == 1, timeout=20, what="the worker listed"
        )
        await worker.terminate()
        assert stats_json(env)["workers"] == []
    finally:
        worker.cleanup()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["tests.integration.apps.jobs"], "must look like", id="bad-app"),
        pytest.param([APP, "--interval", "0"], "'--interval'", id="interval-0"),
    ],
)
def test_bad_input_fails_before_connecting(args: list[str], message: str) -> None:
    """Bad stats arguments exit 2 at once, against a port where no broker listens."""
    [port] = free_ports(1)
    env = {"AQUEUE_TEST_URL": f"amqp://guest:guest@127.0.0.1:{port}/"}
    done = subprocess.run(
        aqueue_command("stats", *args),
        cwd=ROOT,
        env=subprocess_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stdout + done.stderr


async def test_watch_prints_one_json_object_per_refresh_and_ends_on_ctrl_c(
    env: dict[str, str], workers: list[WorkerProcess]
) -> None:
    """``stats --json --watch`` prints a fresh object each interval; SIGINT ends it with 0."""
    for worker in workers:
        await worker.wait_started()
    watcher = _start_watcher(env)
    try:
        assert watcher.stdout is not None
        views: list[dict[str, Any]] = []
        with anyio.fail_after(30):
            while len(views) < 2:
                line = await anyio.to_thread.run_sync(watcher.stdout.readline)
                assert line, "stats --watch ended early"
                views.append(json.loads(line))
        assert all(len(view["workers"]) == 2 for view in views)
        watcher.send_signal(signal.SIGINT)
        assert await anyio.to_thread.run_sync(lambda: watcher.wait(timeout=20)) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait()
        if watcher.stdout is not None:
            watcher.stdout.close()


def _start_watcher(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        aqueue_command("stats", APP, "--json", "--watch"),
        cwd=ROOT,
        env=subprocess_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
