"""The autoscaler's decisions in heartbeats: the per-queue log, the payload, old heartbeats."""

from __future__ import annotations

from aqueue._cli.stats import stats_json
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
