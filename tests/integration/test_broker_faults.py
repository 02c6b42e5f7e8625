"""Issue 2 when the broker misbehaves: connections closed under a running producer and worker,
a stopped node, a port where nothing listens.

Everything that stops a broker or closes all its connections runs on a private node
(``rabbit_node``), never on the shared one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from aqueue import Task, TaskQueue, Worker, WorkerSettings, current_job
from aqueue.exceptions import ConnectionFailed, ConnectionLost
from aqueue.testing import running_worker
from tests.helpers.rabbit_node import RabbitNode, free_ports
from tests.helpers.workers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PREFIX = "faults"


def make_queue(
    url: str,
    name: str,
    ran: list[str],
    *,
    publish_deadline: float = 30.0,
    connect_timeout: float = 10.0,
) -> tuple[TaskQueue, Task[[int], None]]:
    """A TaskQueue with one task, `note`, that records its job id in `ran`."""
    queue = TaskQueue(
        url,
        prefix=PREFIX,
        name=name,
        publish_deadline=publish_deadline,
        connect_timeout=connect_timeout,
    )

    @queue.task(name="note")
    async def note(index: int) -> None:
        await anyio.sleep(0.002)
        ran.append(current_job().job_id)

    return queue, note


def lost_connections(caplog: pytest.LogCaptureFixture) -> Callable[[str], int]:
    """How many times the transport named ``connection_name`` logged a lost connection."""

    def count(connection_name: str) -> int:
        return sum(
            1
            for record in caplog.records
            if "lost its connection" in record.getMessage()
            and f"'{connection_name}'" in record.getMessage()
        )

    return count


@pytest.mark.fault
async def test_producer_and_worker_recover_from_close_all_connections(
    rabbit_node: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    """close_all_connections mid-run: producer and worker reconnect by themselves; all jobs run."""
    caplog.set_level(logging.INFO, logger="aqueue")
    ran: list[str] = []
    producer, note = make_queue(rabbit_node.url, "producer", ran)
    consumer, _ = make_queue(rabbit_node.url, "worker", ran)
    enqueued: list[str] = []
    warmed_up, closed = anyio.Event(), anyio.Event()

    async def produce() -> None:
        # Enqueue one by one until well past the moment the connections were closed.
        after_close = 0
        while after_close < 500:
            job = await producer.enqueue(note, len(enqueued))
            enqueued.append(job.job_id)
            if len(enqueued) == 300:
                warmed_up.set()
            after_close += closed.is_set()

    settings = WorkerSettings(concurrency=20, grace=5)
    async with producer, running_worker(consumer, settings) as worker:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            with anyio.fail_after(30):
                await warmed_up.wait()
            await anyio.to_thread.run_sync(rabbit_node.close_all_connections)
            enqueued_at_close, ran_at_close = len(enqueued), len(set(ran))
            closed.set()
        # the producer is done: every enqueue returned, none raised
        await wait_until(worker, lambda _: set(ran) >= set(enqueued), timeout=60)

    lost = lost_connections(caplog)
    assert lost("producer-publisher") >= 1
    assert lost("worker-consumer") >= 1
    assert enqueued_at_close < len(enqueued)
    assert ran_at_close < len(enqueued)
    assert len(set(enqueued)) == len(enqueued)
    assert set(ran) == set(enqueued)
    duplicates = sum(count - 1 for count in Counter(ran).values())
    retried = sum("retrying publish" in record.getMessage() for record in caplog.records)
    print(
        f"\nclosed after {enqueued_at_close} enqueued, {ran_at_close} run; all {len(enqueued)} "
        f"ran; {duplicates} ran twice; {retried} publishes retried after the reconnect"
    )


@pytest.mark.fault
async def test_enqueue_while_the_node_is_stopped_raises_within_its_deadline(
    rabbit_node: RabbitNode,
) -> None:
    """With the node stopped, enqueue raises ConnectionLost after publish_deadline, not later."""
    deadline = 3.0
    queue, note = make_queue(rabbit_node.url, "stopped", [], publish_deadline=deadline)
    async with queue.session() as session:
        await queue.enqueue(note, 1)
        await anyio.to_thread.run_sync(rabbit_node.stop)
        began = anyio.current_time()
        with pytest.raises(ConnectionLost, match="publish_deadline=3"):
            await queue.enqueue(note, 2)
        elapsed = anyio.current_time() - began
        assert deadline - 0.1 <= elapsed < deadline + 1.5

        # The queue is not broken by it: once the node is back, enqueue works again.
        await anyio.to_thread.run_sync(rabbit_node.start)
        with anyio.fail_after(30):
            await session.transport.wait_connected()
        await queue.enqueue(note, 3)
        assert await session.transport.message_count(session.names.work_queue("default")) == 2


async def test_queue_and_worker_fail_fast_when_nothing_listens() -> None:
    """A TaskQueue or Worker at a port where nothing listens raises ConnectionFailed in time."""
    [port] = free_ports(1)
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    queue, _ = make_queue(url, "nobody", [], connect_timeout=2)

    began = anyio.current_time()
    with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
        await queue.open()
    assert anyio.current_time() - began < 2 + 1.5

    began = anyio.current_time()
    with pytest.raises(ConnectionFailed):
        await Worker(queue).run()
    assert anyio.current_time() - began < 2 + 1.5
