"""The processes benchmark is registered, sized sanely, and its table and counters work.

No speed is asserted: the benchmarks report, they never fail on a figure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _processes, _tally
from benchmarks._common import FULL, QUICK
from benchmarks._report import Environment, report
from benchmarks._scenarios import SCENARIOS, Results, Scenario, Side


def _scenario() -> Scenario:
    return next(s for s in SCENARIOS if s.key == "processes")


def test_the_scenario_is_registered_with_both_sides_and_a_table_of_its_own() -> None:
    scenario = _scenario()
    assert scenario.sides == ("raw", "aqueue")
    assert scenario.run("raw") is _processes.raw_side
    assert scenario.run("aqueue") is _processes.aqueue_side
    assert scenario.report is _processes.table


def test_quick_drains_fewer_jobs_than_the_full_run() -> None:
    scenario = _scenario()
    assert scenario.size(FULL) == 20_000
    assert 0 < scenario.size(QUICK) <= 2_000
    assert _processes.PROCESS_COUNTS == (1, 2, 3)
    # every process gets work even in the quick run
    assert scenario.size(QUICK) >= 100 * max(_processes.PROCESS_COUNTS)


def test_the_report_gives_one_row_per_process_count_and_leaves_the_shared_tables_out() -> None:
    results = Results()
    sides: tuple[tuple[Side, float], ...] = (("raw", 1000.0), ("aqueue", 800.0))
    for side, rate in sides:
        figures: dict[str, float] = {}
        for n in _processes.PROCESS_COUNTS:
            figures[f"rate{n}"] = rate * n
            figures[f"cpu{n}"] = 0.25
        results.add("processes", side, figures)
    environment = Environment("d", "3", "a", "b", "c", "RabbitMQ x", "m")
    text = report(results, [_scenario()], QUICK, environment, repeat=1, command="c")
    assert "| # | scenario |" not in text
    assert "| 2 | 2,000 | 1,600 | 0.80 | 0.250 | 0.250 |" in text


def test_the_counters_of_several_processes_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_tally.ENV, str(tmp_path))
    monkeypatch.setattr(_tally, "_counter", None)
    monkeypatch.setattr(_tally, "_count", 0)
    (tmp_path / "1.count").write_bytes((5).to_bytes(8, "little"))  # another process's
    (tmp_path / "2.count").write_bytes(b"")  # created, not written yet
    for _ in range(3):
        _tally.bump()
    assert _tally.total(tmp_path) == 8
