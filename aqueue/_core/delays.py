"""Broker-side delays: the arithmetic and the binary delay levels (pure: no I/O, no clock).

A delayed job (`enqueue_in`, `enqueue_at`, a retry's backoff) waits in RabbitMQ, never in a
worker. Level L is a queue whose messages all wait exactly ``DELAY_UNIT_MS * 2**L`` (a fixed
``x-message-ttl``, so the queue is FIFO by construction: per-message TTLs only expire at the
head). A delay is spelled in binary in the routing key, most significant level first, then
the destination::

    "0.0.1. ... .1.orders"      (DELAY_LEVELS words of 0/1, then the logical queue)

Every level has a topic exchange. A message whose bit L is 1 goes into level L's queue and,
when its TTL expires, is dead-lettered into exchange L-1 with its routing key unchanged; a
message whose bit L is 0 passes straight to exchange L-1 through an exchange-to-exchange
binding. Below level 0 the delivery exchange routes on the destination words into the work
queue. Any delay takes at most DELAY_LEVELS hops, one per set bit, and a long delay never
sits in front of a short one because each queue holds messages of one TTL only. The measured
precision, and the traps this avoids, are on the retries and RabbitMQ-behaviour pages.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Protocol

from aqueue._core.checks import is_number
from aqueue._core.topology import (
    ArgumentValue,
    BindingSpec,
    ExchangeSpec,
    QueueSpec,
    QueueType,
    Topology,
    TopologyNames,
)
from aqueue.exceptions import ConfigurationError

#: The smallest delay step: 10 ms, so sub-second delays need no separate mechanism.
DELAY_UNIT_MS = 10
#: 28 levels of 10 ms reach 2**28 * 10 ms ≈ 31 days.
DELAY_LEVELS = 28
MAX_DELAY_MS = ((1 << DELAY_LEVELS) - 1) * DELAY_UNIT_MS
#: The longest delay in seconds (about 31 days): the bound of every delay and backoff option.
MAX_DELAY_SECONDS = MAX_DELAY_MS / 1000


class _QueueKind(Protocol):
    """What the level queues take from the queue settings (`QueueSettings` has it)."""

    @property
    def queue_type(self) -> QueueType: ...


def delay_to_ms(delay: object) -> int:
    """Milliseconds of a delay given as seconds or a timedelta, rounded up.

    Raises:
        ConfigurationError: not a number or timedelta, negative, or over the longest delay.
    """
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if not is_number(seconds, at_least=0):
        raise ConfigurationError(
            f"delay must be a number of seconds >= 0 or a timedelta, not {delay!r}"
        )
    milliseconds = math.ceil(seconds * 1000)
    if milliseconds > MAX_DELAY_MS:
        raise ConfigurationError(
            f"delay of {seconds}s is over the longest delay, {MAX_DELAY_MS // 1000}s (~31 days)"
        )
    return milliseconds


def eta_to_delay_ms(eta: object, now: float) -> int:
    """Milliseconds from `now` (Unix seconds) to a timezone-aware datetime; 0 if it is past.

    Raises:
        ConfigurationError: not a datetime, naive, or further than the longest delay.
    """
    if not isinstance(eta, dt.datetime):
        raise ConfigurationError(f"eta must be a datetime, not {eta!r}")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise ConfigurationError(
            f"eta {eta.isoformat()} is naive: give a timezone-aware datetime "
            "(e.g. datetime.now(timezone.utc) + timedelta(...))"
        )
    return delay_to_ms(max(0.0, eta.timestamp() - now))


def delay_units(delay_ms: int) -> int:
    """The number of 10 ms units a delay takes, rounded up so that a job is never early.

    Rounded up with a millisecond to spare per level it passes through: RabbitMQ expires a
    message once its clock, in whole milliseconds, reaches the message's arrival plus the
    level's TTL, which can be up to a millisecond early at each level (measured: a job 1.4 ms
    early after the hops of a random delay).
    """
    if delay_ms <= 0:
        return 0
    units = -(-delay_ms // DELAY_UNIT_MS)
    while units * DELAY_UNIT_MS - delay_ms < units.bit_count():  # one hop per set bit
        units += 1
    return min(units, (1 << DELAY_LEVELS) - 1)


def delay_routing_key(units: int, queue: str) -> str:
    """The routing key that spells `units` in binary, most significant level first."""
    bits = format(units, f"0{DELAY_LEVELS}b")
    if len(bits) > DELAY_LEVELS:
        raise ConfigurationError(f"a delay of {units} units is over the longest delay")
    return ".".join(bits) + "." + queue


def entry_exchange(names: TopologyNames) -> str:
    """Where delayed messages are published: the top level's exchange."""
    return names.delay_exchange(DELAY_LEVELS - 1)


def job_route(names: TopologyNames, queue: str, delay_ms: int) -> tuple[str, str]:
    """The exchange and routing key that bring a job to `queue` after `delay_ms`."""
    units = delay_units(delay_ms)
    if units == 0:
        return names.exchange, queue
    return entry_exchange(names), delay_routing_key(units, queue)


def _level_pattern(level: int, bit: str) -> str:
    # bit `level` is word number DELAY_LEVELS-1-level (most significant first)
    words = ["*"] * DELAY_LEVELS
    words[DELAY_LEVELS - 1 - level] = bit
    return ".".join(words) + ".#"


def delay_topology(names: TopologyNames, settings: _QueueKind) -> Topology:
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
            # at-least-once dead-lettering only holds with reject-publish; with the default
            # drop-head RabbitMQ silently falls back to at-most-once
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
