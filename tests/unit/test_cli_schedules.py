"""``aqueue scheduler``, ``schedules`` and ``cancel``: bad input fails before connecting, and
``worker`` runs a scheduler only when the app has schedules and ``--no-scheduler`` is not given."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from aqueue._cli import worker as cli_worker
from aqueue._cli.common import app
from aqueue._cli.schedules import schedules_json
from aqueue._core.schedules import Every, Mark, Schedule, SchedulerStatus

WIDE_PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
JOBS = "tests.integration.apps.jobs:queue"  # no schedules
PERIODIC = "tests.integration.apps.periodic:queue"


def test_scheduler_refuses_an_app_without_schedules() -> None:
    """An app with no schedules exits 2, naming the problem, before connecting."""
    result = CliRunner().invoke(app, ["scheduler", JOBS], env=WIDE_PLAIN)
    assert result.exit_code == 2
    assert "has no schedules" in result.output


def test_cancel_refuses_an_empty_job_id() -> None:
    """``aqueue cancel APP ''`` exits 2 before connecting."""
    result = CliRunner().invoke(app, ["cancel", JOBS, " "], env=WIDE_PLAIN)
    assert result.exit_code == 2
    assert "must not be empty" in result.output


@pytest.mark.parametrize(
    ("app_path", "args", "expected"),
    [(PERIODIC, [], True), (PERIODIC, ["--no-scheduler"], False), (JOBS, [], False)],
)
def test_worker_runs_a_scheduler_only_for_schedules_and_without_the_flag(
    monkeypatch: pytest.MonkeyPatch, app_path: str, args: list[str], expected: bool
) -> None:
    """The worker runs the election when the app has schedules, unless --no-scheduler."""
    seen: list[bool] = []
    monkeypatch.setattr(
        cli_worker, "_observed_run", lambda worker, *, scheduler, **_: seen.append(scheduler)
    )
    monkeypatch.setattr(cli_worker, "configure_logging", lambda *_: None)
    result = CliRunner().invoke(app, ["worker", app_path, *args], env=WIDE_PLAIN)
    assert result.exit_code == 0, result.output
    assert seen == [expected]


def test_schedules_json_names_the_latest_leader_and_last_runs() -> None:
    """The JSON lists each schedule with its last run from the notices, and the leader."""
    schedule = Schedule("s", "t", "default", Every(60))
    follower = SchedulerStatus("b", "h", 2, "p", False, 10.0, 5.0, {"s": Mark(120_000, 60_000)})
    leader = SchedulerStatus("a", "h", 1, "p", True, 11.0, 5.0, {"s": Mark(120_000, 120_000)})
    gone = SchedulerStatus("c", "h", 3, "p", True, 12.0, 5.0, stopping=True)
    doc = schedules_json({"s": schedule}, [follower, leader, gone], now=130.0)
    assert doc["leader"] == {"scheduler_id": "a", "host": "h", "pid": 1}
    assert [s["scheduler_id"] for s in doc["schedulers"]] == ["a", "b"]
    (row,) = doc["schedules"]
    assert row["last_job_id"] == "s@1970-01-01T00:02:00Z"
    assert row["next_run"] == "1970-01-01T00:03:00+00:00"
