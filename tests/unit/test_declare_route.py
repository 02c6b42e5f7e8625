"""The first delayed enqueue declares the delay levels: once, and without making the job late."""

from __future__ import annotations

import datetime as dt
import time

import anyio
import pytest

from aqueue import TaskQueue, current_job
from aqueue._client.session import Session
from aqueue._core.topology import Topology
from aqueue.testing import running_worker
from tests.helpers.workers import wait_until

#: How long the fake broker takes to declare anything, like a loaded RabbitMQ (~0.7 s for the
#: 28 levels on the shared test broker).
SLOW_DECLARE = 0.3


def slow_declarations(session: Session) -> list[Topology]:
    """Make the open queue's publishing transport slow to declare; returns what it declares."""
    transport = session.transport
    declare = transport.declare
    declared: list[Topology] = []

    async def slow(topology: Topology) -> None:
        declared.append(topology)
        await anyio.sleep(SLOW_DECLARE)
        await declare(topology)

    transport.declare = slow  # type: ignore[method-assign]
    return declared


async def test_concurrent_first_delayed_enqueues_declare_the_levels_once(
    memory_queue: TaskQueue,
) -> None:
    """100 delayed enqueues at once on a fresh queue wait for one declaration of the levels."""

    @memory_queue.task
    async def job(index: int) -> None: ...

    async with memory_queue.session() as session:
        declared = slow_declarations(session)
        began = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for index in range(100):
                tg.start_soon(memory_queue.enqueue_in, 60, job, index)
        elapsed = anyio.current_time() - began
    assert len(declared) == 1
    # one after another they would take 100 declarations' time; together, one (the bound
    # leaves room for a loaded machine, far below the serial 100)
    assert elapsed < 10 * SLOW_DECLARE


@pytest.mark.serial  # lateness under 0.15 s: measured alone
@pytest.mark.parametrize("api", ["enqueue_at", "enqueue_many"])
async def test_an_eta_is_not_missed_by_the_first_declaration(
    memory_queue: TaskQueue, api: str
) -> None:
    """A job due at an eta starts then, even when declaring the levels took part of the wait."""
    started: list[tuple[float, float]] = []

    @memory_queue.task
    async def job() -> None:
        started.append((time.time(), current_job().due_at))

    async with memory_queue.session() as session, running_worker(memory_queue) as worker:
        slow_declarations(session)
        eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
        if api == "enqueue_at":
            await memory_queue.enqueue_at(eta, job)
        else:
            await memory_queue.enqueue_many(job, [()], eta=eta)
        await wait_until(worker, lambda s: s.succeeded == 1, timeout=5)
    [(at, due)] = started
    assert abs(due - eta.timestamp()) < 0.02  # the eta header is the eta asked for
    assert 0 <= at - eta.timestamp() < SLOW_DECLARE / 2
