"""AmqpTransport against the real RabbitMQ: what only the AMQP implementation can show.

The behaviour every transport shares is in ``tests/conformance``; here are the broker's own
answers (returns, nacks, 406), connection failover, and recovery after the broker closes the
connection (found by its name through ``rabbitmqctl``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import aio_pika
import anyio
import anyio.to_thread
import pytest

from aqueue._core.config import QueueSettings
from aqueue._core.queues import queue_topology
from aqueue._core.topology import ExchangeSpec, QueueSpec, Topology, TopologyNames
from aqueue._transport.amqp import AmqpTransport
from aqueue._transport.base import Delivery, OutgoingMessage
from aqueue.exceptions import (
    BrokerBlocked,
    ConfigurationError,
    ConnectionFailed,
    ConnectionLost,
    PublishNacked,
    PublishTimeout,
    Unroutable,
)
from tests.helpers.polling import wait_for
from tests.helpers.rabbit_node import RabbitNode
from tests.helpers.rabbitmqctl import close_connections, connection_pids

pytestmark = pytest.mark.integration

DEAD_URL = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1
Connect = Callable[..., Awaitable[AmqpTransport]]


class Inbox:
    """A consumer callback that keeps its deliveries; `wait_for` wakes on each new one."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._arrived = anyio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Delivery]:
        with anyio.fail_after(timeout):
            while len(self.deliveries) < count:
                await self._arrived.wait()
        return self.deliveries[:count]


@pytest.fixture
async def exchange_cleanup(amqp_url: str) -> AsyncIterator[list[str]]:
    """A list to append exchange names to; they are deleted when the test ends."""
    exchanges: list[str] = []
    yield exchanges
    connection = await aio_pika.connect(amqp_url, client_properties={"connection_name": "cleanup"})
    async with connection:
        channel = await connection.channel()
        for name in exchanges:
            await channel.exchange_delete(name)


@pytest.fixture
async def connect(
    amqp_url: str, prefix: str, amqp_cleanup: list[str], exchange_cleanup: list[str]
) -> AsyncIterator[Connect]:
    """Open a transport named ``<prefix>-<role>``; every one is closed when the test ends.

    It depends on the cleanup fixtures so that transports close before queues are deleted.
    """
    transports: list[AmqpTransport] = []

    async def open_transport(
        role: str, urls: Sequence[str] | None = None, **options: Any
    ) -> AmqpTransport:
        transport = AmqpTransport(urls or [amqp_url], connection_name=f"{prefix}-{role}", **options)
        transports.append(transport)
        await transport.connect(timeout=10)
        return transport

    yield open_transport
    for transport in transports:
        await transport.aclose()


def message(
    routing_key: str, body: bytes = b"{}", exchange: str = "", **kw: Any
) -> OutgoingMessage:
    return OutgoingMessage(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        message_id=kw.pop("message_id", uuid.uuid4().hex),
        **kw,
    )


async def classic_queue(
    transport: AmqpTransport, name: str, cleanup: list[str], **args: Any
) -> str:
    cleanup.append(name)
    await transport.declare(
        Topology(queues=(QueueSpec(name, {"x-queue-type": "classic", **args}),))
    )
    return name


def work_topology(names: TopologyNames, cleanup: list[str], exchanges: list[str]) -> Topology:
    topology = queue_topology(names, "work", QueueSettings())
    cleanup.extend(queue.name for queue in topology.queues)
    exchanges.extend(exchange.name for exchange in topology.exchanges)
    return topology


async def close_from_broker(name: str) -> None:
    """Close the connection named `name` from the broker side (``rabbitmqctl``)."""
    assert await anyio.to_thread.run_sync(close_connections, name) == 1


async def drop_connection(transport: AmqpTransport, name: str) -> None:
    """Close `transport`'s connection from the broker side; return once the transport saw it.

    The transport must have been opened with ``[amqp_url, DEAD_URL]``: after the drop it tries
    the dead URL, then pauses ``reconnect_interval``, so it stays disconnected for a while (with
    one URL it would reconnect at once, before a test could see the gap).
    """
    await close_from_broker(name)
    # A publish nobody is bound for comes back (Unroutable) while the transport is connected
    # and fails with ConnectionLost once it has noticed the close: no sleep needed.
    with anyio.fail_after(15):
        while True:
            try:
                await transport.publish(message(f"aqtest-nowhere-{uuid.uuid4().hex}"), timeout=5)
            except Unroutable:
                continue
            except ConnectionLost:
                return


async def test_roundtrip_keeps_body_headers_and_properties(
    connect: Connect, names: TopologyNames, amqp_cleanup: list[str], exchange_cleanup: list[str]
) -> None:
    """A message published to a quorum work queue arrives with its body, headers and ids."""
    transport = await connect("both")
    topology = work_topology(names, amqp_cleanup, exchange_cleanup)
    await transport.declare(topology)
    inbox = Inbox()
    consumer = await transport.consume(names.work_queue("work"), prefetch=10, on_delivery=inbox)
    headers = {"aqueue-task": "send", "n": 7, "f": 1.5, "yes": True, "none": None,
               "list": [1, "two", [3]], "table": {"a": {"b": "c"}}}  # fmt: skip
    await transport.publish(
        message("work", b'{"args": [1]}', names.exchange, message_id="job-1", headers=headers),
        timeout=10,
    )
    [delivery] = await inbox.wait_for(1)
    assert delivery.body == b'{"args": [1]}'
    assert {k: delivery.headers[k] for k in headers} == headers
    assert delivery.message_id == "job-1"
    assert delivery.routing_key == "work"
    assert delivery.queue == names.work_queue("work")
    assert delivery.redelivered is False
    assert delivery.delivery_count == 0
    await delivery.ack()
    await consumer.cancel()
    assert await transport.message_count(names.work_queue("work")) == 0


async def test_publish_sets_persistent_content_type_and_timestamp(
    connect: Connect, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """Every publish is persistent and carries content_type, timestamp and message_id."""
    transport = await connect("pub")
    queue = await classic_queue(transport, f"{prefix}.props", amqp_cleanup)
    await transport.publish(
        message(queue, message_id="m-1", content_type="text/plain", timestamp=1_700_000_000),
        timeout=10,
    )
    async with await aio_pika.connect(amqp_url) as raw:
        channel = await raw.channel()
        received = await (await channel.get_queue(queue)).get(no_ack=True)
    assert received.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert received.content_type == "text/plain"
    assert received.message_id == "m-1"
    assert received.timestamp == datetime.fromtimestamp(1_700_000_000, UTC)


async def test_header_values_are_normalised(
    connect: Connect, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """Bytes, decimals and timestamps from other producers arrive as str, float and int."""
    transport = await connect("worker")
    queue = await classic_queue(transport, f"{prefix}.headers", amqp_cleanup)
    async with await aio_pika.connect(amqp_url) as raw:
        channel = await raw.channel()
        headers: Any = {
            "bytes": bytearray(b"caf\xc3\xa9"),  # pamqp sends bytearray as an AMQP byte array
            "bad": bytearray(b"\xff"),
            "decimal": Decimal("1.25"),
            "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            "nested": {"list": [bytearray(b"x"), Decimal("2.5")]},
        }
        await channel.default_exchange.publish(aio_pika.Message(b"", headers=headers), queue)
    delivery = await transport.get(queue)
    assert delivery is not None
    assert delivery.headers == {
        "bytes": "café",
        "bad": "\ufffd",
        "decimal": 1.25,
        "when": int(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        "nested": {"list": ["x", 2.5]},
    }
    await delivery.ack()


async def test_unbound_routing_key_raises_unroutable(
    connect: Connect, prefix: str, exchange_cleanup: list[str]
) -> None:
    """A mandatory publish nobody is bound for raises Unroutable, not a silent ack."""
    transport = await connect("pub")
    exchange_cleanup.append(prefix)
    await transport.declare(Topology(exchanges=(ExchangeSpec(prefix),)))
    with pytest.raises(Unroutable, match="NO_ROUTE"):
        await transport.publish(message("nobody", exchange=prefix), timeout=10)
    with pytest.raises(Unroutable):
        await transport.publish(message(f"{prefix}.no-such-queue"), timeout=10)


async def test_full_reject_publish_queue_raises_publish_nacked(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """A queue that refuses the message (max-length 0, reject-publish) raises PublishNacked."""
    transport = await connect("pub")
    queue = await classic_queue(
        transport,
        f"{prefix}.full",
        amqp_cleanup,
        **{"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    with pytest.raises(PublishNacked):
        await transport.publish(message(queue), timeout=10)
    # The next publish is confirmed normally (on a fresh channel: a nack retires the old one).
    other = await classic_queue(transport, f"{prefix}.other", amqp_cleanup)
    await transport.publish(message(other), timeout=10)


async def test_a_nack_replaces_the_publishing_channel_once(
    connect: Connect, prefix: str, amqp_cleanup: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nacks retire the publishing channel; concurrent publishes then share one fresh channel.

    Publishes confirmed on the retired channel are not failed by its closing: it closes once
    their confirms are in.
    """
    transport = await connect("retire")
    full = await classic_queue(
        transport,
        f"{prefix}.full",
        amqp_cleanup,
        **{"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    ok = await classic_queue(transport, f"{prefix}.ok", amqp_cleanup)
    first = transport._channel
    assert first is not None
    opened = 0
    open_channel = transport._open_channel

    async def counting_open(what: str, **options: Any) -> Any:
        nonlocal opened
        opened += bool(options.get("publisher_confirms"))
        return await open_channel(what, **options)

    monkeypatch.setattr(transport, "_open_channel", counting_open)
    outcomes: dict[tuple[str, int], BaseException | None] = {}

    async def publish(queue: str, index: int) -> None:
        try:
            await transport.publish(message(queue), timeout=10)
        except (PublishNacked, ConnectionLost) as exc:
            outcomes[queue, index] = exc
        else:
            outcomes[queue, index] = None

    async with anyio.create_task_group() as tg:
        for index in range(20):  # all on `first`: each takes the channel before any answer
            tg.start_soon(publish, full, index)
            tg.start_soon(publish, ok, index)
    assert all(isinstance(outcomes[full, index], PublishNacked) for index in range(20))
    assert [outcomes[ok, index] for index in range(20)] == [None] * 20
    assert opened == 0
    await wait_for(lambda: first.is_closed, timeout=10, what="the retired channel to close")

    async with anyio.create_task_group() as tg:
        for index in range(20, 40):
            tg.start_soon(publish, ok, index)
    assert [outcomes[ok, index] for index in range(20, 40)] == [None] * 20
    assert opened == 1
    assert await transport.message_count(ok) == 40


async def test_redeclare_with_other_arguments_raises_configuration_error(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """Re-declaring a queue with other arguments (406) names the queue; the transport goes on."""
    transport = await connect("pub")
    queue = await classic_queue(transport, f"{prefix}.args", amqp_cleanup, **{"x-max-length": 5})
    with pytest.raises(ConfigurationError, match=rf"queue '{queue}'.*different arguments"):
        await classic_queue(transport, queue, amqp_cleanup, **{"x-max-length": 6})
    await classic_queue(transport, queue, amqp_cleanup, **{"x-max-length": 5})
    await transport.publish(message(queue), timeout=10)
    assert await transport.message_count(queue) == 1


async def test_queue_operations_and_missing_queues(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """get, message_count and purge work; a missing queue is an error; deleting is idempotent."""
    transport = await connect("tool")
    queue = await classic_queue(transport, f"{prefix}.ops", amqp_cleanup)
    assert await transport.get(queue) is None
    for _ in range(3):
        await transport.publish(message(queue), timeout=10)
    assert await transport.message_count(queue) == 3
    got = await transport.get(queue)
    assert got is not None
    assert got.queue == queue
    await got.reject(requeue=True)
    assert await transport.purge(queue) == 3
    missing = f"{prefix}.missing"
    for operation in (transport.message_count, transport.purge, transport.get):
        with pytest.raises(ConfigurationError, match=missing):
            await operation(missing)
    await transport.delete_queue(queue)
    await transport.delete_queue(queue)
    await transport.delete_queue(missing)
    with pytest.raises(ConfigurationError):
        await transport.message_count(queue)


async def test_prefetch_limits_unsettled_deliveries_and_cancel_keeps_them_settleable(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """At most `prefetch` deliveries are unsettled; after cancel() they can still be acked."""
    transport = await connect("worker")
    queue = await classic_queue(transport, f"{prefix}.prefetch", amqp_cleanup)
    for _ in range(5):
        await transport.publish(message(queue), timeout=10)
    inbox = Inbox()
    consumer = await transport.consume(queue, prefetch=2, on_delivery=inbox)
    first = await inbox.wait_for(2)
    assert await transport.message_count(queue) == 3  # the broker holds the rest back
    await consumer.cancel()
    await consumer.cancel()
    for delivery in first:
        await delivery.ack()
    assert await transport.message_count(queue) == 3  # cancelled: nothing more was taken
    with pytest.raises(ConnectionLost, match="already settled"):
        await first[0].ack()


async def test_connect_to_dead_port_fails_within_timeout() -> None:
    """No broker at the URL: ConnectionFailed, within the connect timeout."""
    transport = AmqpTransport([DEAD_URL], connection_name="aqueue-test-dead")
    began = time.monotonic()
    with anyio.fail_after(10), pytest.raises(ConnectionFailed, match=r"127\.0\.0\.1:1\b"):
        await transport.connect(timeout=1.5)
    assert time.monotonic() - began < 3
    await transport.aclose()
    await transport.aclose()


async def test_first_url_dead_second_url_works(
    connect: Connect, prefix: str, amqp_url: str, amqp_cleanup: list[str]
) -> None:
    """With several URLs, a dead first one is skipped at once and the next one is used."""
    began = time.monotonic()
    transport = await connect("failover", [DEAD_URL, amqp_url], reconnect_interval=5)
    assert time.monotonic() - began < 4  # no reconnect_interval pause before the second URL
    queue = await classic_queue(transport, f"{prefix}.failover", amqp_cleanup)
    await transport.publish(message(queue), timeout=10)
    assert await transport.message_count(queue) == 1


async def test_publish_during_reconnect_raises_connection_lost_and_recovers(
    connect: Connect, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """While reconnecting, publish fails fast with ConnectionLost; wait_connected then returns."""
    transport = await connect("pub", [amqp_url, DEAD_URL])
    queue = await classic_queue(transport, f"{prefix}.reconnect", amqp_cleanup)
    await drop_connection(transport, f"{prefix}-pub")
    confirmed = 0
    with anyio.fail_after(15):
        for _ in range(20):  # each one succeeds or raises ConnectionLost: none hangs
            try:
                await transport.publish(message(queue), timeout=5)
                confirmed += 1
            except ConnectionLost:
                pass
        await transport.wait_connected()
    await transport.publish(message(queue), timeout=10)
    assert await transport.message_count(queue) == confirmed + 1


async def test_publishes_in_flight_when_the_connection_drops_fail_with_connection_lost(
    connect: Connect, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """Publishes under way when the connection drops end confirmed or ConnectionLost, never hang."""
    transport = await connect("pub", [amqp_url, DEAD_URL])
    queue = await classic_queue(transport, f"{prefix}.inflight", amqp_cleanup)
    outcomes: list[str] = []
    lost = anyio.Event()

    async def publish_until_lost() -> None:
        while not lost.is_set():
            try:
                await transport.publish(message(queue), timeout=10)
                outcomes.append("confirmed")
            except ConnectionLost:
                outcomes.append("lost")
                lost.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(publish_until_lost)
            await close_from_broker(f"{prefix}-pub")
        await transport.wait_connected()
    assert set(outcomes) == {"confirmed", "lost"}
    # A publish that lost its confirm may still have been stored (that is why it is retried
    # with the same message id), so the queue holds at least the confirmed ones.
    assert await transport.message_count(queue) >= outcomes.count("confirmed")


async def test_publishers_retrying_after_connection_lost_ride_through_a_drop(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """Publishers that wait_connected() and retry on ConnectionLost all get through a drop."""
    transport = await connect("pub")
    queue = await classic_queue(transport, f"{prefix}.retry", amqp_cleanup)
    confirmed: list[str] = []
    after_close: list[str] = []
    closed, enough = anyio.Event(), anyio.Event()

    async def publish_with_retries(worker: int) -> None:
        # The producer's loop: a ConnectionLost that never yields must not starve the loop.
        while not enough.is_set():
            message_id = f"{worker}-{len(confirmed)}"
            while True:
                try:
                    await transport.publish(message(queue, message_id=message_id), timeout=10)
                    break
                except ConnectionLost:
                    await transport.wait_connected()
            (after_close if closed.is_set() else confirmed).append(message_id)
            if len(after_close) >= 500:
                enough.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for worker in range(20):
                group.start_soon(publish_with_retries, worker)
            await close_from_broker(f"{prefix}-pub")
            closed.set()
    assert await transport.message_count(queue) >= len(confirmed) + len(after_close)


async def test_caller_cancellation_propagates_out_of_publish(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """Cancelling the caller cancels publish: it is not mistaken for a dying channel."""
    transport = await connect("pub")
    queue = await classic_queue(transport, f"{prefix}.cancel", amqp_cleanup)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await transport.publish(message(queue), timeout=10)
    assert scope.cancelled_caught
    await transport.publish(message(queue), timeout=10)  # the channel is still usable


async def test_aclose_with_publishes_in_flight_and_during_reconnect_is_prompt(
    connect: Connect, amqp_url: str, prefix: str, amqp_cleanup: list[str]
) -> None:
    """aclose() settles in-flight publishes (confirmed or ConnectionLost) and never hangs."""
    transport = await connect("pub")
    queue = await classic_queue(transport, f"{prefix}.closing", amqp_cleanup)
    outcomes: list[BaseException | None] = []

    async def publish() -> None:
        try:
            await transport.publish(message(queue), timeout=10)
            outcomes.append(None)
        except ConnectionLost as exc:
            outcomes.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(200):
                group.start_soon(publish)
            await anyio.wait_all_tasks_blocked()
            await transport.aclose()
    # Each one confirmed (a clean close still reads the confirms under way) or ConnectionLost;
    # a CancelledError leaking out of publish would be lost in the task group: count them all.
    assert len(outcomes) == 200

    reconnecting = await connect("reconnecting", [amqp_url, DEAD_URL], reconnect_interval=30)
    await drop_connection(reconnecting, f"{prefix}-reconnecting")  # now in its 30 s pause
    with anyio.fail_after(5):
        await reconnecting.aclose()


async def test_consumer_resumes_after_its_queue_is_deleted_and_declared_again(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """The broker cancels a consumer whose queue is deleted; it resumes once the queue is back."""
    worker = await connect("worker", reconnect_interval=0.2)
    admin = await connect("admin")
    queue = await classic_queue(admin, f"{prefix}.recreated", amqp_cleanup)
    inbox = Inbox()
    await worker.consume(queue, prefetch=1, on_delivery=inbox)
    await admin.delete_queue(queue)
    await classic_queue(admin, queue, amqp_cleanup)
    await admin.publish(message(queue, b"again"), timeout=10)
    [delivery] = await inbox.wait_for(1)
    assert delivery.body == b"again"
    await delivery.ack()


async def test_consumer_resumes_and_stale_delivery_is_redelivered(
    connect: Connect, names: TopologyNames, amqp_cleanup: list[str], exchange_cleanup: list[str]
) -> None:
    """After a reconnect the consumer resumes; a delivery from before raises ConnectionLost."""
    producer = await connect("pub")
    worker = await connect("worker")
    await worker.declare(work_topology(names, amqp_cleanup, exchange_cleanup))
    inbox = Inbox()
    await worker.consume(names.work_queue("work"), prefetch=5, on_delivery=inbox)
    await producer.publish(message("work", b"before", names.exchange), timeout=10)
    [stale] = await inbox.wait_for(1)

    await close_from_broker(f"{names.prefix}-worker")
    await producer.publish(message("work", b"after", names.exchange), timeout=10)
    # Both arrive through the resumed subscription: the old one died with its connection.
    deliveries = await inbox.wait_for(3)
    with anyio.fail_after(15):
        await worker.wait_connected()
    by_body = {delivery.body: delivery for delivery in deliveries[1:]}
    assert set(by_body) == {b"before", b"after"}
    redelivered = by_body[b"before"]
    assert redelivered.redelivered is True
    assert redelivered.message_id == stale.message_id
    assert redelivered.delivery_count == 1  # quorum queues count it in x-delivery-count
    with pytest.raises(ConnectionLost):
        await stale.ack()  # never acked on the new channel, where its tag means another message
    for delivery in by_body.values():
        await delivery.ack()
    assert await worker.message_count(names.work_queue("work")) == 0


async def test_topology_is_redeclared_after_reconnect(
    connect: Connect,
    amqp_url: str,
    names: TopologyNames,
    amqp_cleanup: list[str],
    exchange_cleanup: list[str],
) -> None:
    """A queue deleted while the transport was disconnected exists again, bound, afterwards."""
    name = f"{names.prefix}-pub"
    transport = await connect("pub", [amqp_url, DEAD_URL], reconnect_interval=3)
    await transport.declare(work_topology(names, amqp_cleanup, exchange_cleanup))
    other = await connect("admin")

    await drop_connection(transport, name)  # it tried DEAD_URL and now pauses for 3 s
    await other.delete_queue(names.work_queue("work"))
    assert await anyio.to_thread.run_sync(connection_pids, name) == []  # still disconnected
    with anyio.fail_after(15):
        await transport.wait_connected()
    await transport.publish(message("work", exchange=names.exchange), timeout=10)
    assert await other.message_count(names.work_queue("work")) == 1


async def test_thousand_concurrent_publishes_are_all_confirmed(
    connect: Connect, prefix: str, amqp_cleanup: list[str]
) -> None:
    """1000 concurrent publishes on one transport are all confirmed (pipelined confirms)."""
    transport = await connect("pub")
    queue = await classic_queue(transport, f"{prefix}.many", amqp_cleanup)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for i in range(1000):
                group.start_soon(
                    partial(transport.publish, message(queue, str(i).encode()), timeout=20)
                )
    assert await transport.message_count(queue) == 1000


async def test_aclose_is_idempotent_and_operations_then_raise_connection_lost(
    connect: Connect, prefix: str
) -> None:
    """After aclose(), publish and wait_connected raise ConnectionLost; aclose() is idempotent."""
    transport = await connect("pub")
    with anyio.fail_after(10):
        await transport.aclose()
        await transport.aclose()
    with pytest.raises(ConnectionLost):
        await transport.publish(message(f"{prefix}.x"), timeout=5)
    with pytest.raises(ConnectionLost):
        await transport.wait_connected()


async def first_timeout(transport: AmqpTransport, queue: str) -> PublishTimeout:
    """Publish until one publish times out (publishes pass until an alarm reaches us)."""
    while True:
        try:
            await transport.publish(message(queue), timeout=2)
        except PublishTimeout as exc:
            return exc


@pytest.mark.fault
@pytest.mark.timeout(240)
async def test_publish_on_a_blocked_connection_raises_broker_blocked(
    rabbit_node: RabbitNode, prefix: str
) -> None:
    """A memory alarm (connection.blocked) turns a publish timeout into BrokerBlocked."""
    transport = AmqpTransport([rabbit_node.url], connection_name=f"{prefix}-blocked")
    await transport.connect(timeout=10)
    try:
        queue = await classic_queue(transport, f"{prefix}.blocked", [])
        await transport.publish(message(queue), timeout=10)
        await anyio.to_thread.run_sync(rabbit_node.set_memory_alarm, True)
        with anyio.fail_after(60):
            error = await first_timeout(transport, queue)
        assert isinstance(error, BrokerBlocked)
        await anyio.to_thread.run_sync(rabbit_node.set_memory_alarm, False)
        await transport.publish(message(queue), timeout=10)
    finally:
        await transport.aclose()


async def test_a_prefetch_growth_subscribes_again_and_folds_back_once_idle(
    connect: Connect,
    names: TopologyNames,
    amqp_cleanup: list[str],
    exchange_cleanup: list[str],
) -> None:
    """A growth adds a subscription (the broker counts two consumers while work flows, and
    nothing comes back redelivered); once every delivery is settled and the queue is empty,
    the subscriptions fold back into one with the whole prefetch."""
    transport = await connect("prefetch")
    topology = work_topology(names, amqp_cleanup, exchange_cleanup)
    await transport.declare(topology)
    queue = names.work_queue("work")
    for index in range(6):
        await transport.publish(message(queue, message_id=str(index)), timeout=5)
    held: list[Delivery] = []
    consumer = await transport.consume(queue, prefetch=2, on_delivery=held.append)
    await wait_for(lambda: len(held) == 2, timeout=10, what="the first two deliveries")
    await consumer.set_prefetch(5)
    await wait_for(lambda: len(held) == 5, timeout=10, what="three more without a settle")
    assert (await transport.queue_info(queue)).consumers == 2
    for delivery in held[:5]:  # the sixth may arrive meanwhile, as acks make room
        await delivery.ack()
    await wait_for(lambda: len(held) == 6, timeout=10, what="the last one")
    await held[5].ack()

    async def folded() -> bool:
        return (await transport.queue_info(queue)).consumers == 1

    await wait_for(folded, timeout=10, what="the subscriptions to fold into one")
    assert not [d.message_id for d in held if d.redelivered]
    await transport.publish(message(queue, message_id="after"), timeout=5)
    await wait_for(lambda: len(held) == 7, timeout=10, what="a delivery after the fold")
