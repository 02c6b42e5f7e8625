"""Every exchange, queue, binding and header name aqueue uses, as pure data.

Nothing here talks to a broker: the transport turns a `Topology` into declarations.
Every name shares a prefix (default ``aqueue``) so that several applications, or several
test runs, can share one virtual host without touching each other's queues.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, TypeVar

from aqueue.exceptions import ConfigurationError

QueueType: TypeAlias = Literal["quorum", "classic"]
ExchangeType: TypeAlias = Literal["direct", "topic", "fanout", "headers"]
ArgumentValue: TypeAlias = str | int | bool

#: Longest logical queue name. AMQP short strings stop at 255 bytes; delayed messages
#: (see the retries page) spell up to 28 delay bits before the destination in the routing key.
MAX_QUEUE_NAME_BYTES = 199
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")

# Header names of the wire format (documented on the "wire format" page).
HEADER_TASK = "aqueue-task"
HEADER_ATTEMPT = "aqueue-attempt"
HEADER_ENQUEUED_AT = "aqueue-enqueued-at"  # integer milliseconds since the Unix epoch
HEADER_ETA = "aqueue-eta"  # integer milliseconds since the Unix epoch, absent when not delayed
HEADER_VERSION = "aqueue-version"
HEADER_QUEUE = "aqueue-queue"  # the logical queue the job was sent to
HEADER_OPTIONS = "aqueue-options"  # run-time options changed at enqueue (timeout, retries, ...)
HEADER_HISTORY = "aqueue-history"  # earlier failed attempts: [{attempt, type, message, at}]
# Dead-letter headers, written by the worker on the copy it sends to the dead-letter queue.
HEADER_DEAD_REASON = "aqueue-dead-reason"
HEADER_DEAD_EXC_TYPE = "aqueue-dead-exception-type"
HEADER_DEAD_EXC_MESSAGE = "aqueue-dead-exception-message"
HEADER_DEAD_TRACEBACK = "aqueue-dead-traceback"
HEADER_DEAD_ATTEMPTS = "aqueue-dead-attempts"
HEADER_DEAD_FIRST_FAILED_AT = "aqueue-dead-first-failed-at"
HEADER_DEAD_LAST_FAILED_AT = "aqueue-dead-last-failed-at"
HEADER_DEAD_QUEUE = "aqueue-dead-queue"

#: Headers RabbitMQ adds on dead-lettering and redelivery. They must never be copied into a
#: message aqueue publishes again: copied ``x-death`` headers make RabbitMQ's dead-letter
#: cycle detection drop messages (see the retries page).
BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange to declare."""

    name: str
    type: ExchangeType = "direct"
    durable: bool = True


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue to declare, with its `x-` arguments."""

    name: str
    arguments: Mapping[str, ArgumentValue] = field(default_factory=dict)
    durable: bool = True


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """A binding of `queue` (or, with `to_exchange`, of an exchange) to `exchange`."""

    queue: str
    exchange: str
    routing_key: str
    #: `queue` names an exchange: an exchange-to-exchange binding (a RabbitMQ extension).
    to_exchange: bool = False


@dataclass(frozen=True, slots=True)
class Topology:
    """A set of declarations; the transport declares them idempotently, in this order."""

    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    bindings: tuple[BindingSpec, ...] = ()

    def __add__(self, other: Topology) -> Topology:
        return Topology(
            exchanges=_unique(self.exchanges + other.exchanges),
            queues=_unique(self.queues + other.queues),
            bindings=_unique(self.bindings + other.bindings),
        )


_T = TypeVar("_T", ExchangeSpec, QueueSpec, BindingSpec)


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    # queue arguments are a dict (unhashable): deduplicate on the printed form
    seen: dict[str, _T] = {}
    for item in items:
        seen.setdefault(repr(item), item)
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How work queues are declared.

    Args:
        queue_type: ``"quorum"`` (replicated, delivery limit, at-least-once dead-lettering) or
            ``"classic"``.
        delivery_limit: quorum only: after this many deliveries that ended without an ack
            (a worker crashed or lost its connection each time) the broker dead-letters the
            message with reason ``delivery_limit``.
    """

    queue_type: QueueType = "quorum"
    delivery_limit: int = 10

    def __post_init__(self) -> None:
        if self.queue_type not in ("quorum", "classic"):
            raise ConfigurationError(
                f"queue_type must be 'quorum' or 'classic', not {self.queue_type!r}"
            )
        if self.delivery_limit < 1:
            raise ConfigurationError(f"delivery_limit must be >= 1, not {self.delivery_limit}")


@dataclass(frozen=True, slots=True)
class TopologyNames:
    """The broker names derived from one prefix."""

    prefix: str = "aqueue"

    def __post_init__(self) -> None:
        validate_name(self.prefix, what="prefix")

    @property
    def exchange(self) -> str:
        """The direct exchange every job is published to, routed by logical queue name."""
        return self.prefix

    @property
    def dead_letter_exchange(self) -> str:
        """The direct exchange dead letters go through, routed by logical queue name."""
        return f"{self.prefix}.dlx"

    def work_queue(self, queue: str) -> str:
        """The broker name of a logical work queue."""
        return f"{self.prefix}.{queue}"

    def dead_letter_queue(self, queue: str) -> str:
        """The broker name of a logical queue's dead-letter queue."""
        return f"{self.prefix}.{queue}.dlq"

    def delay_exchange(self, level: int) -> str:
        """The topic exchange of one delay level; delayed messages enter at the top level."""
        return f"{self.prefix}.delay.{level}"

    def delay_queue(self, level: int) -> str:
        """The fixed-TTL queue of one delay level."""
        return f"{self.prefix}.delay.{level}.wait"

    @property
    def delay_entry_exchange(self) -> str:
        """Where delayed messages are published: the top level's exchange."""
        return self.delay_exchange(DELAY_LEVELS - 1)

    @property
    def delay_delivery_exchange(self) -> str:
        """Below level 0: routes delayed messages into their work queues."""
        return f"{self.prefix}.delay.deliver"


def validate_name(name: object, *, what: str = "queue name") -> str:
    """Check a logical queue name or prefix; return it unchanged.

    Raises:
        ConfigurationError: the name is empty, too long or has characters outside
            ``[A-Za-z0-9_.:-]``.
    """
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        raise ConfigurationError(
            f"{what} {name!r} must be non-empty and use only letters, digits and _ . : -"
        )
    if len(name.encode()) > MAX_QUEUE_NAME_BYTES:
        raise ConfigurationError(f"{what} {name!r} is longer than {MAX_QUEUE_NAME_BYTES} bytes")
    if what == "queue name" and (name.endswith(".dlq") or name.startswith("delay.")):
        raise ConfigurationError(
            f"queue name {name!r} would collide with aqueue's own queues "
            "(names ending in '.dlq' and starting with 'delay.' are reserved)"
        )
    return name


def work_queue_arguments(
    names: TopologyNames, queue: str, settings: QueueSettings
) -> dict[str, ArgumentValue]:
    """The `x-` arguments of a work queue."""
    arguments: dict[str, ArgumentValue] = {
        "x-queue-type": settings.queue_type,
        "x-dead-letter-exchange": names.dead_letter_exchange,
        "x-dead-letter-routing-key": queue,
    }
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = settings.delivery_limit
        # at-least-once dead-lettering only holds with reject-publish; with the default
        # drop-head RabbitMQ silently falls back to at-most-once.
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    return arguments


#: Deliveries a dead letter may have before a quorum queue would drop it. Reading a
#: dead-letter queue (list, find) takes messages and gives them back, and every give-back
#: counts; RabbitMQ 4.x defaults quorum queues to a limit of 20, and with no dead-letter
#: exchange the broker would then drop the message. Set explicitly, far out of reach.
DEAD_LETTER_DELIVERY_LIMIT = 1_000_000_000


def dead_letter_queue_arguments(settings: QueueSettings) -> dict[str, ArgumentValue]:
    """The `x-` arguments of a dead-letter queue."""
    arguments: dict[str, ArgumentValue] = {"x-queue-type": settings.queue_type}
    if settings.queue_type == "quorum":
        arguments["x-delivery-limit"] = DEAD_LETTER_DELIVERY_LIMIT
    return arguments


def queue_topology(names: TopologyNames, queue: str, settings: QueueSettings) -> Topology:
    """Everything one logical queue needs: exchanges, work queue, dead-letter queue, bindings."""
    validate_name(queue)
    work = names.work_queue(queue)
    dead = names.dead_letter_queue(queue)
    if len(dead.encode()) > 255:  # AMQP short strings
        raise ConfigurationError(f"queue name {dead!r} (prefix + queue) is over 255 bytes")
    return Topology(
        exchanges=(
            ExchangeSpec(names.exchange, "direct"),
            ExchangeSpec(names.dead_letter_exchange, "direct"),
            ExchangeSpec(names.delay_delivery_exchange, "topic"),
        ),
        queues=(
            QueueSpec(work, work_queue_arguments(names, queue, settings)),
            # The dead-letter queue has no dead-letter exchange of its own: nothing leaves it
            # except through replay (publish confirmed, then ack).
            QueueSpec(dead, dead_letter_queue_arguments(settings)),
        ),
        bindings=(
            BindingSpec(work, names.exchange, queue),
            BindingSpec(dead, names.dead_letter_exchange, queue),
            # bound before any delayed publish: a delayed message for an unbound destination
            # would wait in the last delay level (RABBITMQ.md)
            delayed_delivery_binding(names, queue),
        ),
    )


# -- broker-side delays: binary delay levels ------------------------------------------------
#
# Level L is a queue whose messages all wait exactly DELAY_UNIT * 2**L (a fixed x-message-ttl,
# so the queue is FIFO by construction: per-message TTLs only expire at the head). A delay is
# spelled in binary in the routing key, most significant level first, then the destination:
#
#     "0.0.1. ... .1.orders"      (DELAY_LEVELS words of 0/1, then the logical queue)
#
# Every level has a topic exchange. A message whose bit L is 1 goes into level L's queue and,
# when its TTL expires, is dead-lettered into exchange L-1 with its routing key unchanged; a
# message whose bit L is 0 passes straight to exchange L-1 through an exchange-to-exchange
# binding. Below level 0 the delivery exchange routes on the destination words into the work
# queue. Any delay takes at most DELAY_LEVELS hops, one per set bit, and a long delay never
# sits in front of a short one because each queue holds messages of one TTL only.

#: The smallest delay step: 10 ms, so sub-second delays need no separate mechanism.
DELAY_UNIT_MS = 10
#: 28 levels of 10 ms reach 2**28 * 10 ms ≈ 31 days.
DELAY_LEVELS = 28
MAX_DELAY_MS = ((1 << DELAY_LEVELS) - 1) * DELAY_UNIT_MS


def delay_units(delay_ms: int) -> int:
    """The number of 10 ms units a delay takes, rounded up (a job is never early)."""
    if delay_ms <= 0:
        return 0
    return min(-(-delay_ms // DELAY_UNIT_MS), (1 << DELAY_LEVELS) - 1)


def delay_routing_key(units: int, queue: str) -> str:
    """The routing key that spells `units` in binary, most significant level first."""
    bits = format(units, f"0{DELAY_LEVELS}b")
    if len(bits) > DELAY_LEVELS:
        raise ConfigurationError(f"a delay of {units} units is over the longest delay")
    return ".".join(bits) + "." + queue


def _level_pattern(level: int, bit: str) -> str:
    # bit `level` is word number DELAY_LEVELS-1-level (most significant first)
    words = ["*"] * DELAY_LEVELS
    words[DELAY_LEVELS - 1 - level] = bit
    return ".".join(words) + ".#"


def delay_topology(names: TopologyNames, settings: QueueSettings) -> Topology:
    """The delay levels: one topic exchange and one fixed-TTL queue per level."""
    exchanges = [ExchangeSpec(names.delay_delivery_exchange, "topic")]
    queues = []
    bindings = []
    for level in range(DELAY_LEVELS):
        exchange = names.delay_exchange(level)
        below = names.delay_exchange(level - 1) if level else names.delay_delivery_exchange
        queue = names.delay_queue(level)
        arguments: dict[str, ArgumentValue] = {
            "x-queue-type": settings.queue_type,
            "x-message-ttl": DELAY_UNIT_MS << level,
            "x-dead-letter-exchange": below,
        }
        if settings.queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        exchanges.append(ExchangeSpec(exchange, "topic"))
        queues.append(QueueSpec(queue, arguments))
        bindings.append(BindingSpec(queue, exchange, _level_pattern(level, "1")))
        bindings.append(BindingSpec(below, exchange, _level_pattern(level, "0"), to_exchange=True))
    return Topology(tuple(exchanges), tuple(queues), tuple(bindings))


def delayed_delivery_binding(names: TopologyNames, queue: str) -> BindingSpec:
    """Binds a work queue to the delay delivery exchange: DELAY_LEVELS ``*`` words, then its name.

    One ``*`` per level (never ``#``): ``#.orders`` would also match ``my.orders``.
    """
    return BindingSpec(
        names.work_queue(queue), names.delay_delivery_exchange, "*." * DELAY_LEVELS + queue
    )


def job_route(names: TopologyNames, queue: str, delay_ms: int) -> tuple[str, str]:
    """The exchange and routing key that bring a job to `queue` after `delay_ms`."""
    units = delay_units(delay_ms)
    if units == 0:
        return names.exchange, queue
    return names.delay_entry_exchange, delay_routing_key(units, queue)
