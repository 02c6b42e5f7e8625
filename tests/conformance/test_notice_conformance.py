"""Notices (`Transport.notify`, `Transport.listen`) and `Transport.queue_info`, on both transports.

Heartbeats ride on these: a best-effort publish to a topic exchange, and a listener's own
exclusive, auto-delete, server-named queue. No test sleeps to synchronise: each wait is for
an event, bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from aqueue._core.topology import ExchangeSpec, Topology
from aqueue._transport.base import Transport
from aqueue.exceptions import ConfigurationError, QueueNotFound
from tests.conformance.helpers import WAIT, Inbox, TransportFactory, message, single_queue


class Notices:
    """A `NoticeCallback` that keeps (routing key, body) pairs for the test to await."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._arrived = anyio.Event()

    def __call__(self, routing_key: str, body: bytes) -> None:
        self.received.append((routing_key, body))
        self._arrived.set()

    async def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        with anyio.fail_after(WAIT):
            while len(self.received) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.received


def unique(what: str) -> str:
    return f"conformance.{what}.{uuid.uuid4().hex[:8]}"


async def control_exchange(transport_factory: TransportFactory) -> tuple[Transport, str]:
    exchange = unique("control")
    transport = await transport_factory.with_topology(
        Topology(exchanges=(ExchangeSpec(exchange, "topic"),))
    )
    return transport, exchange


async def test_every_listener_receives_each_notice_matching_its_key(
    transport_factory: TransportFactory,
) -> None:
    """Two listeners bound with `heartbeat.#` both get a notice; one bound elsewhere does not."""
    publisher, exchange = await control_exchange(transport_factory)
    first, second, other = Notices(), Notices(), Notices()
    await (await transport_factory()).listen(exchange, "heartbeat.#", first)
    await (await transport_factory()).listen(exchange, "heartbeat.#", second)
    await publisher.listen(exchange, "command.#", other)
    await publisher.notify(exchange, "heartbeat.w1", b'{"n": 1}', timeout=WAIT)
    await publisher.notify(exchange, "command.stop", b'{"n": 2}', timeout=WAIT)
    assert await first.wait_for(1) == [("heartbeat.w1", b'{"n": 1}')]
    assert await second.wait_for(1) == [("heartbeat.w1", b'{"n": 1}')]
    assert await other.wait_for(1) == [("command.stop", b'{"n": 2}')]


async def test_a_notice_nobody_listens_to_is_dropped_without_error(
    transport_factory: TransportFactory,
) -> None:
    """`notify` to an exchange with no queue bound returns (not mandatory) and nothing arrives."""
    publisher, exchange = await control_exchange(transport_factory)
    await publisher.notify(exchange, "heartbeat.w1", b"{}", timeout=WAIT)
    late = Notices()
    await publisher.listen(exchange, "#", late)
    await publisher.notify(exchange, "heartbeat.w2", b"{}", timeout=WAIT)
    assert [key for key, _ in await late.wait_for(1)] == ["heartbeat.w2"]


async def test_a_cancelled_listener_receives_nothing_more(
    transport_factory: TransportFactory,
) -> None:
    """After `cancel`, notices go to the remaining listener only."""
    publisher, exchange = await control_exchange(transport_factory)
    gone, staying = Notices(), Notices()
    listener = await publisher.listen(exchange, "#", gone)
    await publisher.listen(exchange, "#", staying)
    await listener.cancel()
    await publisher.notify(exchange, "heartbeat.w1", b"{}", timeout=WAIT)
    await staying.wait_for(1)
    assert gone.received == []


async def test_listening_to_a_missing_exchange_is_a_configuration_error(
    transport_factory: TransportFactory,
) -> None:
    """`listen` on an exchange that was never declared raises ConfigurationError."""
    transport = await transport_factory()
    with pytest.raises(ConfigurationError):
        await transport.listen(unique("missing"), "#", Notices())


async def test_queue_info_counts_ready_messages_and_consumers(
    transport_factory: TransportFactory,
) -> None:
    """A passive declare reports ready messages and the consumers of every connection."""
    queue = unique("info")
    transport = await transport_factory.with_topology(single_queue(queue))
    for number in range(3):
        await transport.publish(message(queue, message_id=f"m{number}"), timeout=WAIT)
    info = await transport.queue_info(queue)
    assert (info.ready, info.consumers) == (3, 0)
    inbox = Inbox()
    await (await transport_factory()).consume(queue, prefetch=1, on_delivery=inbox)
    await inbox.next()
    info = await transport.queue_info(queue)
    assert (info.ready, info.consumers) == (2, 1)


async def test_queue_info_of_a_missing_queue_raises_queue_not_found(
    transport_factory: TransportFactory,
) -> None:
    """`queue_info` creates nothing: a queue that does not exist raises QueueNotFound."""
    transport = await transport_factory()
    with pytest.raises(QueueNotFound):
        await transport.queue_info(unique("missing"))
