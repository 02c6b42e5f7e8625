"""Acks sent together (``multiple=True``) against the real RabbitMQ: fewer frames, none early.

What the broker holds after the consuming channel closes is the proof: every delivery that was
not settled goes back to the queue, and no acked one does. A multiple ack that covered an
unsettled delivery would leave it acked, and the count short.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest

from aqueue._transport.amqp import AmqpTransport, _AmqpConsumer
from aqueue._transport.base import Consumer, Delivery, OutgoingMessage

pytestmark = pytest.mark.integration


class Inbox:
    """A consumer callback that keeps its deliveries."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._arrived = anyio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Delivery]:
        with anyio.fail_after(timeout):
            while len(self.deliveries) < count:
                await self._arrived.wait()
        return self.deliveries[:count]


@pytest.fixture
async def transport(amqp_url: str, prefix: str) -> AsyncIterator[AmqpTransport]:
    transport = AmqpTransport([amqp_url], connection_name=f"{prefix}-settling")
    await transport.connect(timeout=10)
    yield transport
    await transport.aclose()


async def _filled(transport: AmqpTransport, name: str, cleanup: list[str], count: int) -> str:
    from aqueue._core.topology import QueueSpec, Topology

    cleanup.append(name)
    await transport.declare(Topology(queues=(QueueSpec(name, {"x-queue-type": "classic"}),)))
    for index in range(count):
        message = OutgoingMessage(exchange="", routing_key=name, body=b"{}", message_id=f"m{index}")
        await transport.publish(message, timeout=10)
    return name


def _ack_frames(consumer: Consumer) -> int:
    assert isinstance(consumer, _AmqpConsumer)
    acks = consumer._acks
    assert acks is not None
    return acks.frames


async def _settle_together(acks: Sequence[Delivery], rejects: Sequence[Delivery] = ()) -> None:
    """Settle every delivery in one turn of the loop, as runners finishing together do."""
    async with anyio.create_task_group() as tg:
        for delivery in acks:
            tg.start_soon(delivery.ack)
        for delivery in rejects:
            tg.start_soon(functools.partial(delivery.reject, requeue=True))


async def _left_after_close(
    amqp_url: str, prefix: str, transport: AmqpTransport, queue: str
) -> list[str]:
    """Close the consuming transport (the broker requeues what it held); the ids left."""
    await transport.aclose()
    other = AmqpTransport([amqp_url], connection_name=f"{prefix}-check")
    await other.connect(timeout=10)
    try:
        ids = []
        while (delivery := await other.get(queue)) is not None:
            ids.append(delivery.message_id or "")
            await delivery.ack()
        return sorted(ids)
    finally:
        await other.aclose()


async def test_acks_of_one_turn_go_out_as_one_multiple_ack(
    transport: AmqpTransport, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """50 deliveries acked in one turn: one ack frame, and the broker holds none of them."""
    queue = await _filled(transport, f"{prefix}.together", amqp_cleanup, 50)
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=50, on_delivery=inbox)
    deliveries = await inbox.wait_for(50)
    await _settle_together(deliveries)
    assert _ack_frames(consumer) == 1
    assert await _left_after_close(amqp_url, prefix, transport, queue) == []


async def test_a_multiple_ack_never_covers_an_unsettled_delivery(
    transport: AmqpTransport, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """Deliveries 0 and 4 still running while the others are acked: both go back, only they."""
    queue = await _filled(transport, f"{prefix}.gaps", amqp_cleanup, 10)
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=10, on_delivery=inbox)
    deliveries = await inbox.wait_for(10)
    running = {deliveries[0].message_id, deliveries[4].message_id}
    await _settle_together([d for d in deliveries if d.message_id not in running])
    # nothing below delivery 0 to cover: each of the eight is acked alone
    assert _ack_frames(consumer) == 8
    assert await _left_after_close(amqp_url, prefix, transport, queue) == sorted(
        str(message_id) for message_id in running
    )


async def test_a_reject_in_the_same_turn_is_not_covered_by_the_multiple_ack(
    transport: AmqpTransport, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """A requeue among acks of one turn: the acks go out together, the requeued job stays."""
    queue = await _filled(transport, f"{prefix}.mixed", amqp_cleanup, 20)
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=20, on_delivery=inbox)
    deliveries = await inbox.wait_for(20)
    await _settle_together(deliveries[:7] + deliveries[8:], rejects=[deliveries[7]])
    # one frame if the reject was written before the acks' turn; else one multiple ack for
    # the seven below it and a plain one for each of the twelve above
    assert _ack_frames(consumer) in (1, 13)
    assert await _left_after_close(amqp_url, prefix, transport, queue) == [deliveries[7].message_id]


async def test_acks_after_a_gap_closes_cover_the_whole_run(
    transport: AmqpTransport, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """The late first delivery's ack covers it only: later ones, acked already, are skipped."""
    queue = await _filled(transport, f"{prefix}.late", amqp_cleanup, 12)
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=12, on_delivery=inbox)
    deliveries = await inbox.wait_for(12)
    await _settle_together(deliveries[1:6])  # five plain acks: delivery 0 still runs
    await _settle_together(deliveries[:1] + deliveries[6:])  # one multiple ack: all done
    assert _ack_frames(consumer) == 6
    assert await _left_after_close(amqp_url, prefix, transport, queue) == []
