"""The in-memory broker behind `MemoryTransport`: one RabbitMQ virtual host, in process.

Every rule here was measured on RabbitMQ 3.10.8 (see docs/rabbitmq-behaviour.md) and is
checked against a real node by ``tests/conformance``. `MemoryBroker` is the public face (the
test hooks); the state and the rules live in `VirtualHost` (exchanges, bindings, routing,
dead-lettering) and in
`MemoryQueue` (order, requeue, TTL, overflow, round-robin). It is plain synchronous state plus
asyncio loop callbacks, never tasks:

- deliveries are handed to consumers by a callback scheduled with ``loop.call_soon`` (a real
  broker pushes them from outside the consumer's tasks too, and ``on_delivery`` is synchronous);
- each queue with ``x-message-ttl`` arms a ``loop.call_later`` timer for the expiry of its head.

Both belong to the broker, not to a connection, so a delayed message still moves after the
transport that published it has closed; and no cancel scope is left open on a caller's task
between ``connect()`` and ``aclose()`` (a task group opened in ``connect()`` and closed in
``aclose()`` breaks as soon as a caller wraps ``connect()`` in ``anyio.fail_after``, or closes
from another task).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

from aqueue._core.topology import ExchangeSpec, QueueSpec, Topology
from aqueue._core.types import HeaderValue
from aqueue._transport.base import OutgoingMessage
from aqueue._transport.memory_queue import MemoryQueue, StoredMessage, copy_headers, integer
from aqueue.exceptions import ConfigurationError, PublishNacked, QueueNotFound, Unroutable

logger = logging.getLogger(__name__)

# The arguments RabbitMQ compares when a queue is declared again (406 if they differ); others,
# such as an unknown "x-foo", are accepted whatever their value, as on a real node.
_EQUIVALENT_ARGUMENTS = (
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
)
_INTEGER_ARGUMENTS = ("x-delivery-limit", "x-max-length", "x-message-ttl")
_OVERFLOWS = ("drop-head", "reject-publish", "reject-publish-dlx")


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more; ``""`` has no word."""
    words = routing_key.split(".") if routing_key else []
    parts = pattern.split(".") if pattern else []

    def closure(positions: set[int]) -> set[int]:
        # a "#" may match no word at all, so the position after it is reachable too
        reachable = set()
        for position in positions:
            reachable.add(position)
            while position < len(parts) and parts[position] == "#":
                position += 1
                reachable.add(position)
        return reachable

    positions = closure({0})
    for word in words:
        following = set()
        for position in positions:
            if position == len(parts):
                continue
            if parts[position] == "#":
                following.add(position)
            elif parts[position] in ("*", word):
                following.add(position + 1)
        positions = closure(following)
    return len(parts) in positions


def _dead_letter_headers(
    message: StoredMessage, *, queue: str, reason: str
) -> dict[str, HeaderValue]:
    """RabbitMQ 3.10's ``x-death`` bookkeeping (rabbit_dead_letter:update_x_death_header)."""
    headers = copy_headers(message.headers)
    death: dict[str, HeaderValue] = {
        "count": 1,
        "reason": reason,
        "queue": queue,
        # AMQP carries a timestamp here; aqueue's header values have no datetime, so whole
        # seconds since the Unix epoch, as in OutgoingMessage.timestamp.
        "time": int(time.time()),
        "exchange": message.exchange,
        "routing-keys": [message.routing_key],
    }
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        # Only the first death sets the x-first-death-* headers (overwriting any a client set).
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = message.exchange
        headers["x-death"] = [death]
        return headers
    for index, entry in enumerate(deaths):
        if (
            isinstance(entry, dict)
            and entry.get("queue") == queue
            and entry.get("reason") == reason
        ):
            # The same queue and reason again: the old entry counts it and moves to the front.
            count = entry.get("count")
            death = {**entry, "count": (count if isinstance(count, int) else 0) + 1}
            del deaths[index]
            break
    headers["x-death"] = [death, *deaths]
    return headers


def _is_cycle(queue: str, deaths: list[HeaderValue]) -> bool:
    """RabbitMQ drops a dead letter reaching `queue` again without a rejection on the way."""
    for index, entry in enumerate(deaths):
        if isinstance(entry, dict) and entry.get("queue") == queue:
            return all(
                isinstance(seen, dict) and seen.get("reason") != "rejected"
                for seen in deaths[: index + 1]
            )
    return False


class _Connection(Protocol):
    def simulate_connection_loss(self, *, reconnect_after: float | None = 0.0) -> None: ...


def _check_queue_spec(spec: QueueSpec) -> None:
    """Refuse what RabbitMQ refuses at declaration (406), and what the fake cannot do."""
    arguments = spec.arguments
    queue_type = arguments.get("x-queue-type", "classic")
    if queue_type not in ("classic", "quorum"):
        raise ConfigurationError(f"queue {spec.name!r}: MemoryBroker has no {queue_type!r} queues")
    if queue_type == "quorum" and not spec.durable:
        raise ConfigurationError(f"queue {spec.name!r}: quorum queues must be durable (406)")
    for key in _INTEGER_ARGUMENTS:
        value = arguments.get(key)
        if value is not None and (integer(arguments, key) is None or int(value) < 0):
            raise ConfigurationError(f"queue {spec.name!r}: {key} must be an int >= 0 (406)")
    if arguments.get("x-overflow", "drop-head") not in _OVERFLOWS:
        raise ConfigurationError(f"queue {spec.name!r}: x-overflow must be one of {_OVERFLOWS}")


def _inequivalence(old: QueueSpec, new: QueueSpec) -> str | None:
    if old.durable != new.durable:
        return f"durable is {old.durable}"
    for key in _EQUIVALENT_ARGUMENTS:
        default = "classic" if key == "x-queue-type" else None
        current, declared = old.arguments.get(key, default), new.arguments.get(key, default)
        if current != declared or type(current) is not type(declared):
            return f"{key} is {current!r}, declared {declared!r}"
    return None


class VirtualHost:
    """The state and the rules behind a `MemoryBroker`; its transports and queues use this."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.connections: dict[_Connection, None] = {}
        self._exchanges: dict[str, ExchangeSpec] = {}
        # exchange name -> {(queue name, binding key)}; a dict keeps declaration order
        self._bindings: dict[str, dict[tuple[str, str], None]] = {}
        # exchange name -> {(destination exchange, binding key)}
        self._exchange_bindings: dict[str, dict[tuple[str, str], None]] = {}
        self._queues: dict[str, MemoryQueue] = {}
        self._seq = itertools.count(1)
        self._to_dispatch: dict[MemoryQueue, None] = {}
        self._dispatch_loop: asyncio.AbstractEventLoop | None = None

    def run_timers(self) -> None:
        for queue in list(self._queues.values()):
            queue.expire()
            queue.arm_timer()

    def now(self) -> float:
        return self._clock()

    def next_seq(self) -> int:
        return next(self._seq)

    def queue(self, name: str) -> MemoryQueue:
        try:
            return self._queues[name]
        except KeyError:
            raise QueueNotFound(f"queue {name!r} does not exist (404 NOT_FOUND)") from None

    def declare(self, topology: Topology) -> None:
        for exchange in topology.exchanges:
            self._declare_exchange(exchange)
        for spec in topology.queues:
            _check_queue_spec(spec)
            existing = self._queues.get(spec.name)
            if existing is None:
                self._queues[spec.name] = MemoryQueue(self, spec)
            elif (difference := _inequivalence(existing.spec, spec)) is not None:
                raise ConfigurationError(
                    f"queue {spec.name!r} exists with other arguments: {difference}"
                    " (406 PRECONDITION_FAILED)"
                )
        for binding in topology.bindings:
            if binding.exchange not in self._exchanges:
                raise ConfigurationError(f"no exchange {binding.exchange!r} to bind to (404)")
            if binding.to_exchange:
                if binding.queue not in self._exchanges:
                    raise ConfigurationError(f"no exchange {binding.queue!r} to bind (404)")
                self._exchange_bindings[binding.exchange][(binding.queue, binding.routing_key)] = (
                    None
                )
                continue
            self.queue(binding.queue)
            self._bindings[binding.exchange][(binding.queue, binding.routing_key)] = None

    def _declare_exchange(self, spec: ExchangeSpec) -> None:
        if not spec.name:
            return  # the default exchange exists and may not be declared: skip it
        existing = self._exchanges.setdefault(spec.name, spec)
        self._bindings.setdefault(spec.name, {})
        self._exchange_bindings.setdefault(spec.name, {})
        if existing != spec:
            raise ConfigurationError(
                f"exchange {spec.name!r} exists as {existing.type} durable={existing.durable}"
                " (406 PRECONDITION_FAILED)"
            )

    def delete_queue(self, name: str) -> None:
        queue = self._queues.pop(name, None)
        if queue is None:
            return
        queue.deleted = True
        queue.purge()
        queue.consumers.clear()  # RabbitMQ cancels them (consumer cancel notification)
        queue.arm_timer()
        for bindings in self._bindings.values():
            for key in [key for key in bindings if key[0] == name]:
                del bindings[key]

    def route(self, exchange: str, routing_key: str) -> list[MemoryQueue] | None:
        """The queues a message goes to; ``None`` when the exchange does not exist."""
        if not exchange:
            queue = self._queues.get(routing_key)
            return [] if queue is None else [queue]
        if exchange not in self._exchanges:
            return None
        names: dict[str, None] = {}
        self._collect_queues(exchange, routing_key, names, visited=set())
        return [self._queues[name] for name in names]

    def _collect_queues(
        self, exchange: str, routing_key: str, names: dict[str, None], visited: set[str]
    ) -> None:
        # Exchange-to-exchange bindings route on; RabbitMQ visits each exchange once per publish.
        visited.add(exchange)
        spec = self._exchanges[exchange]

        def matches(key: str) -> bool:
            return (
                spec.type in ("fanout", "headers")
                or (spec.type == "direct" and key == routing_key)
                or (spec.type == "topic" and topic_matches(key, routing_key))
            )

        for queue_name, key in self._bindings[exchange]:
            if matches(key):
                names[queue_name] = None
        for target, key in self._exchange_bindings[exchange]:
            if target not in visited and target in self._exchanges and matches(key):
                self._collect_queues(target, routing_key, names, visited)

    def publish(self, message: OutgoingMessage) -> None:
        """Route and store a mandatory, confirmed publish."""
        queues = self.route(message.exchange, message.routing_key)
        if queues is None:
            # RabbitMQ closes the channel (404 NOT_FOUND): the message is not stored.
            raise Unroutable(f"no exchange {message.exchange!r} (404 NOT_FOUND)")
        if not queues:
            raise Unroutable(
                f"no queue bound to exchange {message.exchange!r} for routing key"
                f" {message.routing_key!r} (312 NO_ROUTE)"
            )
        refused = [
            queue.name
            for queue in queues
            if not queue.offer(
                StoredMessage(
                    body=message.body,
                    headers=copy_headers(message.headers),
                    message_id=message.message_id,
                    content_type=message.content_type,
                    timestamp=message.timestamp,
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                )
            )
        ]
        if refused:
            # A queue that refuses it nacks the publish; the other queues keep their copy.
            raise PublishNacked(f"queue {', '.join(refused)} is full (x-overflow) (basic.nack)")

    def dead_letter(self, queue: MemoryQueue, message: StoredMessage, reason: str) -> None:
        """Republish through the queue's dead-letter exchange, or drop like RabbitMQ does."""
        exchange = queue.dead_letter_exchange
        if exchange is None or queue.deleted:
            return
        routing_key = queue.dead_letter_routing_key
        if routing_key is None:
            routing_key = message.routing_key
        headers = _dead_letter_headers(message, queue=queue.name, reason=reason)
        deaths = headers["x-death"]
        targets = self.route(exchange, routing_key) or []
        if reason != "rejected" and isinstance(deaths, list):
            targets = [target for target in targets if not _is_cycle(target.name, deaths)]
        if not targets:
            logger.warning(
                "dead letter from %s (%s) dropped: exchange %r routes %r to no queue, or only"
                " in a cycle",
                queue.name,
                reason,
                exchange,
                routing_key,
            )
        for target in targets:
            target.offer(
                StoredMessage(
                    body=message.body,
                    headers=copy_headers(headers),
                    message_id=message.message_id,
                    content_type=message.content_type,
                    timestamp=message.timestamp,
                    exchange=exchange,
                    routing_key=routing_key,
                )
            )

    def wake(self, queue: MemoryQueue) -> None:
        """Something changed in `queue`: dispatch it on the next loop turn, re-arm its TTL."""
        if queue.ttl is not None:
            queue.arm_timer()
        loop = asyncio.get_running_loop()
        scheduled = self._dispatch_loop is loop and bool(self._to_dispatch)
        self._to_dispatch[queue] = None
        if not scheduled:
            # A broker can outlive an event loop (a module-level broker across tests): a turn
            # scheduled on a closed loop never runs, so schedule on the running one.
            self._dispatch_loop = loop
            loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        while self._to_dispatch:
            queue = next(iter(self._to_dispatch))
            del self._to_dispatch[queue]
            queue.dispatch()
            if queue.ttl is not None:
                queue.arm_timer()


class MemoryBroker:
    """An in-process RabbitMQ virtual host with RabbitMQ 3.10's semantics.

    Share one broker between the transports of a test (a producer's and a worker's), as
    several connections share a vhost. It holds exchanges (direct, topic, fanout; the default
    exchange ``""``), classic and quorum queues with their ``x-`` arguments (dead-letter
    exchange and routing key, ``x-message-ttl``, ``x-max-length`` with ``x-overflow``,
    ``x-delivery-limit``, ``x-single-active-consumer``), queue and exchange-to-exchange
    bindings, and the dead-lettering rules (``x-death`` headers, cycle detection). Not
    modelled: ``x-max-length-bytes``, priorities, per-message expiration, exclusive and
    auto-delete queues, streams, headers-exchange arguments (a headers binding matches every
    message), and
    at-least-once dead-lettering (a dead letter no queue takes is dropped, as on classic queues).

    Args:
        clock: seconds on a monotonic clock, for ``x-message-ttl``. Timers sleep in real time
            for ``deadline - clock()``; with a fake clock, advance it and call `run_timers`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        # Everything but the test hooks lives in a separate object, so that the public
        # surface of the broker is exactly what a test calls.
        self._vhost = VirtualHost(clock=clock)

    def drop_connections(self, *, reconnect_after: float | None = 0.0) -> None:
        """Drop every open connection, like ``rabbitmqctl close_all_connections``.

        Each transport requeues its unsettled deliveries and reconnects after
        `reconnect_after` seconds (``None``: not until its ``simulate_reconnect()``).
        """
        for connection in list(self._vhost.connections):
            connection.simulate_connection_loss(reconnect_after=reconnect_after)

    def run_timers(self) -> None:
        """Expire every message whose TTL is up by the clock now, then re-arm the timers."""
        self._vhost.run_timers()
