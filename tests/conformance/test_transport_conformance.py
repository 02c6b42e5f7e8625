"""The behaviour every `Transport` shares, checked on the in-memory and the AMQP transport.

Each expectation was measured on RabbitMQ 3.10 (docs/rabbitmq-behaviour.md); the in-memory
transport must match it, so a test here fails on whichever side drifts. No test sleeps to
synchronise: every wait is for an event, bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import anyio
import pytest

from aqueue._core.config import QueueSettings
from aqueue._core.queues import queue_topology
from aqueue._core.topology import ArgumentValue, Topology, TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._transport.base import Delivery, OutgoingMessage, Transport
from aqueue.exceptions import (
    ConfigurationError,
    ConnectionLost,
    PublishNacked,
    QueueNotFound,
    Unroutable,
)
from tests.conformance.helpers import (
    Inbox,
    TransportFactory,
    exchange_with_queues,
    message,
    publish_and_get,
    single_queue,
)


def jobs(names: TopologyNames, settings: QueueSettings | None = None) -> Topology:
    """Everything the logical queue ``jobs`` declares (work queue, dead-letter queue, ...)."""
    return queue_topology(names, "jobs", settings or QueueSettings())


def job(names: TopologyNames, message_id: str = "job-1", **headers: HeaderValue) -> OutgoingMessage:
    """A message for the work queue of ``jobs``, through the direct exchange."""
    return message("jobs", exchange=names.exchange, message_id=message_id, headers=headers)


async def publish_jobs(transport: Transport, names: TopologyNames, count: int) -> str:
    """Publish messages ``"0"``, ``"1"``, ... to the work queue of ``jobs``; return its name."""
    for index in range(count):
        await transport.publish(job(names, f"{index}"), timeout=5)
    return names.work_queue("jobs")


async def test_declare_is_idempotent(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """Declaring the same topology twice is a no-op that keeps messages."""
    transport = await transport_factory.with_topology(jobs(names))
    await transport.publish(job(names), timeout=5)
    await transport_factory.declare(transport, jobs(names))
    assert await transport.message_count(names.work_queue("jobs")) == 1


async def test_roundtrip_preserves_body_headers_and_message_id(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """A published message arrives with its body, headers, message id and routing key."""
    queue = f"{prefix}.roundtrip"
    transport = await transport_factory.with_topology(single_queue(queue))
    nested: list[HeaderValue] = [1, "two", False]
    headers: dict[str, HeaderValue] = {
        "aqueue-task": "tasks.send",
        "attempt": 3,
        "ratio": 0.5,
        "flag": True,
        "nested": {"list": nested, "empty": {}},
        "nothing": None,
    }
    sent = OutgoingMessage("", queue, b'{"args":[1]}', "job-42", headers)
    await transport.publish(sent, timeout=5)
    # the caller's tables may change after publish; the message may not
    headers["attempt"] = 99
    nested.append("later")
    inbox = Inbox()
    await transport.consume(queue, prefetch=1, on_delivery=inbox)
    delivery = await inbox.next()
    assert delivery.body == b'{"args":[1]}'
    assert delivery.message_id == "job-42"
    assert delivery.routing_key == queue
    assert delivery.queue == queue
    assert delivery.redelivered is False
    assert delivery.delivery_count == 0
    expected: dict[str, HeaderValue] = {
        **headers,
        "attempt": 3,
        "nested": {"list": [1, "two", False], "empty": {}},
    }
    assert dict(delivery.headers) == expected
    await delivery.ack()


async def test_unroutable_when_no_queue_is_bound(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """A mandatory publish that reaches no queue raises Unroutable, on any exchange."""
    exchange = f"{prefix}.direct"
    bound = exchange_with_queues(exchange, "direct", {f"{prefix}.bound": "bound"})
    transport = await transport_factory.with_topology(bound)
    with pytest.raises(Unroutable):
        await transport.publish(message("other", exchange=exchange), timeout=5)
    with pytest.raises(Unroutable):
        await transport.publish(message(f"{prefix}.no-such-queue"), timeout=5)
    # the transport is still usable afterwards
    await transport.publish(message("bound", exchange=exchange), timeout=5)
    assert await transport.message_count(f"{prefix}.bound") == 1


async def test_publish_nacked_when_reject_publish_queue_is_full(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """A full x-max-length queue with x-overflow reject-publish nacks the publish."""
    queue = f"{prefix}.full"
    arguments: dict[str, ArgumentValue] = {"x-max-length": 1, "x-overflow": "reject-publish"}
    transport = await transport_factory.with_topology(single_queue(queue, arguments))
    await transport.publish(message(queue, b"1"), timeout=5)
    with pytest.raises(PublishNacked):
        await transport.publish(message(queue, b"2"), timeout=5)
    assert await transport.message_count(queue) == 1


async def test_redeclare_with_other_arguments_is_a_configuration_error(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """Declaring an existing queue with different arguments raises ConfigurationError."""
    transport = await transport_factory.with_topology(jobs(names))
    with pytest.raises(ConfigurationError):
        await transport_factory.declare(transport, jobs(names, QueueSettings(delivery_limit=3)))
    with pytest.raises(ConfigurationError):
        await transport_factory.declare(
            transport, single_queue(names.work_queue("jobs"), {"x-queue-type": "classic"})
        )
    # the transport is still usable afterwards
    await transport_factory.declare(transport, jobs(names))


async def test_prefetch_bounds_unsettled_deliveries(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """A consumer holds at most `prefetch` unsettled deliveries; an ack lets the next one in."""
    transport = await transport_factory.with_topology(jobs(names))
    queue = await publish_jobs(transport, names, 5)
    inbox = Inbox()
    await transport.consume(queue, prefetch=2, on_delivery=inbox)
    first, second = await inbox.take(2)
    # two are out, so three are ready: the broker holds the rest back
    assert await transport.message_count(queue) == 3
    assert not inbox.deliveries
    await first.ack()
    third = await inbox.next()
    assert [d.message_id for d in (first, second, third)] == ["0", "1", "2"]
    assert await transport.message_count(queue) == 2


async def test_a_higher_prefetch_lets_more_in_before_any_settle(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """Raising a consumer's prefetch delivers up to the new limit at once, in order, while
    the deliveries it holds stay unsettled (and settleable)."""
    transport = await transport_factory.with_topology(jobs(names))
    queue = await publish_jobs(transport, names, 6)
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=2, on_delivery=inbox)
    held = await inbox.take(2)
    await consumer.set_prefetch(5)
    held += await inbox.take(3)
    assert [d.message_id for d in held] == ["0", "1", "2", "3", "4"]
    assert await transport.message_count(queue) == 1
    for delivery in held:
        await delivery.ack()
    assert (await inbox.next()).message_id == "5"


async def test_prefetch_changes_under_a_flow_redeliver_nothing(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """An autoscaler's resizes, up and down while deliveries flow: every message arrives
    once, none marked redelivered. (Cancelling a consumer to change its prefetch makes a
    quorum queue return what it had assigned to it but not sent, redelivered: the next
    worker would quarantine those as neighbours of a crash.)"""
    transport = await transport_factory.with_topology(jobs(names))
    total = 1_000  # more than the resizes below can take (at most the sum of their prefetches)
    queue = await publish_jobs(transport, names, total)
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=5, on_delivery=inbox)
    seen: list[Delivery] = []
    for prefetch in (10, 40, 20, 80, 5, 60, 30, 100, 10, 50):
        taken = [await inbox.next()]
        while inbox.deliveries:
            taken.append(inbox.deliveries.popleft())
        await consumer.set_prefetch(prefetch)
        for delivery in taken:
            await delivery.ack()
        seen += taken
    while len(seen) < total:
        delivery = await inbox.next()
        await delivery.ack()
        seen.append(delivery)
    assert sorted(int(d.message_id or -1) for d in seen) == list(range(total))
    assert not [d.message_id for d in seen if d.redelivered]


async def test_two_consumers_share_a_queue(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """Two consumers on one queue each get messages, round-robin, and none twice."""
    producer, worker_a, worker_b = [await transport_factory() for _ in range(3)]
    await transport_factory.declare(producer, jobs(names))
    queue = names.work_queue("jobs")
    inbox_a, inbox_b = Inbox(), Inbox()
    await worker_a.consume(queue, prefetch=1, on_delivery=inbox_a)
    await worker_b.consume(queue, prefetch=1, on_delivery=inbox_b)
    await publish_jobs(producer, names, 4)
    seen: list[str | None] = []
    for _ in range(2):  # with prefetch 1, each holds one at a time
        a, b = await inbox_a.next(), await inbox_b.next()
        seen += [a.message_id, b.message_id]
        await a.ack()
        await b.ack()
    assert sorted(seen, key=str) == ["0", "1", "2", "3"]


async def test_reject_with_requeue_redelivers(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """A delivery rejected with requeue comes back marked redelivered."""
    transport = await transport_factory.with_topology(jobs(names))
    await transport.publish(job(names), timeout=5)
    inbox = Inbox()
    await transport.consume(names.work_queue("jobs"), prefetch=1, on_delivery=inbox)
    first = await inbox.next()
    assert (first.redelivered, first.delivery_count) == (False, 0)
    await first.reject(requeue=True)
    again = await inbox.next()
    assert again.message_id == first.message_id
    assert (again.redelivered, again.delivery_count) == (True, 1)
    await again.ack()


async def test_reject_without_requeue_dead_letters(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """A delivery rejected without requeue reaches the dead-letter queue with x-death headers."""
    transport = await transport_factory.with_topology(jobs(names))
    await transport.publish(job(names, k="v"), timeout=5)
    work, dead = Inbox(), Inbox()
    await transport.consume(names.work_queue("jobs"), prefetch=1, on_delivery=work)
    await transport.consume(names.dead_letter_queue("jobs"), prefetch=1, on_delivery=dead)
    await (await work.next()).reject(requeue=False)
    letter = await dead.next()
    assert letter.message_id == "job-1"
    assert letter.routing_key == "jobs"  # x-dead-letter-routing-key
    assert letter.headers["k"] == "v"
    assert letter.headers["x-first-death-reason"] == "rejected"
    assert letter.headers["x-first-death-queue"] == names.work_queue("jobs")
    assert letter.headers["x-first-death-exchange"] == names.exchange
    deaths = letter.headers["x-death"]
    assert isinstance(deaths, list)
    assert isinstance(deaths[0], dict)
    assert deaths[0]["reason"] == "rejected"
    assert deaths[0]["queue"] == names.work_queue("jobs")
    assert deaths[0]["count"] == 1
    assert deaths[0]["routing-keys"] == ["jobs"]
    await letter.ack()


async def test_quorum_delivery_limit_dead_letters(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """With x-delivery-limit N a message is delivered N+1 times, then dead-lettered."""
    settings = QueueSettings(queue_type="quorum", delivery_limit=2)
    transport = await transport_factory.with_topology(jobs(names, settings))
    await transport.publish(job(names), timeout=5)
    work, dead = Inbox(), Inbox()
    await transport.consume(names.work_queue("jobs"), prefetch=1, on_delivery=work)
    await transport.consume(names.dead_letter_queue("jobs"), prefetch=1, on_delivery=dead)
    counts = []
    for _ in range(3):
        delivery = await work.next()
        counts.append(delivery.delivery_count)
        await delivery.reject(requeue=True)
    assert counts == [0, 1, 2]
    letter = await dead.next()
    assert letter.headers["x-first-death-reason"] == "delivery_limit"
    assert not work.deliveries
    assert await transport.message_count(names.work_queue("jobs")) == 0
    await letter.ack()


async def test_closing_a_transport_requeues_its_unsettled_deliveries(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """Deliveries left unsettled by a closed transport reach another consumer, redelivered."""
    producer, crashing, survivor = [await transport_factory() for _ in range(3)]
    await transport_factory.declare(producer, jobs(names))
    queue = await publish_jobs(producer, names, 3)
    lost = Inbox()
    await crashing.consume(queue, prefetch=10, on_delivery=lost)
    held = await lost.take(3)
    inbox = Inbox()
    await survivor.consume(queue, prefetch=10, on_delivery=inbox)
    await crashing.aclose()
    again = await inbox.take(3)
    assert [d.message_id for d in again] == ["0", "1", "2"]
    assert all(d.redelivered and d.delivery_count == 1 for d in again)
    with pytest.raises(ConnectionLost):
        await held[0].ack()
    for delivery in again:
        await delivery.ack()


async def test_message_ttl_dead_letters_to_the_target_queue(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """A message in an x-message-ttl queue moves through its dead-letter exchange after the TTL."""
    exchange, target = f"{prefix}.delays", f"{prefix}.target"
    transport = await transport_factory.with_topology(
        exchange_with_queues(exchange, "direct", {target: "target"})
    )
    waiting = f"{prefix}.wait-200ms"
    arguments: dict[str, ArgumentValue] = {
        "x-queue-type": "quorum",
        "x-message-ttl": 200,
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": "target",
    }
    await transport_factory.declare(transport, single_queue(waiting, arguments))
    inbox = Inbox()
    await transport.consume(target, prefetch=1, on_delivery=inbox)
    started = anyio.current_time()
    await transport.publish(message(waiting), timeout=5)
    delivery = await inbox.next(timeout=5)
    assert anyio.current_time() - started >= 0.19  # never early
    assert delivery.headers["x-first-death-reason"] == "expired"
    assert delivery.headers["x-first-death-queue"] == waiting
    assert delivery.routing_key == "target"
    assert await transport.message_count(waiting) == 0
    await delivery.ack()


async def test_topic_exchange_routes_by_wildcards(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """Topic bindings match `*` as exactly one word and `#` as zero or more words."""
    exchange = f"{prefix}.topic"
    bindings = {
        f"{prefix}.star": "orders.*",
        f"{prefix}.hash": "orders.#",
        f"{prefix}.middle": "*.created.*",
        f"{prefix}.all": "#",
        f"{prefix}.exact": "orders.created",
    }
    transport = await transport_factory.with_topology(
        exchange_with_queues(exchange, "topic", bindings)
    )
    for key in ("orders", "orders.created", "orders.created.eu", "invoices.created.eu"):
        await transport.publish(message(key, exchange=exchange), timeout=5)
    counts = {
        queue.removeprefix(f"{prefix}."): await transport.message_count(queue) for queue in bindings
    }
    assert counts == {"star": 1, "hash": 3, "middle": 2, "all": 4, "exact": 1}


async def test_get_message_count_and_purge(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """get takes one message, message_count counts ready ones, purge empties the queue."""
    queue = f"{prefix}.q"
    transport = await transport_factory.with_topology(single_queue(queue))
    assert await transport.get(queue) is None
    for index in range(3):
        await transport.publish(message(queue, message_id=f"{index}"), timeout=5)
    assert await transport.message_count(queue) == 3
    delivery = await transport.get(queue)
    assert delivery is not None
    assert delivery.message_id == "0"
    assert await transport.message_count(queue) == 2  # the unacked one is not counted
    assert await transport.purge(queue) == 2
    assert await transport.message_count(queue) == 0
    await delivery.reject(requeue=True)
    assert await transport.message_count(queue) == 1
    again = await transport.get(queue)
    assert again is not None
    assert again.redelivered
    await again.ack()
    with pytest.raises(QueueNotFound):
        await transport.message_count(f"{prefix}.missing")


async def test_get_from_a_quorum_queue_counts_deliveries(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """basic.get on a quorum queue reports x-delivery-count, starting at 0."""
    queue = f"{prefix}.quorum"
    transport = await transport_factory.with_topology(
        single_queue(queue, {"x-queue-type": "quorum"})
    )
    first = await publish_and_get(transport, message(queue))
    assert first.headers.get("x-delivery-count") == 0
    await first.reject(requeue=True)
    inbox = Inbox()  # basic.reject has no reply: wait for the requeue by consuming
    await transport.consume(queue, prefetch=1, on_delivery=inbox)
    second = await inbox.next()
    await second.ack()


async def test_cancelled_consumer_gets_no_new_deliveries(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """After Consumer.cancel the queue keeps new messages; cancel is idempotent."""
    queue = f"{prefix}.q"
    transport = await transport_factory.with_topology(single_queue(queue))
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=5, on_delivery=inbox)
    await transport.publish(message(queue, message_id="before"), timeout=5)
    before = await inbox.next()
    await consumer.cancel()
    await consumer.cancel()
    await transport.publish(message(queue, message_id="after"), timeout=5)
    assert await transport.message_count(queue) == 1
    other = Inbox()
    await transport.consume(queue, prefetch=5, on_delivery=other)
    assert (await other.next()).message_id == "after"
    assert not inbox.deliveries
    await before.ack()  # still settleable after the cancel


async def one_taken(factory: TransportFactory, queue: str) -> tuple[Transport, Delivery]:
    """A transport on which `queue` has one message, taken and not settled yet."""
    transport = await factory.with_topology(single_queue(queue))
    return transport, await publish_and_get(transport, message(queue))


async def test_settling_twice_raises_connection_lost(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """A delivery settles once: a second ack or reject raises ConnectionLost."""
    _, delivery = await one_taken(transport_factory, f"{prefix}.q")
    await delivery.ack()
    with pytest.raises(ConnectionLost):
        await delivery.ack()
    with pytest.raises(ConnectionLost):
        await delivery.reject(requeue=True)


async def test_closed_transport_refuses_operations(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """After aclose, publish raises ConnectionLost and settling a delivery raises too."""
    queue = f"{prefix}.q"
    transport, delivery = await one_taken(transport_factory, queue)
    await transport.aclose()
    await transport.aclose()  # idempotent
    with pytest.raises(ConnectionLost):
        await transport.publish(message(queue), timeout=5)
    with pytest.raises(ConnectionLost):
        await delivery.ack()
    observer = await transport_factory()
    assert await observer.message_count(queue) == 1  # requeued by the close


async def test_missing_queue_is_a_configuration_error(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """Consuming from or getting from a queue that does not exist raises ConfigurationError."""
    transport = await transport_factory()
    with pytest.raises(ConfigurationError):
        await transport.consume(f"{prefix}.missing", prefetch=1, on_delivery=Inbox())
    with pytest.raises(ConfigurationError):
        await transport.get(f"{prefix}.missing")
    await transport.delete_queue(f"{prefix}.missing")  # idempotent


async def test_publish_to_a_missing_exchange_raises_unroutable(
    transport_factory: TransportFactory, prefix: str
) -> None:
    """A publish to an exchange that does not exist is not stored and raises Unroutable."""
    queue = f"{prefix}.q"
    transport = await transport_factory.with_topology(single_queue(queue))
    with pytest.raises(Unroutable):
        await transport.publish(message("x", exchange=f"{prefix}.missing"), timeout=5)
    await transport.publish(message(queue), timeout=5)  # the transport is still usable
    assert await transport.message_count(queue) == 1
