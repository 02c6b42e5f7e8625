"""Cancellation on RabbitMQ: the same checks as on the in-memory broker, and ``aqueue cancel``."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from aqueue.testing import running_worker
from tests.helpers import cancelling
from tests.helpers.polling import read_lines, wait_for
from tests.helpers.worker_process import ROOT, apps_env, aqueue_command, subprocess_env
from tests.helpers.workers import delete_topology, wait_until
from tests.integration.apps import jobs

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    yield
    await delete_topology(amqp_url, prefix)


async def test_queued_and_delayed_jobs_never_run(amqp_url: str, prefix: str, cleanup: None) -> None:
    """A cancelled queued job never runs; a cancelled delayed job never runs (see
    `check_queued_and_delayed_jobs_never_run`)."""
    await cancelling.check_queued_and_delayed_jobs_never_run(amqp_url, prefix)


async def test_a_running_worker_honours_notices_without_a_backend(
    amqp_url: str, prefix: str, cleanup: None
) -> None:
    """See `check_a_running_worker_honours_notices_without_a_backend`."""
    await cancelling.check_a_running_worker_honours_notices_without_a_backend(amqp_url, prefix)


async def test_running_jobs_stop_and_read_cancelled(
    amqp_url: str, prefix: str, cleanup: None
) -> None:
    """A running async job stops within 1 s of cancel() and its state reads cancelled (see
    `check_running_jobs_stop_and_read_cancelled`)."""
    await cancelling.check_running_jobs_stop_and_read_cancelled(amqp_url, prefix)


async def test_cancelling_a_chord_prevents_its_callback(
    amqp_url: str, prefix: str, cleanup: None
) -> None:
    """See `check_cancelling_a_chord_prevents_its_callback`."""
    await cancelling.check_cancelling_a_chord_prevents_its_callback(amqp_url, prefix)


async def test_cancelling_a_chain_stops_it_and_tells_its_error_callback(
    amqp_url: str, prefix: str, cleanup: None
) -> None:
    """See `check_cancelling_a_chain_stops_it_and_tells_its_error_callback`."""
    await cancelling.check_cancelling_a_chain_stops_it_and_tells_its_error_callback(
        amqp_url, prefix
    )


async def test_cancel_command_stops_a_running_job(
    amqp_url: str, prefix: str, tmp_path: Path, cleanup: None
) -> None:
    """``aqueue cancel APP JOB_ID`` reaches a running worker: its job stops, never finishes."""
    out = tmp_path / "records"
    app = jobs.make_app(amqp_url, prefix, out=out)
    async with app.queue, running_worker(app.queue) as worker:
        job = await app.queue.enqueue(app.slow, 30)
        await wait_for(lambda: bool(read_lines(out)), timeout=10, what="the job's start")
        result = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                aqueue_command("cancel", "tests.integration.apps.jobs:queue", job.job_id),
                cwd=ROOT,
                env=subprocess_env(apps_env(amqp_url, prefix)),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
        assert result.returncode == 0, result.stderr
        await wait_until(worker, lambda s: s.cancelled == 1, timeout=10)
    assert read_lines(out) == [f"start {job.job_id}"]
