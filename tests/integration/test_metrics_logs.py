"""Issue 5: the Prometheus endpoint after a known run, ``aqueue worker --metrics-port`` and
``--log-format json`` on a worker subprocess, and the extras the CLI asks for by name."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aqueue import TaskQueue, WorkerSettings
from aqueue._observability.prometheus import PrometheusMetrics, serve_metrics
from aqueue.testing import running_worker
from tests.helpers.jobs import publish_job
from tests.helpers.polling import wait_for
from tests.helpers.rabbit_node import free_ports
from tests.helpers.worker_process import (
    ROOT,
    WorkerProcess,
    apps_env,
    aqueue_command,
    subprocess_env,
)
from tests.helpers.workers import delete_topology, wait_until
from tests.integration.apps import jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> Samples:
    """GET a Prometheus endpoint; every sample by (name, sorted labels)."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a local URL
            body: bytes = response.read()
        return body.decode()

    text = await anyio.to_thread.run_sync(get)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, task: str, **labels: str) -> float:
    """One sample of a task on the default queue (0 when absent)."""
    key = (name, tuple(sorted({"task": task, "queue": "default", **labels}.items())))
    return samples.get(key, 0.0)


DELAY = 2.0


async def test_the_metrics_endpoint_after_a_known_run(amqp_url: str, prefix: str) -> None:
    """5 jobs succeed, 2 fail for good, 1 fails once and is retried, 1 waits 2 s in a delay:
    the counters say so per task, and the wait histogram saw every start."""
    registry = CollectorRegistry()
    queue = TaskQueue(
        amqp_url,
        prefix=prefix,
        name=f"{prefix}-metrics",
        instrumentation=[PrometheusMetrics(registry)],
    )
    attempts = {"flaky": 0}

    @queue.task(name="ok")
    async def ok() -> None:
        await anyio.sleep(0.01)

    @queue.task(name="bad", retries=0)
    async def bad() -> None:
        raise ValueError("bad input")

    @queue.task(name="flaky", retries=2, backoff=0.05, jitter=0)
    async def flaky() -> None:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise ConnectionError("once")

    server = serve_metrics(0, "127.0.0.1", registry)
    host, port = server.address
    try:
        # the worker is started first: the waits are the queue's alone
        async with queue, running_worker(queue, WorkerSettings(concurrency=10)) as worker:
            await queue.enqueue_many(ok, [()] * 5)
            await queue.enqueue_many(bad, [()] * 2)
            await queue.enqueue(flaky)
            await queue.enqueue_in(DELAY, ok)
            await wait_until(
                worker, lambda s: s.succeeded == 7 and s.dead_lettered == 2, timeout=30
            )
            samples = await scrape(f"http://{host}:{port}/metrics")
    finally:
        server.close()
        await delete_topology(amqp_url, prefix)

    expected = {
        ("ok", "aqueue_jobs_started_total"): 6,
        ("ok", "aqueue_jobs_succeeded_total"): 6,
        ("ok", "aqueue_jobs_failed_total"): 0,
        ("bad", "aqueue_jobs_started_total"): 2,
        ("bad", "aqueue_jobs_succeeded_total"): 0,
        ("bad", "aqueue_jobs_failed_total"): 2,
        ("bad", "aqueue_jobs_dead_lettered_total"): 2,
        ("bad", "aqueue_jobs_retried_total"): 0,
        ("flaky", "aqueue_jobs_started_total"): 2,
        ("flaky", "aqueue_jobs_failed_total"): 1,
        ("flaky", "aqueue_jobs_retried_total"): 1,
        ("flaky", "aqueue_jobs_succeeded_total"): 1,
        ("flaky", "aqueue_jobs_dead_lettered_total"): 0,
    }
    found = {(task, name): value(samples, name, task) for task, name in expected}
    assert found == expected
    for task, started in (("ok", 6), ("bad", 2), ("flaky", 2)):
        assert value(samples, "aqueue_job_queue_wait_seconds_count", task) == started
        assert value(samples, "aqueue_job_duration_seconds_count", task) == started
        assert value(samples, "aqueue_jobs_in_flight", task) == 0
    # the delayed job's wait counts from its due time, not from its enqueue DELAY earlier: the
    # six waits together stay under it (a delay long enough for a loaded machine's waits)
    assert value(samples, "aqueue_job_queue_wait_seconds_sum", "ok") < DELAY
    assert value(samples, "aqueue_job_queue_wait_seconds_bucket", "ok", le="+Inf") == 6
    assert value(samples, "aqueue_job_duration_seconds_bucket", "ok", le="0.005") == 0
    assert value(samples, "aqueue_job_duration_seconds_sum", "ok") >= 0.01 * 6


async def test_worker_metrics_port_and_json_logs(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """``--metrics-port`` serves the worker's counts; ``--log-format json`` writes one object
    per line, and the line about a job it could not run names the job."""
    out = tmp_path / "records"
    app = jobs.make_app(amqp_url, prefix, out=out)
    worker = WorkerProcess(
        "tests.integration.apps.jobs:queue",
        ["--metrics-port", "0", "--metrics-address", "127.0.0.1", "--log-format", "json"],
        env=apps_env(amqp_url, prefix, out),
        log=tmp_path / "worker.log",
    )
    try:
        worker.start()
        await worker.wait_started()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", worker.output())
        assert match is not None, worker.output_tail()
        async with app.queue.session() as session:
            await app.queue.enqueue_many(app.done, [()] * 3)
            ghost = await publish_job(session, "ghost")

        async def counted() -> bool:
            samples = await scrape(f"http://127.0.0.1:{match[1]}/metrics")
            return (
                value(samples, "aqueue_jobs_succeeded_total", "done") == 3
                and value(samples, "aqueue_jobs_dead_lettered_total", "ghost") == 1
            )

        await wait_for(counted, timeout=30, what="the counts", details=worker.output_tail)
        await worker.terminate()
    finally:
        worker.cleanup()
        await delete_topology(amqp_url, prefix)
    entries = [json.loads(line) for line in worker.output().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    [dead] = [e for e in entries if "dead-lettered" in e["message"]]
    assert dead["level"] == "WARNING"
    assert (dead["job_id"], dead["task"], dead["attempt"], dead["queue"]) == (
        ghost.message_id,
        "ghost",
        1,
        "default",
    )


def _hide(directory: Path, *packages: str) -> None:
    """Make importing `packages` fail from `directory` (put first on PYTHONPATH)."""
    for package in packages:
        path = directory.joinpath(*package.split("."))
        path.mkdir(parents=True)
        message = f"No module named {package!r}"
        (path / "__init__.py").write_text(f"raise ImportError({message!r})\n")


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        pytest.param(["--otel"], "otel", id="otel"),
        pytest.param(["--metrics-port", "9999"], "metrics", id="metrics"),
    ],
)
def test_an_option_without_its_extra_exits_2_before_connecting(
    tmp_path: Path, args: list[str], extra: str
) -> None:
    """Without the SDK (or prometheus_client) the worker names the extra and exits 2 at once,
    though its broker would take 30 s to time out."""
    _hide(tmp_path, "opentelemetry.sdk", "prometheus_client")
    [port] = free_ports(1)
    env = subprocess_env(
        {
            "PYTHONPATH": str(tmp_path),
            "AQUEUE_TEST_URL": f"amqp://guest:guest@127.0.0.1:{port}/",
            "AQUEUE_TEST_CONNECT_TIMEOUT": "30",
        }
    )
    began = time.monotonic()
    done = subprocess.run(
        aqueue_command("worker", "tests.integration.apps.jobs:queue", *args),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert f'pip install "aqueue-rabbitmq[{extra}]"' in output
    assert time.monotonic() - began < 20
