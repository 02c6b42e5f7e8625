"""What only the in-memory transport does, or what is awkward to provoke on a real broker.

The behaviour both transports share is in ``tests/conformance``; here are the test hooks
(connection loss, reconnect, an injected clock) and the finer RabbitMQ rules the fake
reproduces (requeue order, x-death bookkeeping, dead-letter cycles, overflow).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import anyio
import pytest

from aqueue._core.config import QueueSettings
from aqueue._core.queues import queue_topology
from aqueue._core.topology import (
    ArgumentValue,
    BindingSpec,
    ExchangeSpec,
    QueueSpec,
    Topology,
    TopologyNames,
)
from aqueue._transport.base import Delivery
from aqueue._transport.memory_broker import topic_matches
from aqueue.exceptions import ConfigurationError, ConnectionLost, PublishNacked, QueueNotFound
from aqueue.testing import MemoryBroker, MemoryTransport
from tests.conformance.helpers import Inbox, exchange_with_queues, message, single_queue
from tests.helpers.workers import drain


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> MemoryBroker:
    return MemoryBroker(clock=clock)


@pytest.fixture
def advance(broker: MemoryBroker, clock: FakeClock) -> Callable[[float], None]:
    """Move the fake clock on by some seconds, then run the broker's timers (expiries)."""

    def move(seconds: float) -> None:
        clock.now += seconds
        broker.run_timers()

    return move


@pytest.fixture
async def transport(broker: MemoryBroker) -> AsyncIterator[MemoryTransport]:
    transport = MemoryTransport(broker, connection_name="test")
    await transport.connect(timeout=1)
    yield transport
    await transport.aclose()


async def _work_queue(
    transport: MemoryTransport, names: TopologyNames, settings: QueueSettings | None = None
) -> str:
    await transport.declare(queue_topology(names, "jobs", settings or QueueSettings()))
    return names.work_queue("jobs")


async def _publish(transport: MemoryTransport, queue: str, *ids: str) -> None:
    for message_id in ids:
        await transport.publish(message(queue, message_id=message_id), timeout=1)


async def _ids(transport: MemoryTransport, queue: str) -> list[str | None]:
    """The message ids of every ready message of `queue`, in order (taken, left unsettled)."""
    return [delivery.message_id for delivery in await drain(transport, queue, ack=False)]


def dead_lettering_queue(
    name: str, dest: str, arguments: Mapping[str, ArgumentValue] | None = None
) -> Topology:
    """Queue `dest`, and queue `name` whose dead letters go to `dest` (the default exchange)."""
    into = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dest}
    return single_queue(dest) + single_queue(name, {**(arguments or {}), **into})


def ttl_queue(name: str, ms: int, dest: str) -> Topology:
    """Queue `name`, whose messages expire after `ms` milliseconds into queue `dest`."""
    return dead_lettering_queue(name, dest, {"x-message-ttl": ms})


class TestConnectionLoss:
    async def test_unsettled_deliveries_come_back_and_consumers_resume(
        self, transport: MemoryTransport, names: TopologyNames
    ) -> None:
        """A dropped connection requeues its deliveries; after the reconnect they arrive again."""
        queue = await _work_queue(transport, names)
        await transport.publish(message("jobs", exchange=names.exchange), timeout=1)
        inbox = Inbox()
        await transport.consume(queue, prefetch=1, on_delivery=inbox)
        first = await inbox.next()
        transport.simulate_connection_loss()
        assert not transport.is_connected
        with pytest.raises(ConnectionLost):
            await transport.publish(message("jobs", exchange=names.exchange), timeout=1)
        await transport.wait_connected()
        again = await inbox.next()
        assert (again.redelivered, again.delivery_count) == (True, 1)
        with pytest.raises(ConnectionLost):
            await first.ack()  # from the old connection: void
        await again.ack()

    async def test_stays_down_until_simulate_reconnect(self, transport: MemoryTransport) -> None:
        """With reconnect_after=None, wait_connected blocks until simulate_reconnect."""
        transport.simulate_connection_loss(reconnect_after=None)
        reconnected = anyio.Event()

        async def waiter() -> None:
            await transport.wait_connected()
            reconnected.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not reconnected.is_set()
            transport.simulate_reconnect()
        assert transport.is_connected

    async def test_reconnect_after_a_delay(self, transport: MemoryTransport) -> None:
        """A transport dropped with reconnect_after comes back by itself."""
        transport.simulate_connection_loss(reconnect_after=0.01)
        with anyio.fail_after(5):
            await transport.wait_connected()

    async def test_drop_connections_drops_every_transport(self, broker: MemoryBroker) -> None:
        """MemoryBroker.drop_connections drops each connected transport."""
        one, two = MemoryTransport(broker), MemoryTransport(broker)
        await one.connect(timeout=1)
        await two.connect(timeout=1)
        broker.drop_connections(reconnect_after=None)
        assert [one.is_connected, two.is_connected] == [False, False]
        await one.aclose()
        two.simulate_reconnect()
        assert two.is_connected
        await two.aclose()

    async def test_reconnect_redeclares_the_topology(
        self, broker: MemoryBroker, transport: MemoryTransport, names: TopologyNames
    ) -> None:
        """After a reconnect the topology is declared again and consumers resume on it."""
        queue = await _work_queue(transport, names)
        inbox = Inbox()
        await transport.consume(queue, prefetch=1, on_delivery=inbox)
        transport.simulate_connection_loss(reconnect_after=None)
        other = MemoryTransport(broker)
        await other.connect(timeout=1)
        await other.delete_queue(queue)  # e.g. a broker restart lost a transient queue
        transport.simulate_reconnect()
        await other.publish(message("jobs", exchange=names.exchange), timeout=1)
        assert (await inbox.next()).queue == queue
        await other.aclose()

    async def test_reconnect_logs_what_it_cannot_restore(
        self, broker: MemoryBroker, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A topology that now conflicts, or a consumer whose queue is gone, is logged."""
        await transport.declare(single_queue("mine"))
        other = MemoryTransport(broker)
        await other.connect(timeout=1)
        await other.declare(single_queue("theirs"))
        await transport.consume("theirs", prefetch=1, on_delivery=Inbox())
        transport.simulate_connection_loss(reconnect_after=None)
        await other.delete_queue("mine")
        await other.declare(single_queue("mine", {"x-max-length": 5}))
        await other.delete_queue("theirs")
        transport.simulate_reconnect()
        assert transport.is_connected
        assert "could not re-declare its topology" in caplog.text
        assert "could not resume a consumer" in caplog.text
        await other.aclose()

    async def test_deleted_queue_is_not_redeclared(
        self, transport: MemoryTransport, names: TopologyNames
    ) -> None:
        """A queue the transport deleted itself stays deleted after a reconnect."""
        queue = await _work_queue(transport, names)
        await transport.delete_queue(queue)
        transport.simulate_connection_loss(reconnect_after=None)
        transport.simulate_reconnect()
        with pytest.raises(QueueNotFound):
            await transport.message_count(queue)
        assert await transport.message_count(names.dead_letter_queue("jobs")) == 0

    async def test_quorum_counts_connection_losses_toward_the_delivery_limit(
        self, transport: MemoryTransport, names: TopologyNames
    ) -> None:
        """A worker crashing on a message each time gets it dead-lettered at the limit."""
        queue = await _work_queue(transport, names, QueueSettings(delivery_limit=1))
        await transport.publish(message("jobs", exchange=names.exchange), timeout=1)
        for expected_count in (0, 1):
            delivery = await transport.get(queue)
            assert delivery is not None
            assert delivery.delivery_count == expected_count
            transport.simulate_connection_loss(reconnect_after=None)
            transport.simulate_reconnect()
        assert await transport.message_count(queue) == 0
        letter = await transport.get(names.dead_letter_queue("jobs"))
        assert letter is not None
        assert letter.headers["x-first-death-reason"] == "delivery_limit"

    async def test_closed_transport_cannot_reconnect(self, transport: MemoryTransport) -> None:
        """After aclose, connect raises RuntimeError and wait_connected raises ConnectionLost."""
        await transport.aclose()
        with pytest.raises(RuntimeError):
            await transport.connect(timeout=1)
        with pytest.raises(ConnectionLost):
            await transport.wait_connected()
        transport.simulate_connection_loss()  # a no-op when not connected
        transport.simulate_reconnect()
        assert not transport.is_connected


class TestSettling:
    async def test_reject_after_ack_raises(self, transport: MemoryTransport) -> None:
        """A delivery settles once, whichever way."""
        await transport.declare(single_queue("q"))
        await _publish(transport, "q", "1")
        delivery = await transport.get("q")
        assert delivery is not None
        await delivery.reject(requeue=False)
        with pytest.raises(ConnectionLost):
            await delivery.ack()

    async def test_settling_a_delivery_of_a_deleted_queue_is_harmless(
        self, transport: MemoryTransport
    ) -> None:
        """Acking or rejecting a delivery whose queue was deleted does nothing (as RabbitMQ)."""
        await transport.declare(single_queue("q"))
        await _publish(transport, "q", "1", "2")
        first, second = await drain(transport, "q", ack=False)
        await transport.delete_queue("q")
        await first.ack()
        await second.reject(requeue=True)
        await transport.declare(single_queue("q"))
        assert await transport.message_count("q") == 0

    async def test_failing_callback_is_logged_and_keeps_the_delivery(
        self, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An on_delivery that raises is logged; its delivery stays unsettled."""
        await transport.declare(single_queue("q"))
        seen: list[Delivery] = []
        arrived = anyio.Event()

        def broken(delivery: Delivery) -> None:
            seen.append(delivery)
            arrived.set()
            raise RuntimeError("boom")

        await transport.consume("q", prefetch=1, on_delivery=broken)
        await _publish(transport, "q", "1")
        with anyio.fail_after(5):
            await arrived.wait()
        assert len(seen) == 1
        assert "on_delivery raised" in caplog.text
        assert await transport.message_count("q") == 0
        await seen[0].ack()

    async def test_prefetch_zero_means_no_limit(self, transport: MemoryTransport) -> None:
        """prefetch=0 delivers everything at once, as in AMQP."""
        await transport.declare(single_queue("q"))
        await _publish(transport, "q", *map(str, range(5)))
        inbox = Inbox()
        await transport.consume("q", prefetch=0, on_delivery=inbox)
        assert len(await inbox.take(5)) == 5
        with pytest.raises(ConfigurationError):
            await transport.consume("q", prefetch=-1, on_delivery=inbox)

    async def test_delivery_headers_are_copies(self, transport: MemoryTransport) -> None:
        """Changing a delivery's headers does not change the message when it comes back."""
        await transport.declare(single_queue("q"))
        await transport.publish(message("q", headers={"tags": ["a"]}), timeout=1)
        delivery = await transport.get("q")
        assert delivery is not None
        tags = delivery.headers["tags"]
        assert isinstance(tags, list)
        tags.append("changed")
        await delivery.reject(requeue=True)
        again = await transport.get("q")
        assert again is not None
        assert again.headers == {"tags": ["a"]}
        assert "x-delivery-count" not in again.headers  # classic queues do not count


class TestRequeueOrder:
    @pytest.mark.parametrize(
        ("arguments", "rejected", "order"),
        [
            pytest.param({}, 2, ["0", "1", "2"], id="classic-to-the-original-position"),
            pytest.param({"x-queue-type": "quorum"}, 1, ["1", "2", "0"], id="quorum-to-the-back"),
            pytest.param(
                {"x-queue-type": "quorum", "x-delivery-limit": 5},
                2,
                ["1", "0", "2"],
                id="quorum-with-limit-returns-first",
            ),
        ],
    )
    async def test_requeued_messages_come_back_in_the_order_rabbitmq_measures(
        self,
        transport: MemoryTransport,
        arguments: dict[str, ArgumentValue],
        rejected: int,
        order: list[str],
    ) -> None:
        """Classic queues put a requeued message back where it was (measured on 3.10); a quorum
        queue without delivery limit requeues it at the back; with a delivery limit, returned
        messages come first, in the order they came back."""
        await transport.declare(single_queue("q", arguments))
        await _publish(transport, "q", "0", "1", "2")
        taken = [await transport.get("q") for _ in range(rejected)]
        for delivery in reversed(taken):  # the last taken comes back first
            assert delivery is not None
            await delivery.reject(requeue=True)
        assert await _ids(transport, "q") == order

    async def test_connection_loss_returns_to_the_head_in_delivery_order(
        self, transport: MemoryTransport
    ) -> None:
        """Deliveries of a lost connection come back first, in delivery order, on any queue."""
        await transport.declare(single_queue("q", {"x-queue-type": "quorum"}))
        await _publish(transport, "q", "0", "1", "2", "3")
        taken = [await transport.get("q") for _ in range(2)]  # held, unsettled, at the loss
        assert None not in taken
        transport.simulate_connection_loss(reconnect_after=None)
        transport.simulate_reconnect()
        drained = await drain(transport, "q", ack=False)
        assert [(d.message_id, d.redelivered) for d in drained] == [
            ("0", True),
            ("1", True),
            ("2", False),
            ("3", False),
        ]


class TestDeadLettering:
    async def test_x_death_counts_repeated_deaths(self, transport: MemoryTransport) -> None:
        """A second death in the same queue for the same reason increments its x-death entry."""
        await transport.declare(
            Topology(
                exchanges=(ExchangeSpec("dx"),),
                queues=(
                    QueueSpec(
                        "rq", {"x-dead-letter-exchange": "dx", "x-dead-letter-routing-key": "k"}
                    ),
                ),
                bindings=(BindingSpec("rq", "dx", "k"),),
            )
        )
        await transport.publish(
            message("rq", headers={"x-first-death-reason": "forged"}), timeout=1
        )
        for _ in range(2):
            delivery = await transport.get("rq")
            assert delivery is not None
            await delivery.reject(requeue=False)
        letter = await transport.get("rq")
        assert letter is not None
        assert letter.routing_key == "k"
        assert letter.headers["x-first-death-reason"] == "rejected"  # set by the first death
        deaths = letter.headers["x-death"]
        assert isinstance(deaths, list)
        assert len(deaths) == 1
        assert isinstance(deaths[0], dict)
        assert deaths[0]["count"] == 2
        assert deaths[0]["routing-keys"] == ["rq"]  # the first death's, kept

    async def test_expired_message_dead_lettered_to_its_own_queue_is_dropped(
        self,
        advance: Callable[[float], None],
        transport: MemoryTransport,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A dead-letter cycle with no rejection in it drops the message (RabbitMQ's rule)."""
        await transport.declare(
            Topology(
                exchanges=(ExchangeSpec("x"),),
                queues=(QueueSpec("cycle", {"x-message-ttl": 100, "x-dead-letter-exchange": "x"}),),
                bindings=(BindingSpec("cycle", "x", "k"),),
            )
        )
        await transport.publish(message("k", exchange="x"), timeout=1)
        advance(1)
        assert await transport.message_count("cycle") == 0
        assert "dropped" in caplog.text

    async def test_republished_x_death_headers_cause_a_drop(
        self, advance: Callable[[float], None], transport: MemoryTransport
    ) -> None:
        """Copying x-death into a new publish makes the next TTL pass look like a cycle."""
        arguments: dict[str, ArgumentValue] = {
            "x-message-ttl": 100,
            "x-dead-letter-exchange": "x",
        }
        await transport.declare(
            Topology(
                exchanges=(ExchangeSpec("x"),),
                queues=(
                    QueueSpec("t1", {**arguments, "x-dead-letter-routing-key": "t2"}),
                    QueueSpec("t2", {**arguments, "x-dead-letter-routing-key": "dest"}),
                    QueueSpec("dest"),
                ),
                bindings=(BindingSpec("t2", "x", "t2"), BindingSpec("dest", "x", "dest")),
            )
        )
        await transport.publish(message("t1"), timeout=1)
        for _ in range(2):
            advance(1)
        first = await transport.get("dest")
        assert first is not None
        deaths = first.headers["x-death"]
        assert isinstance(deaths, list)
        assert [d["queue"] for d in deaths if isinstance(d, dict)] == ["t2", "t1"]
        await transport.publish(message("t1", headers=first.headers), timeout=1)
        for _ in range(2):
            advance(1)
        assert await transport.message_count("dest") == 0

    async def test_drop_head_overflow_dead_letters_the_oldest(
        self, transport: MemoryTransport
    ) -> None:
        """x-max-length with drop-head dead-letters the head with reason maxlen."""
        await transport.declare(dead_lettering_queue("q", "dlq", {"x-max-length": 1}))
        await _publish(transport, "q", "old", "new")
        letter = await transport.get("dlq")
        assert letter is not None
        assert (letter.message_id, letter.headers["x-first-death-reason"]) == ("old", "maxlen")
        assert await _ids(transport, "q") == ["new"]

    async def test_reject_publish_dlx_nacks_and_dead_letters(
        self, transport: MemoryTransport
    ) -> None:
        """x-overflow reject-publish-dlx refuses the new message and dead-letters it."""
        overflow: dict[str, ArgumentValue] = {"x-max-length": 0, "x-overflow": "reject-publish-dlx"}
        await transport.declare(dead_lettering_queue("q", "dlq", overflow))
        with pytest.raises(PublishNacked):
            await _publish(transport, "q", "1")
        assert await transport.message_count("dlq") == 1

    async def test_fanout_to_a_full_queue_nacks_but_keeps_the_other_copies(
        self, transport: MemoryTransport
    ) -> None:
        """One refusing queue nacks the publish; the other queues keep their copy (measured)."""
        await transport.declare(exchange_with_queues("fan", "fanout", {"a": "", "b": ""}))
        await transport.declare(
            single_queue("full", {"x-max-length": 0, "x-overflow": "reject-publish"})
        )
        await transport.declare(Topology(bindings=(BindingSpec("full", "fan", ""),)))
        with pytest.raises(PublishNacked):
            await transport.publish(message("any", exchange="fan"), timeout=1)
        assert await transport.message_count("a") == 1
        assert await transport.message_count("b") == 1


class TestMessageTtl:
    async def test_injected_clock_drives_expiry(
        self, advance: Callable[[float], None], transport: MemoryTransport
    ) -> None:
        """With a fake clock, a message expires when the clock passes its TTL and timers run."""
        await transport.declare(ttl_queue("hour", 3_600_000, "dest"))
        await _publish(transport, "hour", "1")
        advance(3599)
        assert await transport.message_count("hour") == 1
        advance(1)
        assert await transport.message_count("hour") == 0
        assert await transport.message_count("dest") == 1

    async def test_unacked_messages_do_not_expire_until_requeued(
        self, advance: Callable[[float], None], transport: MemoryTransport
    ) -> None:
        """An unsettled message outlives its TTL; requeued after it, it is dead-lettered."""
        await transport.declare(ttl_queue("ttl", 100, "dest"))
        await _publish(transport, "ttl", "1")
        delivery = await transport.get("ttl")
        assert delivery is not None
        advance(1)
        assert await transport.message_count("dest") == 0
        await delivery.reject(requeue=True)
        assert await transport.message_count("ttl") == 0
        letter = await transport.get("dest")
        assert letter is not None
        assert letter.headers["x-first-death-reason"] == "expired"

    async def test_expiry_happens_at_the_head_only(
        self, clock: FakeClock, transport: MemoryTransport
    ) -> None:
        """Behind an unexpired head, nothing expires (RabbitMQ checks the head only)."""
        await transport.declare(ttl_queue("ttl", 1000, "dest"))
        await _publish(transport, "ttl", "old")
        clock.now += 0.9
        await _publish(transport, "ttl", "new")
        held = await transport.get("ttl")  # "old", unsettled
        assert held is not None
        clock.now += 0.2  # "old" is past its TTL, "new" is not
        await held.reject(requeue=True)  # back at the head, expired
        assert await _ids(transport, "ttl") == ["new"]
        assert await _ids(transport, "dest") == ["old"]


class TestDeclarations:
    async def test_exchange_redeclared_with_another_type_is_refused(
        self, transport: MemoryTransport
    ) -> None:
        """An exchange declared again with another type raises ConfigurationError (406)."""
        await transport.declare(Topology(exchanges=(ExchangeSpec("x", "direct"),)))
        with pytest.raises(ConfigurationError):
            await transport.declare(Topology(exchanges=(ExchangeSpec("x", "topic"),)))

    async def test_binding_needs_its_exchange_and_queue(self, transport: MemoryTransport) -> None:
        """Binding to a missing exchange or queue raises ConfigurationError (404)."""
        await transport.declare(Topology(exchanges=(ExchangeSpec("x"),)))
        with pytest.raises(ConfigurationError):
            await transport.declare(Topology(bindings=(BindingSpec("missing", "x", "k"),)))
        with pytest.raises(ConfigurationError):
            await transport.declare(Topology(bindings=(BindingSpec("q", "missing", "k"),)))

    async def test_unchecked_arguments_may_differ(self, transport: MemoryTransport) -> None:
        """RabbitMQ compares only known x- arguments; an unknown one may change."""
        await transport.declare(single_queue("q", {"x-queue-type": "quorum", "x-foo": 1}))
        await transport.declare(single_queue("q", {"x-queue-type": "quorum", "x-foo": 2}))

    @pytest.mark.parametrize(
        ("arguments", "durable"),
        [
            ({"x-queue-type": "quorum"}, False),
            ({"x-queue-type": "stream"}, True),
            ({"x-max-length": -1}, True),
            ({"x-message-ttl": "soon"}, True),
            ({"x-overflow": "explode"}, True),
        ],
    )
    async def test_invalid_queue_declarations_are_refused(
        self, transport: MemoryTransport, arguments: dict[str, ArgumentValue], durable: bool
    ) -> None:
        """Declarations RabbitMQ refuses (or the fake cannot model) raise ConfigurationError."""
        with pytest.raises(ConfigurationError):
            await transport.declare(single_queue("q", arguments, durable=durable))

    async def test_single_active_consumer(self, transport: MemoryTransport) -> None:
        """Only the first consumer of an x-single-active-consumer queue gets messages."""
        await transport.declare(single_queue("q", {"x-single-active-consumer": True}))
        active, standby = Inbox(), Inbox()
        consumer = await transport.consume("q", prefetch=10, on_delivery=active)
        await transport.consume("q", prefetch=10, on_delivery=standby)
        await _publish(transport, "q", "1", "2")
        assert len(await active.take(2)) == 2
        await consumer.cancel()
        await _publish(transport, "q", "3")
        assert (await standby.next()).message_id == "3"
        assert not active.deliveries


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "", True),
        ("*", "", False),
        ("#.c", "a.b.c", True),
        ("a.#.c", "a.c", True),
        ("a.#.#.c", "a.x.y.c", True),
        ("a.*.#", "a", False),
        ("", "", True),
        ("a..b", "a..b", True),
        ("*.*", "a..b", False),
    ],
)
def test_topic_matching(pattern: str, key: str, matches: bool) -> None:
    """Topic patterns follow the AMQP rules, including empty words and keys."""
    assert topic_matches(pattern, key) is matches


async def test_testing_module_exports_the_memory_transport() -> None:
    """aqueue.testing makes a working transport with no broker argument."""
    transport = MemoryTransport()
    await transport.connect(timeout=1)
    await transport.declare(single_queue("q"))
    await _publish(transport, "q", "1")
    assert await transport.message_count("q") == 1
    await transport.aclose()
