"""The transport interface: bytes and headers in, bytes and headers out; never an Envelope.

A seam with RabbitMQ's semantics (exchanges, routing keys, manual acks, ``basic.get``), not a
broker-neutral one: aqueue's guarantees are RabbitMQ's, and the in-memory broker is valuable
because it has the same semantics. Both implementations (`AmqpTransport`, `MemoryTransport`)
pass the same conformance suite (``tests/conformance``), so what is stated here holds for each.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aqueue._core.topology import Topology
from aqueue._core.types import HeaderValue
from aqueue._core.wire import OutgoingMessage
from aqueue.exceptions import ConnectionLost, PublishError

__all__ = [
    "Consumer",
    "Delivery",
    "DeliveryCallback",
    "NoticeCallback",
    "OutgoingMessage",
    "QueueInfo",
    "Transport",
]


class Delivery(abc.ABC):
    """One receipt of a message from a queue, to be settled exactly once.

    A delivery belongs to the channel that delivered it. If that channel is gone (the
    connection dropped), settling raises `ConnectionLost` and the broker has already put the
    message back: it will be delivered again, to this worker or another.
    """

    body: bytes
    headers: Mapping[str, HeaderValue]
    message_id: str | None
    #: The AMQP ``content_type`` (``application/json`` for aqueue's jobs; ``""`` if unset).
    content_type: str
    routing_key: str
    #: The exchange it was last published (or dead-lettered) to; ``""``: the default exchange.
    exchange: str = ""
    #: The broker name of the queue the message was consumed from.
    queue: str
    #: True when the broker delivered this message before (to any consumer).
    redelivered: bool
    #: Why the transport could not decode this message's properties (AMQP clients fail on
    #: some bytes brokers pass on: a header key that is not UTF-8, a timestamp past the year
    #: 9999); `headers` and `message_id` are then what could be salvaged. None normally.
    undecodable: str | None = None
    #: Called once if the delivering channel dies first (see `on_lost`).
    _lost_callback: Callable[[], None] | None = None
    _lost: bool = False

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` if this delivery's channel or connection dies before it is settled.

        The broker then delivers the message again (here or to another worker), so whatever
        runs it here should stop: the worker cancels the job's run. Called once, on the event
        loop; at once if the delivery is lost already. ``None`` clears it.
        """
        if callback is not None and self._lost:
            callback()
            return
        self._lost_callback = callback

    def mark_lost(self) -> None:
        """For transports: the delivering channel died with this delivery unsettled."""
        if self._lost:
            return
        self._lost = True
        callback, self._lost_callback = self._lost_callback, None
        if callback is not None:
            callback()

    @property
    def delivery_count(self) -> int:
        """How many earlier deliveries of this message ended without an ack.

        Quorum queues count them in ``x-delivery-count``; elsewhere only the redelivered flag
        is known, so this is 1 for a redelivery and 0 otherwise.
        """
        count = self.headers.get("x-delivery-count")
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        return 1 if self.redelivered else 0

    @abc.abstractmethod
    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message.

        Raises:
            ConnectionLost: the delivering channel is gone; the message will be redelivered.
        """

    @abc.abstractmethod
    async def reject(self, *, requeue: bool) -> None:
        """Reject: requeue the message, or dead-letter it through its queue's dead-letter exchange.

        Raises:
            ConnectionLost: the delivering channel is gone; the message will be redelivered.
        """


#: Called by the transport for every delivery, on the event loop; it must not block.
DeliveryCallback = Callable[[Delivery], None]


#: Called by the transport for every notice `Transport.listen` receives: its routing key and
#: body, on the event loop; it must not block. Notices are never settled (no-ack).
NoticeCallback = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What a passive declare of a queue tells (``queue.declare-ok``)."""

    #: messages ready for delivery (not counting unacked ones)
    ready: int
    #: consumers subscribed to the queue, on every connection
    consumers: int


class Consumer(abc.ABC):
    """A subscription to one queue, created by `Transport.consume`."""

    @abc.abstractmethod
    async def set_prefetch(self, prefetch: int) -> None:
        """Change how many deliveries may be unsettled at a time, for new deliveries.

        A higher prefetch lets more in at once. Deliveries already handed over stay
        settleable, and no change makes the broker redeliver anything. A lower prefetch may
        wait until the queue has nothing for this consumer (the AMQP transport: nothing
        unsettled and no ready message), since cancelling a quorum queue's consumer to
        change it returns messages redelivered. The subscription keeps the new prefetch
        when it resumes after a reconnect.
        """

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop new deliveries (``basic.cancel``).

        Deliveries already handed over stay unsettled until settled or until the transport
        closes, when the broker requeues them. Idempotent.
        """


class Transport(abc.ABC):
    """A connection to a broker (or to the in-memory broker) used by a producer or a worker.

    The transport survives connection loss on its own: it reconnects, re-declares every
    topology passed to `declare`, and resumes every consumer. Operations under way when the
    connection drops raise `ConnectionLost`; `publish` does not retry (the producer does).
    """

    @abc.abstractmethod
    async def connect(self, *, timeout: float) -> None:
        """Open the connection.

        Raises:
            ConnectionFailed: no broker answered within `timeout` seconds.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection; unsettled deliveries are requeued by the broker. Idempotent."""

    @abc.abstractmethod
    async def wait_connected(self) -> None:
        """Return once the transport is connected (at once if it is); callers bound the wait."""

    @abc.abstractmethod
    async def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues and bindings idempotently; re-declared after reconnects.

        Raises:
            ConfigurationError: an existing queue has different arguments (406
                PRECONDITION_FAILED).
            ConnectionLost: the connection dropped during the declaration.
        """

    @abc.abstractmethod
    async def publish(self, message: OutgoingMessage, *, timeout: float) -> None:
        """Publish persistent and mandatory; return once the broker confirmed it.

        Many calls may run at once: confirms are pipelined.

        Raises:
            EncodeError: a header RabbitMQ cannot hold (a float that is not finite, an integer
                beyond 64 bits, a key over 255 bytes); nothing was sent.
            Unroutable: no queue is bound for the routing key.
            PublishNacked: the broker refused the message (``basic.nack``).
            BrokerBlocked: the connection is blocked by a resource alarm past `timeout`.
            PublishTimeout: no confirm within `timeout` seconds (the message may be stored).
            ConnectionLost: the connection dropped before the confirm arrived, or is down.
        """

    #: Whether `publish_batch` does better than one `publish` after another (the producer
    #: then hands `enqueue_many`'s messages over in batches).
    batches_publishes: bool = False

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, timeout: float
    ) -> list[BaseException | None]:
        """Publish every message (as `publish`); what each one raised, None when confirmed.

        Raises:
            EncodeError: see `publish`; then none of the remaining messages was sent.
            ConnectionLost: the connection is down (then no message was sent).
        """
        results: list[BaseException | None] = []
        for message in messages:
            try:
                await self.publish(message, timeout=timeout)
            except (PublishError, ConnectionLost) as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    @abc.abstractmethod
    async def consume(
        self, queue: str, *, prefetch: int, on_delivery: DeliveryCallback
    ) -> Consumer:
        """Subscribe to a broker queue with manual acks and a per-consumer prefetch.

        `on_delivery` is called on the event loop for each delivery and must not block; at most
        `prefetch` deliveries are unsettled at a time. The subscription resumes after a
        reconnect.

        Raises:
            ConnectionLost: the connection dropped while subscribing.
        """

    @abc.abstractmethod
    async def get(self, queue: str) -> Delivery | None:
        """Take one message from a queue (``basic.get``, manual ack); ``None`` when empty.

        Raises:
            QueueNotFound: the queue does not exist.
        """

    @abc.abstractmethod
    async def message_count(self, queue: str) -> int:
        """How many messages are ready in a queue (not counting unacked ones).

        Raises:
            QueueNotFound: the queue does not exist.
        """

    @abc.abstractmethod
    async def queue_info(self, queue: str) -> QueueInfo:
        """Ready messages and consumers of a queue (a passive declare: nothing is created).

        Raises:
            QueueNotFound: the queue does not exist.
        """

    @abc.abstractmethod
    async def notify(self, exchange: str, routing_key: str, body: bytes, *, timeout: float) -> None:
        """Publish a transient notice: not confirmed, not mandatory, never stored on disk.

        For heartbeats and similar best-effort messages: a notice that no queue takes is
        dropped without a word, and one under way when the connection drops is lost. Returns
        once the frames are written; `timeout` bounds the wait for a connection blocked by a
        resource alarm.

        Raises:
            ConnectionLost: not connected, or the connection dropped.
            PublishTimeout: the notice could not be written within `timeout` seconds.
        """

    @abc.abstractmethod
    async def listen(self, exchange: str, routing_key: str, on_notice: NoticeCallback) -> Consumer:
        """Receive what is published to `exchange` for `routing_key`, in a queue of our own.

        The queue is exclusive, auto-delete and server-named: it lives as long as this
        connection, no other connection may use it, and RabbitMQ 4.3 allows it where it
        denies non-durable shared queues. Consumed without acks. After a reconnect a new
        queue is declared and bound: notices published meanwhile are lost. The exchange must
        exist (declare it first).

        Raises:
            ConfigurationError: the exchange does not exist.
            ConnectionLost: the connection dropped while subscribing.
        """

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete every ready message of a queue; return how many.

        Raises:
            QueueNotFound: the queue does not exist.
        """

    @abc.abstractmethod
    async def delete_queue(self, queue: str) -> None:
        """Delete a queue (tests and tooling only). Idempotent."""
