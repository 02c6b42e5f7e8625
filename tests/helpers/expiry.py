"""Expiring jobs, checked the same way on the in-memory broker and on RabbitMQ."""

from __future__ import annotations

import datetime as dt

import anyio

from aqueue import JobStatus, MemoryResultBackend, TaskQueue, WorkerSettings
from aqueue.testing import running_worker
from tests.helpers.workers import wait_until


def expiring_app(url: str, prefix: str) -> tuple[TaskQueue, list[int]]:
    """A queue (memory result backend) whose task `work` records its argument when it runs."""
    ran: list[int] = []
    queue = TaskQueue(
        url, prefix=prefix, telemetry=False, name=f"{prefix}-expiry", results=MemoryResultBackend()
    )

    @queue.task(name="work", retries=5, backoff=5)
    async def work(n: int) -> None:
        ran.append(n)
        if n < 0:
            raise ValueError("asked to fail")

    return queue, ran


async def check_expired_job_is_dead_lettered(url: str, prefix: str) -> None:
    """A job with expires=1 delivered after 2 s never runs and is dead-lettered as expired; a
    job with on_expire='drop' is acked and counted; an unexpired one runs."""
    queue, ran = expiring_app(url, prefix)
    work = queue.tasks["work"]
    async with queue:
        late = await queue.enqueue(work.with_options(expires=1), 1)
        dropped = await queue.enqueue(work.with_options(expires=1, on_expire="drop"), 2)
        await anyio.sleep(2.0)  # the jobs wait, undelivered, past their deadline
        fresh = await queue.enqueue(
            work.with_options(expires=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)), 3
        )
        async with running_worker(queue, WorkerSettings(concurrency=2)) as worker:
            await wait_until(worker, lambda s: s.expired == 2 and s.succeeded == 1)
        assert ran == [3]
        assert await late.status() is JobStatus.EXPIRED
        assert await dropped.status() is JobStatus.EXPIRED
        assert await fresh.status() is JobStatus.SUCCEEDED
        (letter,) = await queue.dead_letters().list()
        assert letter.job_id == late.job_id
        assert letter.reason == "expired"
        assert letter.exception_type == "aqueue.exceptions.JobExpired"


async def check_retry_never_outlives_the_deadline(url: str, prefix: str) -> None:
    """A failure whose retry (5 s backoff) would be due after the 2 s deadline is not retried:
    the job is dead-lettered as expired after its one attempt."""
    queue, ran = expiring_app(url, prefix)
    work = queue.tasks["work"]
    async with queue:
        job = await queue.enqueue(work.with_options(expires=2), -1)
        async with running_worker(queue) as worker:
            await wait_until(worker, lambda s: s.expired == 1)
            assert worker.statistics().retried == 0
        assert ran == [-1]
        (letter,) = await queue.dead_letters().list()
        assert letter.job_id == job.job_id
        assert letter.reason == "expired"
        assert letter.exception_type == "ValueError"
