"""What aqueue declares on a broker, as pure data: names, and the declaration vocabulary.

Nothing here talks to a broker: the transport turns a `Topology` into declarations. Every name
shares a prefix (default ``aqueue``) so that several applications, or several test runs, can
share one virtual host without touching each other's queues. Which queues a logical queue
needs is in `aqueue._core.queues`, the delay levels in `aqueue._core.delays`; the topology
page documents all of it.
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
_RESERVED_ENDINGS = (".dlq", ".quarantine", ".deferred")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
_FAIR_SHARD = re.compile(r"\.fair\.[0-9]+$")  # a fair-share shard: "{queue}.fair.{n}"


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

    def quarantine_queue(self, queue: str) -> str:
        """The broker name of a logical queue's quarantine: redelivered jobs, run alone."""
        return f"{self.prefix}.{queue}.quarantine"

    def deferred_queue(self, queue: str) -> str:
        """The broker name of a logical queue's deferred jobs (over a rate limit or a cap)."""
        return f"{self.prefix}.{queue}.deferred"

    def delay_exchange(self, level: int) -> str:
        """The topic exchange of one delay level; delayed messages enter at the top level."""
        return f"{self.prefix}.delay.{level}"

    def delay_queue(self, level: int) -> str:
        """The fixed-TTL queue of one delay level."""
        return f"{self.prefix}.delay.{level}.wait"

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
    if what == "queue name" and (
        name.endswith(_RESERVED_ENDINGS) or name.startswith("delay.") or _FAIR_SHARD.search(name)
    ):
        raise ConfigurationError(
            f"queue name {name!r} would collide with aqueue's own queues (names ending in "
            "'.dlq', '.quarantine', '.deferred' or '.fair.<n>' and starting with 'delay.' "
            "are reserved)"
        )
    return name
