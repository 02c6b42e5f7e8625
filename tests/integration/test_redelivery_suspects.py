"""A delivery that comes back unacked is quarantined only if it may have crashed a worker.

With a result backend the worker can tell: an attempt that never recorded ``running`` never
ran. A quorum queue returns, marked redelivered, the messages it had assigned to a consumer
that is cancelled (every worker stopping does that), and a channel closed with deliveries not
yet started returns those: such jobs run as they are, not alone in the quarantine as the
neighbours of a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue import JobStatus, RedisResultBackend, TaskQueue, current_job
from aqueue._results.base import JobState
from aqueue._transport.amqp import AmqpTransport
from aqueue.testing import running_worker
from tests.helpers.workers import WAIT, delete_topology

pytestmark = pytest.mark.integration


@pytest.fixture
def backend(redis_url: str, prefix: str) -> RedisResultBackend:
    """A result backend of this test's own (its keys under the test's prefix)."""
    return RedisResultBackend(redis_url, prefix=prefix)


@pytest.fixture
async def queue(
    amqp_url: str, prefix: str, backend: RedisResultBackend
) -> AsyncIterator[TaskQueue]:
    """This test's TaskQueue with the backend; its topology is deleted afterwards."""
    yield TaskQueue(amqp_url, prefix=prefix, name=prefix, results=backend)
    await delete_topology(amqp_url, prefix)


async def return_unacked(amqp_url: str, queue: str) -> None:
    """Take the next message of broker queue `queue` on a connection of its own, and close that
    connection without settling it: RabbitMQ requeues it, marked redelivered."""
    transport = AmqpTransport([amqp_url], connection_name="aqueue-test-taker")
    await transport.connect(timeout=10)
    try:
        assert await transport.get(queue) is not None
    finally:
        await transport.aclose()


async def run_returned_job(
    queue: TaskQueue, amqp_url: str, backend: RedisResultBackend, state: JobStatus | None
) -> tuple[int, bool]:
    """Enqueue a job; record `state` for its first attempt (None: leave the enqueue's
    ``queued``); return it unacked; run a worker: the (attempt, redelivered) it ran as."""
    runs: list[tuple[int, bool]] = []

    @queue.task(name="note")
    async def note() -> None:
        job = current_job()
        runs.append((job.attempt, job.redelivered))

    async with queue.session() as session:
        job = await queue.enqueue(note)
        if state is not None:
            await backend.set_state(JobState(job.job_id, state, task="note", attempt=1), ttl=60)
        await return_unacked(amqp_url, session.names.work_queue("default"))
        async with running_worker(queue) as worker:
            with anyio.fail_after(WAIT):
                await worker.wait_until(lambda s: s.succeeded == 1)
    [ran] = runs
    return ran


async def test_a_returned_job_that_never_started_runs_as_it_is(
    queue: TaskQueue, amqp_url: str, backend: RedisResultBackend
) -> None:
    """Its state is still ``queued``: it runs as attempt 1 (redelivered), in the work queue's
    runners, not as the quarantine's attempt 2."""
    assert await run_returned_job(queue, amqp_url, backend, None) == (1, True)


async def test_a_returned_job_that_was_running_is_quarantined(
    queue: TaskQueue, amqp_url: str, backend: RedisResultBackend
) -> None:
    """Its first attempt recorded ``running`` (its worker may have died of it): it runs alone,
    through the quarantine, as attempt 2."""
    attempt, _ = await run_returned_job(queue, amqp_url, backend, JobStatus.RUNNING)
    assert attempt == 2
