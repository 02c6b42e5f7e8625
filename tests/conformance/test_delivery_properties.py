"""What a delivery carries besides its body, and how a missing queue is reported, on both
transports."""

from __future__ import annotations

import uuid

import pytest

from aqueue._core.types import HeaderValue
from aqueue._core.wire import OutgoingMessage
from aqueue.exceptions import EncodeError, QueueNotFound
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


async def test_header_floats_travel_as_64_bit_doubles(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """0.1 arrives as exactly 0.1, and floats past a 32-bit float's range arrive unchanged."""
    queue = f"{prefix}.floats"
    transport = await transport_factory.with_topology(single_queue(queue))
    headers: dict[str, HeaderValue] = {
        "tenth": 0.1,
        "huge": 1e306,
        "tiny": 5e-324,
        "nested": {"options": {"timeout": 0.1}, "list": [1e39]},
    }
    delivery = await publish_and_get(transport, OutgoingMessage("", queue, b"{}", "f", headers))
    assert dict(delivery.headers) == headers
    await delivery.ack()


@pytest.mark.parametrize(
    "headers",
    [
        {"inf": float("inf")},
        {"minus-inf": float("-inf")},
        {"nan": float("nan")},
        {"deep": {"options": {"backoff": float("inf")}}},
        {"listed": [1, float("nan")]},
        {"big": 2**63},
        {"k" * 256: 1},
    ],
    ids=["inf", "minus-inf", "nan", "nested", "in-a-list", "int-65-bits", "long-key"],
)
async def test_a_header_rabbitmq_cannot_hold_is_refused_and_nothing_is_sent(
    transport_factory: TransportFactory, prefix: str, headers: dict[str, HeaderValue]
) -> None:
    """`EncodeError` before sending (RabbitMQ closes the connection on a non-finite float).

    The connection stays up: the next message on it is published and is the only one there.
    """
    queue = f"{prefix}.unsendable"
    transport = await transport_factory.with_topology(single_queue(queue))
    with pytest.raises(EncodeError, match="cannot be sent"):
        await transport.publish(OutgoingMessage("", queue, b"{}", "bad", headers), timeout=5)
    delivery = await publish_and_get(transport, OutgoingMessage("", queue, b"{}", "good"))
    assert delivery.message_id == "good"
    await delivery.ack()
    assert await transport.message_count(queue) == 0
