"""The autoscaler's decisions in heartbeats: the per-queue log, the payload, old heartbeats."""

from __future__ import annotations

import itertools
import time

import anyio
from rich.console import Console

from aqueue import TaskQueue, WorkerSettings
from aqueue._cli.stats import _tables, last_scaling, stats_json
from aqueue._core.config import Autoscale
from aqueue._core.heartbeats import (
    MAX_DECISIONS,
    MAX_REASON_CHARS,
    Heartbeat,
    QueueFigures,
    ScaleDecision,
    Seen,
    aggregate,
)
from aqueue._worker.scaling import DecisionLog
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for


def decision(at: float, action: str = "grow", before: int = 1, after: int = 2) -> ScaleDecision:
    return ScaleDecision(at, action, before, after, f"reason at {at}")


def beat(figures: QueueFigures) -> Heartbeat:
    return Heartbeat(
        worker_id="w1",
        host="h",
        pid=1,
        prefix="app",
        concurrency=1,
        started_at=1000.0,
        sent_at=1010.0,
        interval=5.0,
        queues={"emails": figures},
    )


def test_the_log_keeps_the_newest_decisions_of_each_queue_newest_first() -> None:
    """Seven decisions on one queue: the last five, newest first; another queue is apart;
    a long reason is cut to MAX_REASON_CHARS."""
    log = DecisionLog()
    for at in range(7):
        log.note("emails", decision(float(at)))
    log.note("reports", ScaleDecision(9.0, "hold", 3, 3, "x" * 1000))
    assert [d.at for d in log.recent("emails")] == [6.0, 5.0, 4.0, 3.0, 2.0]
    assert len(log.recent("emails")) == MAX_DECISIONS
    (held,) = log.recent("reports")
    assert (held.action, held.before, held.after) == ("hold", 3, 3)
    assert len(held.reason) == MAX_REASON_CHARS
    assert log.recent("unknown") == ()


def test_decisions_round_trip_in_the_heartbeat_and_are_bounded() -> None:
    """`to_payload` writes at most MAX_DECISIONS as {at, action, from, to, reason};
    `from_payload` reads them back in order."""
    kept = tuple(decision(float(at)) for at in (5, 4, 3))
    payload = beat(QueueFigures(concurrency=2, decisions=kept)).to_payload()
    assert payload["queues"]["emails"]["decisions"][0] == {
        "at": 5.0,
        "action": "grow",
        "from": 1,
        "to": 2,
        "reason": "reason at 5.0",
    }
    assert Heartbeat.from_payload(payload).queues["emails"].decisions == kept
    many = tuple(decision(float(at)) for at in range(20, 0, -1))
    payload = beat(QueueFigures(concurrency=2, decisions=many)).to_payload()
    assert len(payload["queues"]["emails"]["decisions"]) == MAX_DECISIONS


def test_an_old_heartbeat_without_decisions_is_read_and_bad_entries_are_skipped() -> None:
    """A heartbeat from a worker before this field decodes with no decisions; entries of the
    wrong shape are skipped, the good ones kept."""
    payload = beat(QueueFigures(concurrency=2)).to_payload()
    del payload["queues"]["emails"]["decisions"]
    assert Heartbeat.from_payload(payload).queues["emails"].decisions == ()
    payload["queues"]["emails"]["decisions"] = [
        {"at": 1.0, "action": "grow", "from": 1, "to": "2", "reason": "r"},
        "not a decision",
        decision(2.0).to_payload(),
    ]
    assert Heartbeat.from_payload(payload).queues["emails"].decisions == (decision(2.0),)
    payload["queues"]["emails"]["decisions"] = {"not": "a list"}
    assert Heartbeat.from_payload(payload).queues["emails"].decisions == ()


def test_stats_json_shows_each_workers_decisions_per_queue() -> None:
    """``aqueue stats --json``: ``workers[].decisions`` maps a queue to its decisions; a queue
    without any is left out."""
    kept = (decision(1005.0, "shrink", 4, 3),)
    seen = [Seen(beat(QueueFigures(concurrency=3, decisions=kept)), received_at=1010.0)]
    (row,) = aggregate(seen, {}, now=1011.0).workers
    assert row.decisions == {"emails": kept}
    document = stats_json(aggregate(seen, {}, now=1011.0), now=1011.0, window=1.0)
    assert document["workers"][0]["decisions"] == {
        "emails": [{"at": 1005.0, "action": "shrink", "from": 4, "to": 3, "reason": kept[0].reason}]
    }
    quiet = [Seen(beat(QueueFigures(concurrency=3)), received_at=1010.0)]
    assert (
        stats_json(aggregate(quiet, {}, now=1011.0), now=1011.0, window=1.0)["workers"][0][
            "decisions"
        ]
        == {}
    )


async def test_a_worker_keeps_its_growth_and_shrink_decisions_for_its_heartbeat() -> None:
    """On the in-memory broker, a backlog grows the queue from 2 and idleness shrinks it back:
    `queue_figures()` (what the heartbeat sends) lists both, newest first, with from/to."""
    queue = TaskQueue("memory://", prefix="t", telemetry=False)

    @queue.task
    async def nap() -> None:
        await anyio.sleep(0.02)

    settings = WorkerSettings(
        autoscale=Autoscale(2, 32, target_wait=0.05, interval=0.2), ready_interval=0.1
    )
    async with queue:
        await queue.enqueue_many(nap, [() for _ in range(1000)])
        async with running_worker(queue, settings) as worker:
            await worker.wait_until(lambda s: s.succeeded == 1000)

            def decisions() -> tuple[ScaleDecision, ...]:
                return worker.queue_figures()["default"].decisions

            await wait_for(
                lambda: bool(decisions()) and decisions()[0].action == "shrink",
                timeout=10,
                what="a shrink decision once idle",
            )
            kept = decisions()
    newest = kept[0]
    assert newest.after < newest.before
    assert newest.reason
    assert [d.at for d in kept] == sorted((d.at for d in kept), reverse=True)
    assert len(kept) <= MAX_DECISIONS
    for earlier, later in itertools.pairwise(reversed(kept)):
        assert later.before == earlier.after  # one chain of changes


async def test_a_cpu_bound_queue_keeps_one_hold_decision_with_its_reason() -> None:
    """Jobs that block the event loop: the autoscaler holds the queue as CPU-bound, and that
    hold (from == to) is kept with its reason (the loop lag)."""
    queue = TaskQueue("memory://", prefix="t", telemetry=False)

    @queue.task
    async def spin() -> None:
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    scaling = Autoscale(2, 32, target_wait=0.05, interval=0.2, lag_limit=0.002)
    async with queue:
        await queue.enqueue_many(spin, [() for _ in range(600)])
        async with running_worker(queue, WorkerSettings(autoscale=scaling)) as worker:

            def holds() -> list[ScaleDecision]:
                figures = worker.queue_figures()["default"]
                return [d for d in figures.decisions if d.action == "hold"]

            await wait_for(lambda: bool(holds()), timeout=20, what="a CPU-bound hold")
            hold = holds()[-1]
            worker.stop()  # the rest of the backlog is handed back, not run
    assert hold.before == hold.after
    assert "CPU-bound" in hold.reason


def test_the_stats_table_shows_each_workers_newest_decision() -> None:
    """The workers table's "last scaling" cell: the newest decision of any queue, with the
    time in UTC; blank for a worker that has none."""
    kept = (decision(1005.0, "shrink", 4, 3), decision(1001.0))
    seen = [Seen(beat(QueueFigures(concurrency=3, decisions=kept)), received_at=1010.0)]
    (row,) = aggregate(seen, {}, now=1011.0).workers
    assert last_scaling(row) == "emails: shrink 4 -> 3 at 00:16:45 UTC"
    console = Console(width=300, record=True)
    console.print(_tables(aggregate(seen, {}, now=1011.0)))
    assert "emails: shrink 4 -> 3 at 00:16:45 UTC" in console.export_text()
    quiet = [Seen(beat(QueueFigures(concurrency=3)), received_at=1010.0)]
    assert last_scaling(aggregate(quiet, {}, now=1011.0).workers[0]) == ""
