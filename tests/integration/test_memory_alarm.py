"""A memory alarm longer than ``publish_timeout`` while jobs fail: no job runs extra times.

Under an alarm RabbitMQ blocks the connections that publish: a worker's retry copies and
dead letters are written but not confirmed until the alarm clears. Giving up on the confirm
and requeueing the job would run it again and store the copy too, once per timeout.
"""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from aqueue import TaskQueue, WorkerSettings, current_job
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.rabbit_node import RabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(180)]

JOBS = 5
RETRIES = 3
ALARM_SECONDS = 20.0
"""How long the fault lasts: four times ``publish_timeout``, twice ``publish_deadline``."""


async def test_failing_jobs_run_no_more_than_their_retries_allow_under_a_memory_alarm(
    rabbit_node: RabbitNode, prefix: str
) -> None:
    """5 failing jobs, retries=3, a 20 s alarm: each runs exactly 4 times, 5 dead letters."""
    queue = TaskQueue(rabbit_node.url, prefix=prefix, publish_timeout=5, publish_deadline=10)
    runs: Counter[str] = Counter()

    @queue.task(retries=RETRIES, backoff=0.2, max_backoff=0.5)
    async def flaky(n: int) -> None:
        runs[current_job().job_id] += 1
        raise RuntimeError(f"job {n} fails every time")

    async with queue.session() as session:
        batch = await queue.enqueue_many(flaky, [(n,) for n in range(JOBS)])
        assert batch.ok
        async with running_worker(queue, WorkerSettings(concurrency=10)) as worker:
            await wait_for(lambda: len(runs) == JOBS, timeout=30, what="every job's first run")
            await anyio.to_thread.run_sync(rabbit_node.set_memory_alarm, True)
            await anyio.sleep(ALARM_SECONDS)  # the fault itself lasts this long
            await anyio.to_thread.run_sync(rabbit_node.set_memory_alarm, False)

            dead_letters = session.names.dead_letter_queue("default")

            async def all_dead() -> bool:
                return await session.transport.message_count(dead_letters) >= JOBS

            await wait_for(all_dead, timeout=60, what="every job to be dead-lettered")
            await wait_for(
                lambda: worker.statistics().in_flight == 0, timeout=30, what="an idle worker"
            )
            assert worker.statistics().dead_lettered == JOBS
        assert await session.transport.message_count(dead_letters) == JOBS
        assert await session.transport.message_count(session.names.work_queue("default")) == 0
    assert sorted(runs.values()) == [RETRIES + 1] * JOBS
