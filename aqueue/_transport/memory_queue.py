"""One queue of the in-memory broker: ready messages in order, consumers, ``x-`` arguments.

The rules for order, requeue, TTL and overflow were measured on RabbitMQ 3.10.8
(docs/rabbitmq-behaviour.md).
The queue calls back into its virtual host for what crosses queues: dead-lettering, and
scheduling deliveries and timers on the event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aqueue._core.topology import ArgumentValue, QueueSpec
from aqueue._core.types import HeaderValue
from aqueue.exceptions import EncodeError

if TYPE_CHECKING:
    from aqueue._transport.memory_broker import VirtualHost


def copy_headers(headers: Mapping[str, HeaderValue]) -> dict[str, HeaderValue]:
    """A deep copy, so that no caller can change a stored message through a shared table."""
    return {key: _copy(value) for key, value in headers.items()}


def check_sendable(headers: Mapping[str, HeaderValue]) -> None:
    """Refuse, as the AMQP transport does before sending, what RabbitMQ cannot hold.

    Raises:
        EncodeError: a key over 255 bytes, an integer beyond 64 bits, a float that is not
            finite (RabbitMQ would close the connection).
    """
    for key, value in headers.items():
        if len(key.encode(errors="replace")) > 255:
            raise EncodeError(f"header {key[:40]!r}... cannot be sent: a key over 255 bytes")
        problem = _unsendable(value)
        if problem is not None:
            raise EncodeError(f"header {key!r} cannot be sent: {problem}")


def _unsendable(value: HeaderValue) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return f"{value} is beyond 64 bits"
    if isinstance(value, dict):
        check_sendable(value)
    if isinstance(value, list):
        for item in value:
            problem = _unsendable(item)
            if problem is not None:
                return problem
    return None


def _copy(value: HeaderValue) -> HeaderValue:
    if isinstance(value, dict):
        return copy_headers(value)
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


@dataclass(eq=False, slots=True)
class StoredMessage:
    """A message as one queue holds it."""

    body: bytes
    headers: dict[str, HeaderValue]
    message_id: str
    content_type: str
    timestamp: int | None
    #: The exchange and routing key it was last published or dead-lettered with.
    exchange: str
    routing_key: str
    #: Its place in the queue: classic queues requeue a message where it was.
    seq: int = 0
    expires_at: float | None = None
    #: Deliveries that ended without an ack (quorum queues count them).
    delivery_count: int = 0
    redelivered: bool = False


class Receiver(Protocol):
    """A consumer, as the queue that delivers to it sees it."""

    def has_capacity(self) -> bool:
        """False while `prefetch` deliveries are unsettled."""

    def receive(self, queue: MemoryQueue, message: StoredMessage) -> None:
        """Take a message from `queue` (now unsettled) and hand it to the application."""


class MemoryQueue:
    """One queue: its ready messages in order, its consumers and its ``x-`` arguments."""

    def __init__(self, vhost: VirtualHost, spec: QueueSpec) -> None:
        self.vhost = vhost
        self.spec = spec
        self.name = spec.name
        self.deleted = False
        arguments = spec.arguments
        self.quorum = arguments.get("x-queue-type") == "quorum"
        ttl = integer(arguments, "x-message-ttl")
        self.ttl = None if ttl is None else ttl / 1000
        self.max_length = integer(arguments, "x-max-length")
        self.overflow = str(arguments.get("x-overflow", "drop-head"))
        self.delivery_limit = integer(arguments, "x-delivery-limit") if self.quorum else None
        exchange = arguments.get("x-dead-letter-exchange")
        self.dead_letter_exchange = None if exchange is None else str(exchange)
        routing_key = arguments.get("x-dead-letter-routing-key")
        self.dead_letter_routing_key = None if routing_key is None else str(routing_key)
        self.single_active_consumer = arguments.get("x-single-active-consumer") is True
        self.consumers: deque[Receiver] = deque()
        self._ready: deque[StoredMessage] = deque()
        # Quorum queues serve returned messages (by a nack or a closed channel) first, in the
        # order they came back; classic queues put them back where they were (both measured).
        self._returns: deque[StoredMessage] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key: tuple[float, asyncio.AbstractEventLoop] | None = None

    def __len__(self) -> int:
        return len(self._returns) + len(self._ready)

    def head(self) -> StoredMessage | None:
        if self._returns:
            return self._returns[0]
        return self._ready[0] if self._ready else None

    def pop(self) -> StoredMessage | None:
        """Take the head (expired heads are dead-lettered first)."""
        self.expire()
        if self._returns:
            return self._returns.popleft()
        return self._ready.popleft() if self._ready else None

    def offer(self, message: StoredMessage) -> bool:
        """Enqueue a message routed here; False when the queue is full and refuses it."""
        full = self.max_length is not None and len(self) >= self.max_length
        if full and self.overflow != "drop-head":
            if self.overflow == "reject-publish-dlx":
                self.vhost.dead_letter(self, message, "maxlen")
            return False
        message.seq = self.vhost.next_seq()
        if self.ttl is not None:
            message.expires_at = self.vhost.now() + self.ttl
        self._ready.append(message)
        while self.max_length is not None and len(self) > self.max_length:
            dropped = (self._returns or self._ready).popleft()
            self.vhost.dead_letter(self, dropped, "maxlen")
        self.vhost.wake(self)
        return True

    def give_back(self, message: StoredMessage, *, nacked: bool) -> None:
        """Requeue an unsettled message: rejected with requeue, or its connection closed."""
        if self.deleted:
            return
        message.redelivered = True
        if not self.quorum:
            _insert_in_order(self._ready, message)
        else:
            message.delivery_count += 1
            # RabbitMQ's rule: dead-letter once the count *exceeds* the limit, so a message is
            # delivered limit + 1 times (measured: limit 2 gives counts 0, 1, 2, then gone).
            if self.delivery_limit is not None and message.delivery_count > self.delivery_limit:
                self.vhost.dead_letter(self, message, "delivery_limit")
                return
            if nacked and self.delivery_limit is None:
                message.seq = self.vhost.next_seq()  # measured: to the back of the queue
                self._ready.append(message)
            else:
                self._returns.append(message)
        self.vhost.wake(self)

    def expire(self) -> None:
        """Dead-letter expired messages at the head; TTL applies at the head only."""
        if self.ttl is None:
            return
        now = self.vhost.now()
        while (head := self.head()) is not None and _expired(head, now):
            (self._returns or self._ready).popleft()
            self.vhost.dead_letter(self, head, "expired")

    def purge(self) -> int:
        count = len(self)
        self._ready.clear()
        self._returns.clear()
        return count

    def dispatch(self) -> None:
        """Hand ready messages to consumers with room, round-robin."""
        # Check for a message first: picking a consumer rotates the round-robin.
        while len(self) and not self.deleted and (consumer := self._next_consumer()) is not None:
            message = self.pop()
            if message is None:
                return
            consumer.receive(self, message)

    def _next_consumer(self) -> Receiver | None:
        if self.single_active_consumer:
            active = self.consumers[0] if self.consumers else None
            return active if active is not None and active.has_capacity() else None
        for _ in range(len(self.consumers)):
            consumer = self.consumers[0]
            self.consumers.rotate(-1)
            if consumer.has_capacity():
                return consumer
        return None

    def arm_timer(self) -> None:
        """(Re)arm the loop timer that expires the head when its TTL is up."""
        head = self.head()
        deadline = None if head is None or self.deleted else head.expires_at
        if deadline is None:
            self._cancel_timer()
            return
        loop = asyncio.get_running_loop()
        if self._timer_key == (deadline, loop):
            return
        self._cancel_timer()
        self._timer_key = (deadline, loop)
        self._timer = loop.call_later(max(0.0, deadline - self.vhost.now()), self._fire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_key = None

    def _fire(self) -> None:
        self._timer = self._timer_key = None
        self.expire()
        self.arm_timer()


def _expired(message: StoredMessage, now: float) -> bool:
    return message.expires_at is not None and message.expires_at <= now


def _insert_in_order(messages: deque[StoredMessage], message: StoredMessage) -> None:
    for index, other in enumerate(messages):
        if other.seq > message.seq:
            messages.insert(index, message)
            return
    messages.append(message)


def integer(arguments: Mapping[str, ArgumentValue], key: str) -> int | None:
    value = arguments.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
