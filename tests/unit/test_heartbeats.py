"""Heartbeats: the payload, the drop-out rule, the aggregation of ``aqueue stats``, the sender."""

from __future__ import annotations

import anyio
import pytest

from aqueue import TaskQueue
from aqueue._core.config import WorkerSettings
from aqueue._core.heartbeats import (
    HEARTBEAT_BINDING,
    Heartbeat,
    QueueFacts,
    QueueFigures,
    Seen,
    aggregate,
    control_exchange,
    live_workers,
)
from aqueue._serialization import loads
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker


def beat(
    worker_id: str = "w1",
    *,
    queues: dict[str, QueueFigures] | None = None,
    interval: float = 5.0,
    stopping: bool = False,
) -> Heartbeat:
    return Heartbeat(
        worker_id=worker_id,
        host="host-a",
        pid=123,
        prefix="app",
        concurrency=4,
        started_at=1000.0,
        sent_at=1010.0,
        interval=interval,
        queues=queues if queues is not None else {"emails": QueueFigures(concurrency=4)},
        counters={"received": 3, "succeeded": 2},
        stopping=stopping,
    )


def test_payload_round_trips_with_every_documented_field() -> None:
    """`to_payload` writes the documented fields; `from_payload` reads back the same heartbeat."""
    figures = QueueFigures(
        concurrency=4, in_flight=2, held=1, received=10, settled=8, settled_per_s=1.5, ready=7
    )
    original = beat(queues={"emails": figures})
    payload = original.to_payload()
    assert set(payload) == {
        "version", "worker_id", "host", "pid", "prefix", "queues", "concurrency", "in_flight",
        "counters", "started_at", "sent_at", "interval", "stopping",
    }  # fmt: skip
    assert payload["in_flight"] == 2
    assert payload["queues"]["emails"]["busy_ratio"] == 0.5
    assert payload["queues"]["emails"]["wait_p95"] is None
    assert Heartbeat.from_payload(payload) == original


def test_unknown_fields_are_ignored_and_another_version_is_refused() -> None:
    """A version 1 reader skips fields it does not know; version 2 raises ValueError."""
    payload = beat().to_payload()
    payload["queues"]["emails"]["something_new"] = 1
    payload["also_new"] = {"x": 1}
    assert Heartbeat.from_payload(payload) == beat()
    with pytest.raises(ValueError, match="version"):
        Heartbeat.from_payload({**payload, "version": 2})
    with pytest.raises(ValueError, match="pid"):
        Heartbeat.from_payload({**payload, "pid": "123"})


def test_a_worker_drops_out_after_three_silent_intervals_or_when_stopping() -> None:
    """`live_workers` keeps a worker heard within 3 intervals; it drops one that says stopping."""
    seen = [Seen(beat("w1", interval=2.0), received_at=100.0)]
    assert list(live_workers(seen, now=106.0)) == ["w1"]
    assert list(live_workers(seen, now=106.1)) == []
    seen.append(Seen(beat("w1", interval=2.0, stopping=True), received_at=101.0))
    assert list(live_workers(seen, now=101.5)) == []


def test_aggregate_sums_unacked_and_rates_and_takes_the_worst_wait() -> None:
    """Per queue: unacked = running + prefetched; out = settled/s summed; in adds ready's change."""
    one = QueueFigures(
        concurrency=4, in_flight=4, held=2, received_per_s=3.0, settled_per_s=2.0, wait_p95=1.5
    )
    two = QueueFigures(
        concurrency=4, in_flight=1, received_per_s=1.0, settled_per_s=1.0, wait_p95=0.5
    )
    seen = [
        Seen(beat("w1", queues={"emails": one}), received_at=100.0),
        Seen(beat("w2", queues={"emails": two, "reports": two}), received_at=100.0),
    ]
    facts = {
        "emails": QueueFacts(ready=12, consumers=2, ready_per_s=-1.0),
        "reports": QueueFacts(ready=None, consumers=None),
    }
    view = aggregate(seen, facts, now=101.0, queues=["idle"])
    emails, idle, reports = view.queues
    assert (emails.queue, idle.queue, reports.queue) == ("emails", "idle", "reports")
    assert (emails.ready, emails.unacked, emails.consumers, emails.workers) == (12, 7, 2, 2)
    assert (emails.in_per_s, emails.out_per_s, emails.wait_p95) == (3.0, 3.0, 1.5)
    assert emails.wait_p50 is None
    assert emails.oldest_wait is None
    assert (idle.ready, idle.unacked, idle.in_per_s, idle.out_per_s) == (None, 0, None, None)
    assert [w.worker_id for w in view.workers] == ["w1", "w2"]
    assert view.workers[0].busy_ratio == 1.0
    assert view.workers[1].queues == ("emails", "reports")
    assert view.workers[1].last_seen == 1.0


def test_the_arrival_rate_is_never_negative() -> None:
    """A queue draining faster than workers report receiving shows 0 jobs/s in, not less."""
    figures = QueueFigures(concurrency=1, received_per_s=1.0)
    seen = [Seen(beat(queues={"q": figures}), received_at=0.0)]
    [row] = aggregate(seen, {"q": QueueFacts(0, 1, ready_per_s=-5.0)}, now=0.0).queues
    assert row.in_per_s == 0.0


def test_heartbeat_interval_is_validated() -> None:
    """A heartbeat interval of 0 is refused with ConfigurationError."""
    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        WorkerSettings(heartbeat_interval=0)


async def test_a_running_worker_heartbeats_and_says_stopping_at_the_end() -> None:
    """A worker publishes its queues' figures to the control exchange, then stopping: true."""
    queue = TaskQueue("memory://", prefix="hb")

    @queue.task(queue="emails")
    async def noop() -> None:
        pass

    received: list[Heartbeat] = []
    arrived = anyio.Event()

    def on_notice(_key: str, body: bytes) -> None:
        received.append(Heartbeat.from_payload(loads(body)))
        arrived.set()

    settings = WorkerSettings(concurrency=3, heartbeat_interval=0.05)
    async with queue, queue.session() as session:
        async with running_worker(queue, settings) as worker:
            await queue.enqueue(noop)
            with anyio.fail_after(5):
                await worker.wait_until(lambda stats: stats.succeeded == 1)
            listener = await session.transport.listen(
                control_exchange("hb"), HEARTBEAT_BINDING, on_notice
            )
            with anyio.fail_after(5):
                while not any(b.queues["emails"].settled == 1 for b in received):
                    arrived = anyio.Event()
                    await arrived.wait()
        with anyio.fail_after(5):
            while not received[-1].stopping:
                arrived = anyio.Event()
                await arrived.wait()
        await listener.cancel()
    first = received[0]
    assert (first.prefix, first.concurrency, list(first.queues)) == ("hb", 3, ["emails"])
    assert first.queues["emails"].ready == 0
    assert first.counters["succeeded"] == 1
    assert received[-1].stopping
    assert not first.stopping
