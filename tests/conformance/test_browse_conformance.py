"""Reading a queue in one pass (`aqueue._transport.browse`), on both transports.

The dead-letter tools read this way, so a read must leave every message in place, in order,
on classic and quorum queues alike.
"""

from __future__ import annotations

import pytest

from aqueue._core.config import QueueSettings
from aqueue._core.queues import dead_letter_queue_arguments
from aqueue._core.topology import QueueType
from aqueue._transport.base import Delivery, Transport
from aqueue._transport.browse import PUT_BACK_BATCH, queue_pass, read_queue
from tests.conformance.helpers import TransportFactory, message, single_queue

#: More than two batches, and more than the 32 settlements a quorum channel keeps in flight.
COUNT = PUT_BACK_BATCH * 2 + 9


async def _filled_queue(
    factory: TransportFactory, prefix: str, queue_type: QueueType
) -> tuple[Transport, str, list[str]]:
    transport = await factory()
    queue = f"{prefix}.browse"  # the run's prefix: the session sweep removes a leftover
    arguments = dead_letter_queue_arguments(QueueSettings(queue_type))  # as a DLQ is declared
    await factory.declare(transport, single_queue(queue, arguments))
    ids = [f"job-{index:02d}" for index in range(COUNT)]
    for job_id in ids:
        await transport.publish(message(queue, message_id=job_id), timeout=10)
    return transport, queue, ids


async def _drain_ids(transport: Transport, queue: str) -> list[str]:
    taken: list[str] = []
    while (delivery := await transport.get(queue)) is not None:
        await delivery.ack()
        taken.append(delivery.message_id or "")
    return taken


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_read_sees_every_message_in_order_and_leaves_the_queue_as_it_was(
    transport_factory: TransportFactory, prefix: str, queue_type: QueueType
) -> None:
    """`read_queue` shows each message once, oldest first; afterwards the queue holds the same
    messages in the same order."""
    transport, queue, ids = await _filled_queue(transport_factory, prefix, queue_type)
    seen: list[str] = []

    def visit(delivery: Delivery) -> None:
        seen.append(delivery.message_id or "")

    reader = await transport_factory()
    await read_queue(reader, queue, visit)
    assert seen == ids
    assert await transport.message_count(queue) == COUNT
    assert await _drain_ids(transport, queue) == ids


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_pass_removes_only_what_it_removes_and_keeps_the_order_of_the_rest(
    transport_factory: TransportFactory, prefix: str, queue_type: QueueType
) -> None:
    """Messages a pass removes are gone; the ones it only looked at go back in order."""
    transport, queue, ids = await _filled_queue(transport_factory, prefix, queue_type)
    reader = await transport_factory()
    async with queue_pass(reader, queue) as browsing:
        assert browsing.total == COUNT
        while (delivery := await browsing.take()) is not None:
            if int((delivery.message_id or "")[-2:]) % 3 == 0:
                await browsing.remove(delivery)
        assert browsing.holding == COUNT - len(ids[::3])
    kept = [job_id for index, job_id in enumerate(ids) if index % 3]
    assert await _drain_ids(transport, queue) == kept


async def test_a_pass_never_takes_more_than_the_queue_held_when_it_began(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """A message published during a pass is left for the next one."""
    transport, queue, ids = await _filled_queue(transport_factory, prefix, "classic")
    reader = await transport_factory()
    taken: list[str] = []
    async with queue_pass(reader, queue) as browsing:
        await transport.publish(message(queue, message_id="late"), timeout=10)
        while (delivery := await browsing.take()) is not None:
            taken.append(delivery.message_id or "")
    assert taken == ids
    assert await transport.message_count(queue) == COUNT + 1
