"""One transport conformance suite, run against the in-memory and the AMQP transport.

``transport_factory`` makes connected transports of the kind under test. For ``amqp`` it
needs RabbitMQ (``amqp_url`` skips, or fails under ``AQUEUE_REQUIRE_BROKER=1``); every queue
declared through ``transport_factory.declare`` is deleted afterwards by ``amqp_cleanup``, and
every exchange by this module (``amqp_cleanup`` knows queues only).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from aqueue._transport.base import Transport
from aqueue._transport.memory import MemoryBroker, MemoryTransport
from tests.conformance.helpers import TransportFactory


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.integration)])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """The transport under test; its parameters name the test ids (``[memory]``, ``[amqp]``)."""
    kind: str = request.param
    return kind


@pytest.fixture
def _amqp_queues(transport_kind: str, request: pytest.FixtureRequest) -> list[str]:
    # A sync fixture: anyio cannot set up an async fixture (amqp_cleanup) from inside another.
    if transport_kind != "amqp":
        return []
    queues: list[str] = request.getfixturevalue("amqp_cleanup")
    return queues


@pytest.fixture
async def transport_factory(
    transport_kind: str, _amqp_queues: list[str], request: pytest.FixtureRequest
) -> AsyncIterator[TransportFactory]:
    """Makes connected transports of the kind under test; closes and cleans up afterwards."""
    name = request.node.name
    url = ""
    if transport_kind == "memory":
        broker = MemoryBroker()
        factory = TransportFactory("memory", lambda: MemoryTransport(broker, connection_name=name))
    else:
        from aqueue._transport.amqp import AmqpTransport

        url = request.getfixturevalue("amqp_url")

        def make() -> Transport:
            return AmqpTransport([url], connection_name=name)

        factory = TransportFactory("amqp", make)
    try:
        yield factory
    finally:
        await factory.aclose()
        _amqp_queues.extend(factory.queues)
        if transport_kind == "amqp" and factory.exchanges:
            await _delete_exchanges(url, factory.exchanges)


async def _delete_exchanges(url: str, exchanges: list[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        for exchange in exchanges:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(exchange)
