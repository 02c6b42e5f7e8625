"""Jobs longer than RabbitMQ's ``consumer_timeout``, on a private node whose limit is 10 s.

Without a lease the broker closes the consumer's channel under a long job and delivers it
again; the worker must cancel its orphaned run (it cannot settle) and say so loudly. With a
result backend the job is acked early under a lease: it runs once while its worker lives, and
once more only if that worker dies.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import JobStatus, WorkerSettings
from aqueue.testing import running_worker
from tests.helpers.polling import read_lines, wait_for
from tests.helpers.rabbit_node import RabbitNode
from tests.helpers.worker_process import WorkerProcess, apps_env
from tests.integration.apps import long

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CONSUMER_TIMEOUT_MS = 10_000
JOB_SECONDS = 25.0
LEASE_AFTER, LEASE_TTL = 2.0, 5.0
LONG_APP = "tests.integration.apps.long:queue"


@pytest.fixture(scope="module")
def short_timeout_node(rabbit_node_support: None) -> Iterator[RabbitNode]:
    """A private node that closes a channel whose delivery stays unacked for 10 s.

    RabbitMQ checks the limit on each channel's tick, once a minute by default: a tick of 1 s
    (for channels opened after it is set) makes the limit bite on time.
    """
    node = RabbitNode(config=[f"consumer_timeout = {CONSUMER_TIMEOUT_MS}"])
    try:
        node.start()
        node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
        yield node
    finally:
        node.cleanup()


def _events(path: Path, event: str) -> list[str]:
    return [line.split()[1] for line in read_lines(path) if line.split()[0] == event]


async def test_long_job_without_lease_is_cancelled_when_the_broker_times_it_out(
    short_timeout_node: RabbitNode,
    prefix: str,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No lease: the broker's timeout cancels the run (it cannot settle); the job runs again.

    The control for the test below: it shows the node really enforces its limit.
    """
    out = tmp_path / "records"
    queue = long.make_queue(short_timeout_node.url, prefix, redis_url, out=out)
    caplog.set_level(logging.WARNING)
    async with queue, running_worker(queue, WorkerSettings(lease_after=None)):
        job = await queue.enqueue(queue.tasks["render"], JOB_SECONDS)
        await wait_for(
            lambda: len(_events(out, "start")) == 2,
            timeout=60,
            what="the job to be delivered again after the broker's timeout",
        )
        assert "consumer_timeout" in caplog.text
        assert job.job_id in caplog.text  # the loud line names the job
        assert "Timeout value used: 10000 ms" in caplog.text
        # the first run was cancelled when its channel closed: it never finished
        assert _events(out, "finish") == []


async def test_long_job_runs_once_under_a_lease(
    short_timeout_node: RabbitNode,
    prefix: str,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 25 s job with a 10 s consumer_timeout: acked under a lease, it runs exactly once."""
    out = tmp_path / "records"
    queue = long.make_queue(short_timeout_node.url, prefix, redis_url, out=out)
    caplog.set_level(logging.INFO, logger="aqueue")
    settings = WorkerSettings(lease_after=LEASE_AFTER, lease_ttl=LEASE_TTL)
    async with queue, running_worker(queue, settings):
        job = await queue.enqueue(queue.tasks["render"], JOB_SECONDS)
        assert await job.result(timeout=JOB_SECONDS + 30) == "rendered"
        # its last lease copy comes back within lease_ttl and is dropped, not run
        await wait_for(
            lambda: "lease copy dropped" in caplog.text,
            timeout=LEASE_TTL * 4,
            what="the last lease copy to be dropped",
        )
    assert _events(out, "start") == [job.job_id]
    assert _events(out, "finish") == [job.job_id]
    assert "acked under lease" in caplog.text
    assert "consumer_timeout" not in caplog.text


async def test_leased_job_runs_again_once_when_its_worker_is_killed(
    short_timeout_node: RabbitNode, prefix: str, redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL the worker of a leased job: the lease expires and the job runs once more."""
    out = tmp_path / "records"
    queue = long.make_queue(short_timeout_node.url, prefix, redis_url, out=out)
    env = {
        **apps_env(short_timeout_node.url, prefix, out),
        "AQUEUE_TEST_REDIS_URL": redis_url,
    }
    args = ("--lease-after", str(LEASE_AFTER), "--lease-ttl", str(LEASE_TTL))
    first = WorkerProcess(LONG_APP, args, env=env, log=tmp_path / "first.log")
    second = WorkerProcess(LONG_APP, args, env=env, log=tmp_path / "second.log")
    try:
        async with queue:
            job = await queue.enqueue(queue.tasks["render"], JOB_SECONDS)
            first.start()
            await first.wait_output("acked under lease", timeout=30)
            first.send_signal(signal.SIGKILL)
            assert await first.wait(timeout=10) == -signal.SIGKILL
            second.start()
            assert await job.result(timeout=JOB_SECONDS + 60) == "rendered"
            assert await job.status() is JobStatus.SUCCEEDED
            # the second run's own lease copy is dropped once it comes back: no third run
            await second.wait_output("lease copy dropped", timeout=LEASE_TTL * 4)
            await second.terminate(timeout=20)
    finally:
        first.cleanup()
        second.cleanup()
    assert _events(out, "start") == [job.job_id, job.job_id]
    assert _events(out, "finish") == [job.job_id]
    assert "its lease expired" in second.output()
