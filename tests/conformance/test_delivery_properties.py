"""What a delivery carries besides its body, and how a missing queue is reported, on both
transports."""

from __future__ import annotations

import uuid

import pytest

from aqueue._core.wire import OutgoingMessage
from aqueue.exceptions import QueueNotFound
from tests.conformance.helpers import TransportFactory, publish_and_get, single_queue


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_a_delivery_carries_the_content_type_it_was_published_with(
    transport_factory: TransportFactory, prefix: str, content_type: str
) -> None:
    """`Delivery.content_type` is the AMQP content type of the message, whatever it is."""
    queue = f"{prefix}.props"
    transport = await transport_factory.with_topology(single_queue(queue))
    sent = OutgoingMessage("", queue, b"hello", "job-1", content_type=content_type)
    delivery = await publish_and_get(transport, sent)
    assert delivery.content_type == content_type
    await delivery.ack()


async def test_a_missing_queue_is_queue_not_found(transport_factory: TransportFactory) -> None:
    """Counting, reading and purging a queue that does not exist raise `QueueNotFound`."""
    transport = await transport_factory()
    missing = f"aqtest-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(QueueNotFound):
        await transport.message_count(missing)
    with pytest.raises(QueueNotFound):
        await transport.get(missing)
    with pytest.raises(QueueNotFound):
        await transport.purge(missing)
