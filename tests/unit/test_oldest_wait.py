"""The oldest-wait estimate of one queue's runners (docs/scaling.md), on given clocks."""

from __future__ import annotations

from aqueue._worker.intake import Intake
from aqueue._worker.waits import FULL_GRACE, QueueRunners

DUE = 1_000.0  # epoch seconds of the last started job's due time


def saturated_runners() -> QueueRunners:
    """Two runners, both busy with jobs due at `DUE`, and a backlog on the broker."""
    runners = QueueRunners("default", Intake(), concurrency=2, prefetch=2)
    runners.ready = 500
    runners.started_job(now=0.0, wall=DUE + 1, due=DUE)
    runners.started_job(now=0.0, wall=DUE + 1, due=DUE)
    return runners


def test_a_runner_between_two_jobs_of_a_backlog_keeps_the_estimate() -> None:
    """One runner settles its job and has not started the next: the backlog is still
    unserved, so the estimate goes on rising instead of reading 0 for that instant."""
    runners = saturated_runners()
    assert runners.oldest_wait(DUE + 5, 5.0, serving=True) == (5.0, False)
    runners.finished_job(5.0)
    assert runners.oldest_wait(DUE + 5.5, 5.5, serving=True) == (5.5, False)


def test_runners_idle_past_the_grace_read_zero() -> None:
    """A queue whose runners sit idle longer than `FULL_GRACE` is served faster than it
    fills: a stale positive ready count no longer makes a wait out of the last job."""
    runners = saturated_runners()
    runners.finished_job(5.0)
    assert runners.oldest_wait(DUE + 6, 5.0 + FULL_GRACE + 0.01, serving=True) == (0.0, False)


def test_a_paused_consumer_counts_as_unserved() -> None:
    """With the consumer paused nothing is started, idle runners or not."""
    runners = saturated_runners()
    runners.finished_job(5.0)
    runners.finished_job(5.0)
    assert runners.oldest_wait(DUE + 60, 60.0, serving=False) == (60.0, False)
