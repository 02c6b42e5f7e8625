"""`MemoryTransport`: the in-process `Transport`, with RabbitMQ's semantics, for tests.

A `MemoryTransport` is one connection to a `MemoryBroker` (one channel, in AMQP terms). It
passes the same conformance suite as the AMQP transport, and lets tests do what is awkward on a
real node: drop the connection at a chosen instant and watch the transport come back.

Connection loss works as on RabbitMQ with aio-pika's robust connection: unsettled deliveries
go back to their queues marked redelivered (quorum queues count the delivery, and may
dead-letter it at the delivery limit); settling one of them afterwards raises `ConnectionLost`;
publishing while down fails fast with `ConnectionLost`; on reconnect the transport re-declares
every topology passed to `declare` and resumes every consumer that was not cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Literal

import anyio
import anyio.lowlevel

from aqueue._core.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology
from aqueue._transport.base import (
    Consumer,
    Delivery,
    DeliveryCallback,
    NoticeCallback,
    OutgoingMessage,
    QueueInfo,
    Transport,
)
from aqueue._transport.memory_broker import MemoryBroker
from aqueue._transport.memory_queue import (
    MemoryQueue,
    StoredMessage,
    check_sendable,
    copy_headers,
)
from aqueue.exceptions import ConfigurationError, ConnectionLost

__all__ = ["MemoryBroker", "MemoryTransport"]

logger = logging.getLogger(__name__)

_State = Literal["new", "connected", "down", "closed"]


class _MemoryDelivery(Delivery):
    def __init__(
        self,
        transport: MemoryTransport,
        queue: MemoryQueue,
        message: StoredMessage,
        consumer: _MemoryConsumer | None,
    ) -> None:
        headers = copy_headers(message.headers)
        # RabbitMQ 3.10's quorum queues add the count on a consumer's redelivery only, but to
        # every basic.get, first deliveries included (measured).
        if queue.quorum and (consumer is None or message.delivery_count > 0):
            headers["x-delivery-count"] = message.delivery_count
        self.body = message.body
        self.headers = headers
        self.message_id = message.message_id
        self.content_type = message.content_type
        self.routing_key = message.routing_key
        self.exchange = message.exchange
        self.queue = queue.name
        self.redelivered = message.redelivered
        self._transport = transport
        self._generation = transport._generation
        self._source = queue
        self._message = message
        self._consumer = consumer
        self._settled = False

    def __repr__(self) -> str:
        return f"<MemoryDelivery {self.message_id!r} from {self.queue!r}>"

    async def ack(self) -> None:
        self._settle()
        self._source.vhost.wake(self._source)  # a consumer may have room again
        await anyio.lowlevel.checkpoint()

    async def reject(self, *, requeue: bool) -> None:
        self._settle()
        if requeue:
            self._source.give_back(self._message, nacked=True)
        else:
            self._source.vhost.dead_letter(self._source, self._message, "rejected")
            self._source.vhost.wake(self._source)
        await anyio.lowlevel.checkpoint()

    def _settle(self) -> None:
        transport = self._transport
        if transport._state != "connected" or transport._generation != self._generation:
            raise ConnectionLost(
                f"the connection that delivered {self!r} is gone; the broker requeued it"
            )
        if self._settled:
            # aio-pika refuses this locally; on the wire RabbitMQ would close the channel (406).
            raise ConnectionLost(f"{self!r} was already settled")
        self._settled = True
        del transport._unsettled[self]
        if self._consumer is not None:
            self._consumer.unsettled -= 1

    def requeue_on_close(self) -> None:
        self._settled = True
        self._source.give_back(self._message, nacked=False)
        if self._consumer is not None:  # a basic.get delivery has no run to stop
            self.mark_lost()


class _MemoryConsumer(Consumer):
    def __init__(
        self, transport: MemoryTransport, queue: str, prefetch: int, on_delivery: DeliveryCallback
    ) -> None:
        self.transport = transport
        self.queue_name = queue
        self.prefetch = prefetch
        self.on_delivery = on_delivery
        self.unsettled = 0
        self.cancelled = False
        self._queue: MemoryQueue | None = None

    def has_capacity(self) -> bool:
        # prefetch 0 means "no limit" in AMQP
        return self.prefetch == 0 or self.unsettled < self.prefetch

    def receive(self, queue: MemoryQueue, message: StoredMessage) -> None:
        delivery = _MemoryDelivery(self.transport, queue, message, self)
        self.transport._unsettled[delivery] = None
        self.unsettled += 1
        try:
            self.on_delivery(delivery)
        except Exception:
            # Like aio-pika, a failing callback is logged; its delivery stays unsettled.
            logger.exception("on_delivery raised for a delivery from %s", queue.name)

    def attach(self) -> None:
        queue = self.transport._vhost.queue(self.queue_name)
        queue.consumers.append(self)
        self._queue = queue
        queue.vhost.wake(queue)

    def detach(self) -> None:
        if self._queue is not None and self in self._queue.consumers:
            self._queue.consumers.remove(self)
        self._queue = None

    async def set_prefetch(self, prefetch: int) -> None:
        if not 0 <= prefetch <= 65535:
            raise ConfigurationError(f"prefetch must be 0 (no limit) to 65535, not {prefetch}")
        self.prefetch = prefetch
        if self._queue is not None:  # a higher limit may let waiting messages through now
            self._queue.vhost.wake(self._queue)
        await anyio.lowlevel.checkpoint()

    async def cancel(self) -> None:
        self.cancelled = True
        self.detach()
        if self in self.transport._consumers:
            self.transport._consumers.remove(self)
        await anyio.lowlevel.checkpoint()


class _MemoryListener(Consumer):
    """`Transport.listen`: an exclusive queue of its own, re-made after every reconnect."""

    def __init__(
        self, transport: MemoryTransport, exchange: str, routing_key: str, on_notice: NoticeCallback
    ) -> None:
        self.transport = transport
        self.exchange, self.routing_key, self.on_notice = exchange, routing_key, on_notice
        self.queue_name: str | None = None

    def has_capacity(self) -> bool:
        return True  # no acks: nothing is ever unsettled

    def receive(self, queue: MemoryQueue, message: StoredMessage) -> None:
        try:
            self.on_notice(message.routing_key, message.body)
        except Exception:  # as for a consumer's callback: logged, the subscription lives on
            logger.exception("a notice callback failed for %s", self.exchange)

    def attach(self) -> None:
        vhost = self.transport._vhost
        if self.exchange not in vhost._exchanges:  # checked first: no queue is left behind
            raise ConfigurationError(f"no exchange {self.exchange!r} to bind to (404)")
        # server-named, like RabbitMQ's amq.gen-... names
        name = f"amq.gen-{uuid.uuid4().hex}"
        vhost.declare(
            Topology(
                queues=(QueueSpec(name, durable=False),),
                bindings=(BindingSpec(name, self.exchange, self.routing_key),),
            )
        )
        self.queue_name = name
        vhost.queue(name).consumers.append(self)

    def detach(self) -> None:
        # exclusive: the queue dies with the connection that declared it
        if self.queue_name is not None:
            self.transport._vhost.delete_queue(self.queue_name)
            self.queue_name = None

    async def set_prefetch(self, prefetch: int) -> None:
        """Nothing to change: a listener takes notices without acks, so without a prefetch."""

    async def cancel(self) -> None:
        self.detach()
        if self in self.transport._listeners:
            self.transport._listeners.remove(self)
        await anyio.lowlevel.checkpoint()


class MemoryTransport(Transport):
    """One connection to a `MemoryBroker`, with the semantics of the AMQP transport.

    Args:
        broker: the broker to connect to; a new private one when omitted. Share one broker
            between the transports of a test (producer and worker), as they share a vhost.
        connection_name: a name for logs and error messages.

    Test hooks, which the AMQP transport does not have: `simulate_connection_loss`,
    `simulate_reconnect` and `MemoryBroker.drop_connections`.
    """

    def __init__(
        self, broker: MemoryBroker | None = None, *, connection_name: str = "memory"
    ) -> None:
        self.broker = MemoryBroker() if broker is None else broker
        self._vhost = self.broker._vhost
        self.connection_name = connection_name
        self._state: _State = "new"
        # Bumped on every connection loss: deliveries of an older generation are void.
        self._generation = 0
        # Everything declared, re-declared on reconnect; the last declaration of a name wins.
        self._exchanges: dict[str, ExchangeSpec] = {}
        self._queues: dict[str, QueueSpec] = {}
        self._bindings: dict[BindingSpec, None] = {}
        self._consumers: list[_MemoryConsumer] = []
        self._listeners: list[_MemoryListener] = []
        # A dict keeps delivery order and removes in O(1).
        self._unsettled: dict[_MemoryDelivery, None] = {}
        self._connected: anyio.Event | None = None
        self._reconnect: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.connection_name!r} {self._state}>"

    @property
    def is_connected(self) -> bool:
        """True while connected (not before `connect`, during a simulated outage, or closed)."""
        return self._state == "connected"

    async def connect(self, *, timeout: float) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self!r} is already connected or closed")
        await anyio.lowlevel.checkpoint()
        self._state = "down"
        self._vhost.connections[self] = None
        self.simulate_reconnect()

    async def aclose(self) -> None:
        if self._state == "closed":
            return
        if self._state != "new":
            self._drop()
        self._state = "closed"
        if self._connected is not None:  # waiters learn that it is closed
            self._connected.set()
            self._connected = None
        self._consumers.clear()
        self._listeners.clear()
        self._vhost.connections.pop(self, None)

    async def wait_connected(self) -> None:
        while self._state != "connected":
            if self._state == "closed":
                raise ConnectionLost(f"{self!r} is closed")
            if self._connected is None:
                self._connected = anyio.Event()
            await self._connected.wait()

    async def declare(self, topology: Topology) -> None:
        self._check_connected()
        await anyio.lowlevel.checkpoint()
        self._check_connected()
        self._vhost.declare(topology)
        self._exchanges.update((exchange.name, exchange) for exchange in topology.exchanges)
        self._queues.update((queue.name, queue) for queue in topology.queues)
        self._bindings.update(dict.fromkeys(topology.bindings))

    async def publish(self, message: OutgoingMessage, *, timeout: float) -> None:
        check_sendable(message.headers)  # as the AMQP transport refuses them
        self._check_connected()
        # Yield first: a cancelled publish stores nothing, a returned one is stored.
        await anyio.lowlevel.checkpoint()
        self._check_connected()
        self._vhost.publish(message)

    async def consume(
        self, queue: str, *, prefetch: int, on_delivery: DeliveryCallback
    ) -> Consumer:
        if not 0 <= prefetch <= 65535:
            raise ConfigurationError(f"prefetch must be 0 (no limit) to 65535, not {prefetch}")
        self._check_connected()
        await anyio.lowlevel.checkpoint()
        self._check_connected()
        consumer = _MemoryConsumer(self, queue, prefetch, on_delivery)
        consumer.attach()
        self._consumers.append(consumer)
        return consumer

    async def get(self, queue: str) -> Delivery | None:
        source = await self._queue(queue)
        message = source.pop()
        if message is None:
            return None
        delivery = _MemoryDelivery(self, source, message, None)
        self._unsettled[delivery] = None
        return delivery

    async def message_count(self, queue: str) -> int:
        source = await self._queue(queue)
        source.expire()
        return len(source)

    async def queue_info(self, queue: str) -> QueueInfo:
        source = await self._queue(queue)
        source.expire()
        return QueueInfo(ready=len(source), consumers=len(source.consumers))

    async def notify(self, exchange: str, routing_key: str, body: bytes, *, timeout: float) -> None:
        self._check_connected()
        await anyio.lowlevel.checkpoint()
        self._check_connected()
        # not mandatory: a notice no queue takes is dropped, as RabbitMQ does
        for queue in self._vhost.route(exchange, routing_key) or []:
            queue.offer(
                StoredMessage(
                    body=body,
                    headers={},
                    message_id="",
                    content_type="application/json",
                    timestamp=None,
                    exchange=exchange,
                    routing_key=routing_key,
                )
            )

    async def listen(self, exchange: str, routing_key: str, on_notice: NoticeCallback) -> Consumer:
        self._check_connected()
        await anyio.lowlevel.checkpoint()
        self._check_connected()
        listener = _MemoryListener(self, exchange, routing_key, on_notice)
        listener.attach()
        self._listeners.append(listener)
        return listener

    async def purge(self, queue: str) -> int:
        return (await self._queue(queue)).purge()

    async def delete_queue(self, queue: str) -> None:
        self._check_connected()
        await anyio.lowlevel.checkpoint()
        self._vhost.delete_queue(queue)
        # Deleted on purpose: a reconnect must not bring it back (as in the AMQP transport).
        self._queues.pop(queue, None)
        for binding in [binding for binding in self._bindings if binding.queue == queue]:
            del self._bindings[binding]

    def simulate_connection_loss(self, *, reconnect_after: float | None = 0.0) -> None:
        """Drop the connection now, as a network failure or a broker restart would.

        Unsettled deliveries are requeued (redelivered, counted by quorum queues) and void;
        consumers stop; `publish` and the other operations raise `ConnectionLost` until the
        transport is back, `reconnect_after` seconds later (``None``: when the test calls
        `simulate_reconnect`). Nothing happens unless the transport is connected.
        """
        if self._state != "connected":
            return
        self._drop()
        if reconnect_after is not None:
            loop = asyncio.get_running_loop()
            self._reconnect = loop.call_later(reconnect_after, self.simulate_reconnect)

    def simulate_reconnect(self) -> None:
        """Come back after `simulate_connection_loss`: re-declare, resume consumers.

        A topology that can no longer be declared, or a consumer whose queue is gone, is
        logged and skipped, as aio-pika's robust connection does.
        """
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        if self._state != "down":
            return
        self._state = "connected"
        topology = Topology(
            tuple(self._exchanges.values()), tuple(self._queues.values()), tuple(self._bindings)
        )
        try:
            self._vhost.declare(topology)
        except ConfigurationError as exc:
            logger.error("%r could not re-declare its topology after a reconnect: %s", self, exc)
        for consumer in self._consumers:
            try:
                consumer.attach()
            except ConfigurationError as exc:
                logger.warning("%r could not resume a consumer: %s", self, exc)
        for listener in self._listeners:
            try:
                listener.attach()
            except ConfigurationError as exc:
                logger.warning("%r could not resume a listener: %s", self, exc)
        if self._connected is not None:
            self._connected.set()
            self._connected = None

    def _drop(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        self._state = "down"
        self._generation += 1
        for consumer in self._consumers:
            consumer.detach()
            consumer.unsettled = 0
        for listener in self._listeners:
            listener.detach()
        # In delivery order: that is the order they come back to the head of the queue.
        unsettled, self._unsettled = self._unsettled, {}
        for delivery in unsettled:
            delivery.requeue_on_close()

    def _check_connected(self) -> None:
        if self._state != "connected":
            raise ConnectionLost(f"{self!r} is not connected")

    async def _queue(self, name: str) -> MemoryQueue:
        self._check_connected()
        await anyio.lowlevel.checkpoint()
        self._check_connected()
        return self._vhost.queue(name)
