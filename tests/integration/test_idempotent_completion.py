"""A job whose success is recorded but whose ack is lost is not run again.

The broker delivers the job again (the ack never arrived), as it must; the worker that takes
the redelivery finds the success in the result backend and acks it without running the task.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue import JobState, JobStatus, RedisResultBackend, TaskQueue, current_job
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.rabbitmqctl import close_connections
from tests.helpers.workers import delete_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class AckLosingBackend(RedisResultBackend):
    """Records a success, then closes the worker's connection from the broker's side.

    So the job's ack is lost after its success was recorded: the worst moment to die.
    """

    def __init__(self, url: str, *, prefix: str, worker_connection: str) -> None:
        super().__init__(url, prefix=prefix)
        self.worker_connection = worker_connection
        self.dropped = 0
        self._closing = False

    async def set_state(self, state: JobState, *, ttl: float) -> None:
        await super().set_state(state, ttl=ttl)
        # once only: the redelivery records its success again, maybe while the first close
        # is still running in its thread (rabbitmqctl takes seconds on a loaded machine)
        if state.status is JobStatus.SUCCEEDED and not self._closing:
            self._closing = True
            self.dropped = await anyio.to_thread.run_sync(close_connections, self.worker_connection)


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    yield
    await delete_topology(amqp_url, prefix)


async def test_recorded_success_whose_ack_was_lost_does_not_run_again(
    amqp_url: str, redis_url: str, prefix: str, cleanup: None
) -> None:
    """Success recorded, connection dropped before the ack: redelivered, acked, not rerun."""
    name = f"{prefix}-idem-{uuid.uuid4().hex[:6]}"
    backend = AckLosingBackend(redis_url, prefix=prefix, worker_connection=f"{name}-consumer")
    queue = TaskQueue(amqp_url, prefix=prefix, name=name, results=backend)
    runs: list[tuple[str, int]] = []

    @queue.task
    async def charge(order: int) -> int:
        runs.append((current_job().job_id, order))
        return order * 10

    async with queue.session() as session, running_worker(queue) as worker:
        job = await queue.enqueue(charge, 7)
        assert await job.result(timeout=30) == 70
        await wait_for(lambda: backend.dropped == 1, timeout=20, what="the ack to be lost")

        async def redelivery_settled() -> bool:
            names = session.names
            left = [
                await session.transport.message_count(names.work_queue("default")),
                await session.transport.message_count(names.quarantine_queue("default")),
            ]
            stats = worker.statistics()
            # the first delivery (ack lost), its redelivery, then nothing in flight
            return sum(left) == 0 and stats.received >= 2 and stats.in_flight == 0

        await wait_for(redelivery_settled, timeout=30, what="the redelivered job to be settled")
        assert await job.status() is JobStatus.SUCCEEDED
        # its recorded success says it cannot have crashed a worker: no quarantined copy
        assert worker.statistics().received == 2
    assert runs == [(job.job_id, 7)]
