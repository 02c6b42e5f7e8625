"""Leases on the in-memory broker: a long job is acked early, runs once, and again only if
its worker dies. (Against RabbitMQ's real ``consumer_timeout``: tests/integration/
test_consumer_timeout.py.)"""

from __future__ import annotations

import logging

import anyio
import pytest

from aqueue import JobStatus, MemoryResultBackend, TaskQueue, Worker, WorkerSettings, current_job
from aqueue._client.session import Session
from aqueue._core.delays import delay_topology
from aqueue._results import Lease
from aqueue._worker.leases import warn_about_long_tasks
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for

LEASED = WorkerSettings(lease_after=0.05, lease_ttl=1.0)


async def _queues_empty(session: Session) -> bool:
    """Nothing ready in the work queue or in any delay level (lease copies included)."""
    names = session.names
    broker_queues = [names.work_queue("default"), names.quarantine_queue("default")]
    broker_queues += [spec.name for spec in delay_topology(names, session.queue_settings).queues]
    counts = [await session.transport.message_count(name) for name in broker_queues]
    return sum(counts) == 0


async def test_long_job_is_acked_under_a_lease_and_runs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past lease_after, the job is acked under a lease; its copy is dropped once it ended."""
    backend = MemoryResultBackend()
    queue = TaskQueue("memory://", results=backend)
    runs: list[int] = []
    release = anyio.Event()

    @queue.task
    async def report() -> str:
        runs.append(current_job().attempt)
        await release.wait()
        return "done"

    caplog.set_level(logging.INFO, logger="aqueue.worker")
    async with queue.session() as session, running_worker(queue, LEASED) as worker:
        job = await queue.enqueue(report)
        await wait_for(lambda: "acked under lease" in caplog.text, timeout=5, what="the lease")
        lease = await backend.lease(job.job_id)
        assert lease is not None
        assert not lease.ended
        release.set()
        assert await job.result(timeout=5) == "done"

        async def ended() -> bool:  # once the job was settled, after its result
            return await backend.lease(job.job_id) == Lease(lease.owner, ended=True)

        await wait_for(ended, timeout=5, what="the lease to end")
        # the lease copy comes back after lease_ttl, finds the lease ended, and is dropped
        await wait_for(lambda: _queues_empty(session), timeout=10, what="the lease copy to go")
        assert worker.statistics().in_flight == 0
    assert runs == [1]


async def test_leased_job_of_a_dead_worker_runs_again_once() -> None:
    """A worker that dies under a lease stops renewing it: the copy runs the job once more."""
    backend = MemoryResultBackend()
    queue = TaskQueue("memory://", results=backend)
    runs: list[tuple[int, bool]] = []

    @queue.task
    async def report() -> str:
        runs.append((current_job().attempt, current_job().redelivered))
        if len(runs) == 1:
            await anyio.sleep_forever()  # until its worker dies
        return "second run"

    async with queue:
        job = await queue.enqueue(report)
        first = Worker(queue, LEASED)
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)

            async def leased_now() -> bool:
                lease = await backend.lease(job.job_id)
                return lease is not None

            await wait_for(leased_now, timeout=5, what="the first run's lease")
            tg.cancel_scope.cancel()  # the worker dies: no settlement, no renewal
        async with running_worker(queue, LEASED):
            assert await job.result(timeout=10) == "second run"
        assert await job.status() is JobStatus.SUCCEEDED
    assert runs == [(1, False), (2, True)]


def test_lease_settings_are_checked() -> None:
    """Bad lease settings fail at construction, with the setting's name."""
    for bad in (0, -1, float("inf"), "10"):
        with pytest.raises(ConfigurationError, match="lease_after"):
            WorkerSettings(lease_after=bad)  # type: ignore[arg-type]
    for bad in (0.5, float("nan"), 1e12):
        with pytest.raises(ConfigurationError, match="lease_ttl"):
            WorkerSettings(lease_ttl=bad)
    assert WorkerSettings(lease_after=None).lease_after is None


def test_tasks_longer_than_the_broker_allows_are_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without leases, a task whose timeout exceeds RabbitMQ's default limit is named."""
    queue = TaskQueue("memory://")

    @queue.task(timeout=3600)
    async def render() -> None: ...

    @queue.task(timeout=60)
    async def quick() -> None: ...

    warn_about_long_tasks(queue.tasks, leases=False)
    assert "render" in caplog.text
    assert "consumer_timeout" in caplog.text
    assert "quick" not in caplog.text
    caplog.clear()
    warn_about_long_tasks(queue.tasks, leases=True)
    assert caplog.text == ""
