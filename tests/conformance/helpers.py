"""What the conformance suite needs around a transport: a factory and an inbox of deliveries."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

import anyio

from aqueue._core.topology import (
    ArgumentValue,
    BindingSpec,
    ExchangeSpec,
    ExchangeType,
    QueueSpec,
    Topology,
)
from aqueue._core.types import HeaderValue
from aqueue._transport.base import Delivery, OutgoingMessage, Transport

#: Bound on every wait for a delivery: generous for a loaded CI machine, never a sleep.
WAIT = 10.0


class TransportFactory:
    """Makes connected transports of one kind and remembers what to clean up."""

    def __init__(self, kind: str, make: Callable[[], Transport]) -> None:
        self.kind = kind
        self._make = make
        self.transports: list[Transport] = []
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    async def __call__(self) -> Transport:
        """A new connected transport, closed when the test ends."""
        transport = self._make()
        await transport.connect(timeout=10)
        self.transports.append(transport)
        return transport

    async def declare(self, transport: Transport, topology: Topology) -> None:
        """Declare `topology`, recording its queues and exchanges for deletion afterwards."""
        self.queues.extend(q.name for q in topology.queues if q.name not in self.queues)
        self.exchanges.extend(e.name for e in topology.exchanges if e.name not in self.exchanges)
        await transport.declare(topology)

    async def with_topology(self, topology: Topology) -> Transport:
        """A new connected transport on which `topology` is declared (and later deleted)."""
        transport = await self()
        await self.declare(transport, topology)
        return transport

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()


class Inbox:
    """An ``on_delivery`` callback that keeps deliveries for the test to await, in order."""

    def __init__(self) -> None:
        self.deliveries: deque[Delivery] = deque()
        self._arrived: anyio.Event | None = None

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self._arrived is not None:
            self._arrived.set()

    async def next(self, timeout: float = WAIT) -> Delivery:
        """The next delivery, waiting for it up to `timeout` seconds."""
        with anyio.fail_after(timeout):
            while not self.deliveries:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.deliveries.popleft()

    async def take(self, count: int, timeout: float = WAIT) -> list[Delivery]:
        """The next `count` deliveries."""
        with anyio.fail_after(timeout):
            return [await self.next() for _ in range(count)]


def message(
    routing_key: str,
    body: bytes = b"{}",
    *,
    exchange: str = "",
    message_id: str = "job-1",
    headers: Mapping[str, HeaderValue] | None = None,
) -> OutgoingMessage:
    """An outgoing message; the default exchange routes it to the queue named `routing_key`."""
    return OutgoingMessage(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        message_id=message_id,
        headers=dict(headers or {}),
    )


async def publish_and_get(transport: Transport, sent: OutgoingMessage) -> Delivery:
    """Publish `sent` (to a queue, through the default exchange) and take it back, unsettled."""
    await transport.publish(sent, timeout=WAIT)
    delivery = await transport.get(sent.routing_key)
    assert delivery is not None, f"{sent.message_id!r} is not in {sent.routing_key!r}"
    return delivery


def single_queue(
    name: str, arguments: Mapping[str, ArgumentValue] | None = None, *, durable: bool = True
) -> Topology:
    """A topology of one queue, reached through the default exchange."""
    return Topology(queues=(QueueSpec(name, dict(arguments or {}), durable=durable),))


def exchange_with_queues(
    exchange: str, kind: ExchangeType, bindings: Mapping[str, str], *, queue_type: str = "classic"
) -> Topology:
    """An exchange of `kind` with one queue per ``{queue: binding key}``."""
    return Topology(
        exchanges=(ExchangeSpec(exchange, kind),),
        queues=tuple(QueueSpec(q, {"x-queue-type": queue_type}) for q in bindings),
        bindings=tuple(BindingSpec(q, exchange, key) for q, key in bindings.items()),
    )
