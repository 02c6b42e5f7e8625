"""A delayed job the broker hands over a little before its due time waits for it."""

from __future__ import annotations

import dataclasses
import time

import anyio

from aqueue import TaskQueue, current_job
from aqueue.testing import running_worker
from tests.helpers.jobs import job_envelope
from tests.helpers.workers import WAIT


async def test_a_delayed_job_delivered_early_starts_at_its_due_time(
    memory_queue: TaskQueue,
) -> None:
    """Its ETA 80 ms ahead but routed straight to the work queue (as delay levels whose TTLs
    ran a little early would bring it): it starts at its ETA, not at once."""
    started: list[tuple[float, float]] = []

    @memory_queue.task(name="mark")
    async def mark() -> None:
        started.append((time.time(), current_job().due_at))

    async with memory_queue.session() as session, running_worker(memory_queue) as worker:
        eta_ms = time.time_ns() // 1_000_000 + 80
        envelope = dataclasses.replace(job_envelope("mark"), eta_ms=eta_ms)
        await session.producer.publish(session.producer.encode(envelope, delay_ms=0))
        with anyio.fail_after(WAIT):
            await worker.wait_until(lambda s: s.succeeded == 1)
    [(at, due)] = started
    assert due == eta_ms / 1000
    assert at >= due
