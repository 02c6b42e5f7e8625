from __future__ import annotations

import pytest

from aqueue._core.config import QueueSettings
from aqueue._core.delays import (
    DELAY_LEVELS,
    MAX_DELAY_MS,
    delay_routing_key,
    delay_topology,
    delay_units,
    entry_exchange,
)
from aqueue._core.queues import queue_topology
from aqueue._core.topology import MAX_QUEUE_NAME_BYTES, Topology, TopologyNames, validate_name
from aqueue.exceptions import ConfigurationError


def test_quorum_work_queue_arguments() -> None:
    """Quorum work queues get a delivery limit and at-least-once dead-lettering to the DLX."""
    names = TopologyNames("app")
    topology = queue_topology(names, "emails", QueueSettings("quorum", delivery_limit=4))
    work = next(q for q in topology.queues if q.name == "app.emails")
    assert dict(work.arguments) == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "app.dlx",
        "x-dead-letter-routing-key": "emails",
        "x-delivery-limit": 4,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert {(b.queue, b.exchange, b.routing_key) for b in topology.bindings} == {
        ("app.emails", "app", "emails"),
        ("app.emails.dlq", "app.dlx", "emails"),
        ("app.emails", "app.delay.deliver", "*." * DELAY_LEVELS + "emails"),
    }


def test_classic_work_queue_has_no_quorum_arguments() -> None:
    """Classic queues carry no quorum-only arguments (RabbitMQ would refuse them)."""
    topology = queue_topology(TopologyNames(), "q", QueueSettings("classic"))
    work = topology.queues[0]
    assert work.arguments["x-queue-type"] == "classic"
    assert "x-delivery-limit" not in work.arguments
    assert "x-dead-letter-strategy" not in work.arguments


def test_topologies_merge_without_duplicates() -> None:
    """Adding topologies keeps each declaration once, in first-seen order."""
    names = TopologyNames()
    a = queue_topology(names, "a", QueueSettings())
    b = queue_topology(names, "b", QueueSettings())
    merged = a + b + a
    assert isinstance(merged, Topology)
    assert len(merged.exchanges) == 3
    assert [q.name for q in merged.queues] == [
        "aqueue.a",
        "aqueue.a.quarantine",
        "aqueue.a.dlq",
        "aqueue.b",
        "aqueue.b.quarantine",
        "aqueue.b.dlq",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "has space",
        "slash/no",
        "x" * (MAX_QUEUE_NAME_BYTES + 1),
        3,
        "a.dlq",
        "a.quarantine",
        "delay.1",
    ],
)
def test_bad_names_are_refused(name: object) -> None:
    """Empty, oversized or oddly spelled names are configuration errors."""
    with pytest.raises(ConfigurationError):
        validate_name(name)


def test_bad_settings_are_refused() -> None:
    """Unknown queue types and delivery limits below 1 are configuration errors."""
    with pytest.raises(ConfigurationError, match="quorum"):
        QueueSettings("stream")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="delivery_limit"):
        QueueSettings(delivery_limit=0)


def test_delay_units_round_up_and_cap() -> None:
    """Delays round up to whole 10 ms units (never early) and cap at the top level."""
    assert delay_units(0) == 0
    assert delay_units(-5) == 0
    assert delay_units(1) == 1
    assert delay_units(9) == 1
    assert delay_units(10) == 2  # 10 ms in one hop leaves no millisecond to spare
    assert delay_units(11) == 2
    assert delay_units(19) == 2
    assert delay_units(29) == 4  # 3 units would be 2 hops (0b11) with 1 ms to spare
    for delay_ms in range(1, 5_000):
        units = delay_units(delay_ms)
        assert units * 10 - delay_ms >= units.bit_count()  # a millisecond per hop
        assert units * 10 - delay_ms < 10 + units.bit_count() + 10  # and not much more
    assert delay_units(MAX_DELAY_MS * 2) == (1 << DELAY_LEVELS) - 1
    assert MAX_DELAY_MS >= 30 * 24 * 3600 * 1000


def test_delay_routing_key_spells_the_delay_in_binary() -> None:
    """The routing key is DELAY_LEVELS bits, most significant first, then the destination."""
    key = delay_routing_key(5, "my.orders")
    words = key.split(".")
    assert words[:DELAY_LEVELS] == ["0"] * (DELAY_LEVELS - 3) + ["1", "0", "1"]
    assert ".".join(words[DELAY_LEVELS:]) == "my.orders"
    assert len(delay_routing_key(1, "q" * MAX_QUEUE_NAME_BYTES).encode()) <= 255


def _route(topology: Topology, exchange: str, key: str, hops: list[str]) -> str:
    """Follow a message through the delay levels by hand (topic matching on exact words)."""
    by_exchange: dict[str, list[tuple[str, str, bool]]] = {}
    for b in topology.bindings:
        by_exchange.setdefault(b.exchange, []).append((b.queue, b.routing_key, b.to_exchange))
    ttl = {q.name: int(q.arguments["x-message-ttl"]) for q in topology.queues}
    dlx = {q.name: str(q.arguments["x-dead-letter-exchange"]) for q in topology.queues}
    words = key.split(".")

    def matches(pattern: str) -> bool:
        parts = pattern.split(".")
        if parts[-1] == "#":
            parts = parts[:-1]
            return all(p in ("*", w) for p, w in zip(parts, words, strict=False))
        return len(parts) == len(words) and all(
            p in ("*", w) for p, w in zip(parts, words, strict=True)
        )

    while exchange in by_exchange and exchange != "t.delay.deliver":
        [(target, _, to_exchange)] = [b for b in by_exchange[exchange] if matches(b[1])]
        if to_exchange:
            exchange = target
        else:
            hops.append(f"{target}:{ttl[target]}")
            exchange = dlx[target]
    return exchange


@pytest.mark.parametrize("units", [0, 1, 2, 5, 100, 12345, (1 << DELAY_LEVELS) - 1])
def test_delay_levels_add_up_to_the_delay(units: int) -> None:
    """Each set bit passes one level queue whose TTLs sum to the delay; zero bits pass through."""
    names = TopologyNames("t")
    topology = delay_topology(names, QueueSettings())
    hops: list[str] = []
    end = _route(topology, entry_exchange(names), delay_routing_key(units, "q"), hops)
    assert end == names.delay_delivery_exchange
    assert sum(int(hop.split(":")[1]) for hop in hops) == units * 10
    assert len(hops) == bin(units).count("1")


def test_delay_level_queues_are_quorum_at_least_once() -> None:
    """Level queues dead-letter at-least-once (with reject-publish, or RabbitMQ falls back)."""
    topology = delay_topology(TopologyNames("t"), QueueSettings())
    assert len(topology.queues) == DELAY_LEVELS
    for queue in topology.queues:
        assert queue.arguments["x-dead-letter-strategy"] == "at-least-once"
        assert queue.arguments["x-overflow"] == "reject-publish"
