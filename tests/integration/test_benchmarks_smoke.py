"""The benchmark commands run end to end in their quickest mode (a smoke test, no speed asserted).

``python -m benchmarks --repeat 5`` is what the benchmark page's tables come from; these make
sure every scenario still runs against the real broker and reports a figure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._scenarios import SCENARIOS

# The runs take minutes under coverage (callgrind most), past the suite's 120 s per test, and
# pytest-timeout's thread method ends the whole pytest process at its limit: the limit is the
# commands' own.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float, measured: bool = True) -> str:
    """Run ``python -m *args``; `measured` False leaves the subprocess out of coverage."""
    env = {
        **os.environ,
        "AQUEUE_URL": os.environ.get("AQUEUE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    }
    if not measured:
        # under coverage (patch = ["subprocess"]) its tracing would be counted as the
        # client's instructions, and swamp them
        env.pop("COVERAGE_PROCESS_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.usefixtures("amqp_url")
def test_quick_benchmarks_report_every_scenario(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    stdout = _run("benchmarks", "--quick", "--output", str(report), timeout=900)
    assert report.read_text().strip() == stdout.strip()
    for scenario in SCENARIOS:
        if scenario.report is None:  # the others print a table of their own
            assert scenario.title in stdout, scenario.key
    assert "no-op jobs enqueued before the workers start" in stdout  # the processes table
    assert " - |" not in stdout  # every figure measured (a missing one prints "-")


@pytest.mark.usefixtures("amqp_url")
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.serial  # its count is a difference of two runs: beside other tests it came out < 0
def test_quick_instruction_counts_report_both_sides() -> None:
    stdout = _run(
        "benchmarks.instructions", "--quick", "--only", "drain", timeout=900, measured=False
    )
    [row] = [line for line in stdout.splitlines() if line.startswith("| drain")]
    raw, aq, ratio = (cell.strip() for cell in row.strip("|").split("|")[1:])
    assert float(raw.replace(",", "")) > 0
    assert float(aq.replace(",", "")) > 0
    assert float(ratio) > 0


@pytest.mark.usefixtures("amqp_url")
def test_quick_window_sweep_reports_each_configuration() -> None:
    stdout = _run(
        "benchmarks.window",
        "--jobs",
        "200",
        "--repeat",
        "1",
        "--batches",
        "1,50",
        "--windows",
        "1000",
        timeout=300,
    )
    assert "| 1 | 1000 |" in stdout
    assert "| 50 | 1000 |" in stdout
