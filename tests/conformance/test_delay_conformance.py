"""The binary delay levels behave alike on the in-memory and the AMQP transport.

A delayed message is published to the top level's exchange with its delay spelled in bits in
the routing key (`job_route`); each set bit holds it in one fixed-TTL quorum queue, and below
level 0 it reaches its work queue. These tests check, on both transports, that it is never
early, that it visits exactly the levels of its set bits, and the trap RabbitMQ's dead-letter
cycle detection sets for a message delayed a second time (docs/rabbitmq-behaviour.md,
"Retries: the only safe path..."): a fresh copy goes through again, a copy that kept its
``x-death`` headers is lost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio
import pytest

from aqueue._core import delays
from aqueue._core import wire as t
from aqueue._core.config import QueueSettings
from aqueue._core.delays import delay_topology, job_route
from aqueue._core.queues import queue_topology
from aqueue._core.topology import TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._core.wire import Envelope, Failure, read_headers, retry_message
from aqueue._transport.base import Delivery, OutgoingMessage, Transport
from tests.conformance.helpers import WAIT, Inbox, TransportFactory

QUEUE = "jobs"
#: Delays (ms) whose unit counts have 0, 1, 2, 4, 4 and 7 set bits: 150 ms is 15 units
#: (levels 3, 2, 1, 0), 1,010 ms is 101 units (levels 6, 5, 2, 0), 1,270 ms is 127 units.
DELAYS_MS = (0, 10, 30, 150, 1010, 1270)
#: How late a delayed message may arrive in these tests: loose, for a loaded machine; the
#: integration tier measures the precision.
LATE = 1.0


class TimedInbox(Inbox):
    """An inbox that also notes when each delivery arrived (``time.monotonic()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}

    def __call__(self, delivery: Delivery) -> None:
        self.arrived[delivery.message_id or ""] = time.monotonic()
        super().__call__(delivery)


async def delay_levels(
    transport_factory: TransportFactory, names: TopologyNames
) -> tuple[Transport, TimedInbox]:
    """A transport with the delay levels and the work queue declared, and a consumer on it."""
    transport = await transport_factory()
    settings = QueueSettings()
    await transport_factory.declare(transport, delay_topology(names, settings))
    await transport_factory.declare(transport, queue_topology(names, QUEUE, settings))
    inbox = TimedInbox()
    await transport.consume(names.work_queue(QUEUE), prefetch=50, on_delivery=inbox)
    return transport, inbox


def job(
    names: TopologyNames,
    job_id: str,
    delay_ms: int,
    *,
    headers: Mapping[str, HeaderValue] | None = None,
) -> OutgoingMessage:
    """A job message for the work queue, routed through the delay levels."""
    exchange, routing_key = job_route(names, QUEUE, delay_ms)
    if headers is None:
        headers = Envelope(job_id=job_id, task="tasks.note", queue=QUEUE).headers()
    return OutgoingMessage(exchange, routing_key, b'{"args": [], "kwargs": {}}', job_id, headers)


def set_levels(delay_ms: int) -> set[int]:
    """The levels a delay's unit count has set bits for."""
    units = delays.delay_units(delay_ms)
    return {level for level in range(delays.DELAY_LEVELS) if units >> level & 1}


def deaths(delivery: Delivery) -> list[dict[str, HeaderValue]]:
    """The ``x-death`` entries of a delivery (none for a message never dead-lettered)."""
    entries = delivery.headers.get("x-death", [])
    assert isinstance(entries, list)
    return [entry for entry in entries if isinstance(entry, dict)]


async def through_levels(
    transport: Transport, inbox: TimedInbox, message: OutgoingMessage, delay_ms: int
) -> Delivery:
    """Publish `message`, wait for it in the work queue, check it was not early; ack it."""
    sent = time.monotonic()
    await transport.publish(message, timeout=5)
    delivery = await inbox.next()
    assert delivery.message_id == message.message_id
    waited = inbox.arrived[message.message_id] - sent
    assert delay_ms / 1000 <= waited < delay_ms / 1000 + LATE
    await delivery.ack()
    return delivery


async def test_delays_are_never_early_for_every_bit_pattern(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """Each delay arrives no earlier than due, having visited the level of each set bit once."""
    transport, inbox = await delay_levels(transport_factory, names)
    sent: dict[str, tuple[float, int]] = {}
    for delay_ms in DELAYS_MS:
        job_id = f"delay-{delay_ms}"
        sent[job_id] = (time.monotonic(), delay_ms)
        await transport.publish(job(names, job_id, delay_ms), timeout=5)
    deliveries = await inbox.take(len(DELAYS_MS), timeout=WAIT)

    # shorter delays first, whatever the number of hops
    assert [d.message_id for d in deliveries] == [f"delay-{ms}" for ms in DELAYS_MS]
    for delivery in deliveries:
        job_id = delivery.message_id or ""
        published, delay_ms = sent[job_id]
        waited = inbox.arrived[job_id] - published
        assert delay_ms / 1000 <= waited < delay_ms / 1000 + LATE, job_id
        visited = deaths(delivery)
        expected = {names.delay_queue(level) for level in set_levels(delay_ms)}
        assert {entry["queue"] for entry in visited} == expected, job_id
        assert len(visited) == len(expected), job_id  # each level once
        assert all(entry["reason"] == "expired" and entry["count"] == 1 for entry in visited)
        await delivery.ack()


async def test_a_fresh_copy_goes_through_the_levels_again(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """aqueue's retry copy (no x-death, routing key rebuilt) of a delayed message is delayed
    again, as often as needed, never early, and its routing key does not grow.
    """
    transport, inbox = await delay_levels(transport_factory, names)
    delay_ms = 25  # 3 units, levels 1 and 0: two set bits, the case cycle detection drops
    first = job(names, "job-1", delay_ms)
    delivery = await through_levels(transport, inbox, first, delay_ms)
    assert len(deaths(delivery)) == 2

    for attempt in (1, 2, 3):
        now_ms = time.time_ns() // 1_000_000
        again = retry_message(
            names,
            delivery,
            read_headers(delivery.headers),
            queue=QUEUE,
            attempt=attempt,
            failure=Failure(attempt, "ValueError", f"attempt {attempt}", now_ms),
            delay_ms=delay_ms,
            now_ms=now_ms,
        )
        assert not set(again.headers) & t.BROKER_HEADERS
        assert again.routing_key == first.routing_key
        delivery = await through_levels(transport, inbox, again, delay_ms)
        # the broker's bookkeeping starts over: one pass, each level once
        assert [entry["count"] for entry in deaths(delivery)] == [1, 1]
        assert read_headers(delivery.headers).attempt == attempt + 1


async def test_a_copy_keeping_x_death_is_lost_in_the_levels(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """The trap: republished with its x-death headers, a message delayed through two set bits
    again never arrives (cycle detection; RabbitMQ 3.10 keeps it stuck in a quorum at-least-once
    level, the in-memory broker drops it). Through one set bit it still arrives, which is why
    the bug hides in short tests.
    """
    transport, inbox = await delay_levels(transport_factory, names)
    # 25 ms: 3 units, levels 1 and 0 (30 ms would take 4 units, a millisecond per hop to spare)
    delivery = await through_levels(transport, inbox, job(names, "job-1", 25), 25)
    copied = dict(delivery.headers)
    assert "x-death" in copied

    # one set bit (5 ms: 1 unit, level 0 only): the copied history does not matter yet
    await through_levels(transport, inbox, job(names, "one-bit", 5, headers=copied), 5)

    # two set bits: level 1 dead-letters into level 0, which its x-death shows as visited
    await transport.publish(job(names, "trap", 25, headers=copied), timeout=5)
    # A fresh copy published after it through the same levels (FIFO, same TTLs) arrives
    # after the trapped message would have.
    fresh = {k: v for k, v in copied.items() if k not in t.BROKER_HEADERS}
    await transport.publish(job(names, "control", 25, headers=fresh), timeout=5)
    control = await inbox.next()
    assert control.message_id == "control"
    await control.ack()
    with anyio.move_on_after(0.5):  # and some more, for good measure
        late = await inbox.next()
        pytest.fail(f"the message with copied x-death headers arrived: {late!r}")
