"""`AmqpTransport.publish_batch` and `enqueue_many` in batches, against the real RabbitMQ.

A batch is written at once through aiormq's channel internals (`aqueue._transport.amqp_batch`);
each message's confirm, nack or return must still reach that message, and a batch cut by a
lost connection must end with every job stored.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aqueue import TaskQueue
from aqueue._core.topology import QueueSpec, Topology
from aqueue._transport import amqp_batch
from aqueue._transport.amqp import AmqpTransport
from aqueue._transport.base import Delivery, OutgoingMessage
from aqueue.exceptions import PublishNacked, Unroutable
from tests.helpers.polling import wait_for
from tests.helpers.rabbitmqctl import close_connection, connection_pids

pytestmark = pytest.mark.integration


@pytest.fixture
async def transport(amqp_url: str, prefix: str) -> AsyncIterator[AmqpTransport]:
    transport = AmqpTransport([amqp_url], connection_name=f"{prefix}-batch")
    await transport.connect(timeout=10)
    yield transport
    await transport.aclose()


async def _queue(transport: AmqpTransport, name: str, cleanup: list[str], **args: Any) -> str:
    cleanup.append(name)
    spec = QueueSpec(name, {"x-queue-type": "classic", **args})
    await transport.declare(Topology(queues=(spec,)))
    return name


def _message(routing_key: str, index: int) -> OutgoingMessage:
    return OutgoingMessage(
        exchange="",
        routing_key=routing_key,
        body=b'{"args":[%d],"kwargs":{}}' % index,
        message_id=f"{index}-{uuid.uuid4().hex}",
        headers={"task": "t", "n": index},
    )


def test_the_installed_aiormq_is_vetted() -> None:
    """Fails on an aiormq `amqp_batch` was not checked against: vet it, then add it to VETTED.

    (Until then the transport publishes one message at a time: slower, never wrong.)
    """
    assert amqp_batch.supported_version(), (
        f"aiormq {version('aiormq')} is not in amqp_batch.VETTED {amqp_batch.VETTED}"
    )
    assert AmqpTransport.batches_publishes


async def test_a_batch_is_confirmed_and_stored_in_order(
    transport: AmqpTransport, prefix: str, amqp_cleanup: list[str]
) -> None:
    queue = await _queue(transport, f"{prefix}.batch", amqp_cleanup)
    messages = [_message(queue, index) for index in range(300)]
    assert await transport.publish_batch(messages, timeout=10) == [None] * 300
    received = []
    while (delivery := await transport.get(queue)) is not None:
        received.append((delivery.message_id, delivery.body, dict(delivery.headers)))
        await delivery.ack()
    assert received == [(m.message_id, m.body, dict(m.headers)) for m in messages]


async def test_an_unroutable_message_fails_alone(
    transport: AmqpTransport, prefix: str, amqp_cleanup: list[str]
) -> None:
    queue = await _queue(transport, f"{prefix}.routable", amqp_cleanup)
    messages = [_message(queue, index) for index in range(10)]
    messages[4] = _message(f"{prefix}.nowhere", 4)
    results = await transport.publish_batch(messages, timeout=10)
    assert isinstance(results[4], Unroutable)
    assert results[:4] + results[5:] == [None] * 9
    assert await transport.message_count(queue) == 9


async def test_a_nacked_message_fails_alone_and_later_batches_go_through(
    transport: AmqpTransport, prefix: str, amqp_cleanup: list[str]
) -> None:
    full = await _queue(
        transport,
        f"{prefix}.full",
        amqp_cleanup,
        **{"x-max-length": 3, "x-overflow": "reject-publish"},
    )
    results = await transport.publish_batch([_message(full, i) for i in range(5)], timeout=10)
    assert results[:3] == [None] * 3
    assert all(isinstance(result, PublishNacked) for result in results[3:])
    # a nack retires the publishing channel: the next batch goes on a fresh one
    other = await _queue(transport, f"{prefix}.other", amqp_cleanup)
    assert (
        await transport.publish_batch([_message(other, i) for i in range(5)], timeout=10)
        == [None] * 5
    )


async def test_enqueue_many_through_a_lost_connection_stores_every_job(
    amqp_url: str, prefix: str
) -> None:
    """The broker closes the connection mid-`enqueue_many`: every job is confirmed and stored.

    Batches cut by the close are published again after the reconnect, so a job can be stored
    twice (at least once, never lost); none is missing.
    """
    queue = TaskQueue(amqp_url, prefix=prefix, name=prefix, publish_batch=50)

    @queue.task(queue="default", name="noop")
    async def noop(index: int) -> None:
        return None

    jobs = 30_000
    async with queue.session() as session:
        work = session.names.work_queue("default")
        await session.producer.declare_queue("default")
        [pid] = await anyio.to_thread.run_sync(connection_pids, f"{prefix}-publisher")
        enqueued = closed = False

        async def close_soon() -> None:
            nonlocal closed

            async def started() -> bool:  # the first batches confirmed, the rest under way
                return await session.transport.message_count(work) >= 500

            await wait_for(started, timeout=60, what="the first 500 jobs stored", interval=0.005)
            await anyio.to_thread.run_sync(close_connection, pid)
            closed = not enqueued

        async with anyio.create_task_group() as tg:
            tg.start_soon(close_soon)
            batch = await queue.enqueue_many(noop, [(i,) for i in range(jobs)])
            enqueued = True
        assert closed, "the connection was closed only after enqueue_many returned"
        assert batch.ok, batch.failures[:3]

        ids: set[str | None] = set()

        def collect(delivery: Delivery) -> None:
            ids.add(delivery.message_id)
            tg.start_soon(delivery.ack)

        expected = {job.job_id for job in batch.jobs}
        async with anyio.create_task_group() as tg:
            consumer = await session.transport.consume(work, prefetch=1000, on_delivery=collect)
            await wait_for(lambda: ids >= expected, timeout=60, what="every job delivered")
            await consumer.cancel()
        assert ids == expected
        await session.transport.delete_queue(work)
