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
    """A binding of `queue` to `exchange` under `routing_key`."""

    queue: str
    exchange: str
    routing_key: str


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


_T = TypeVar("_T")


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


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


def validate_name(name: str, *, what: str = "queue name") -> str:
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


def queue_topology(names: TopologyNames, queue: str, settings: QueueSettings) -> Topology:
    """Everything one logical queue needs: exchanges, work queue, dead-letter queue, bindings."""
    validate_name(queue)
    work = names.work_queue(queue)
    dead = names.dead_letter_queue(queue)
    return Topology(
        exchanges=(
            ExchangeSpec(names.exchange, "direct"),
            ExchangeSpec(names.dead_letter_exchange, "direct"),
        ),
        queues=(
            QueueSpec(work, work_queue_arguments(names, queue, settings)),
            # The dead-letter queue has no dead-letter exchange of its own: nothing leaves it
            # except through replay (publish confirmed, then ack).
            QueueSpec(dead, {"x-queue-type": settings.queue_type}),
        ),
        bindings=(
            BindingSpec(work, names.exchange, queue),
            BindingSpec(dead, names.dead_letter_exchange, queue),
        ),
    )
