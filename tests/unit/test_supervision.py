"""The supervisor's restart policy (``aqueue worker --processes``), a pure function."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

import aqueue._cli.worker as cli_worker
from aqueue._cli import app
from aqueue._cli.supervisor import describe_exit
from aqueue._core.supervision import ProcessScaling, RestartPolicy, next_restart, process_target
from aqueue.exceptions import ConfigurationError

POLICY = RestartPolicy()
WIDE_PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def test_quick_deaths_double_the_delay_up_to_the_cap() -> None:
    """A child that keeps dying quickly waits 0.5 s, then 1, 2, 4 ... and never more than 30 s."""
    delays = []
    previous: float | None = None
    deaths: tuple[float, ...] = ()
    for minute in range(10):  # one death a minute: never a crash loop, only the backoff
        restart = next_restart(
            POLICY, previous_delay=previous, ran_for=1.0, deaths=deaths, now=minute * 61.0
        )
        previous, deaths = restart.delay, restart.deaths
        delays.append(restart.delay)
        assert not restart.crash_loop
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_a_child_that_ran_stably_restarts_after_the_first_delay_again() -> None:
    """After a run of 60 s or more the backoff starts over, however long it had grown."""
    restart = next_restart(POLICY, previous_delay=16.0, ran_for=60.0, deaths=(), now=100.0)
    assert restart.delay == 0.5
    short = next_restart(POLICY, previous_delay=16.0, ran_for=59.9, deaths=(), now=100.0)
    assert short.delay == 30.0


def test_five_deaths_within_a_minute_are_a_crash_loop() -> None:
    """The fifth death inside 60 s is reported as a crash loop; deaths older than the window
    do not count."""
    deaths: tuple[float, ...] = ()
    previous: float | None = None
    loops = []
    for now in (0.0, 1.0, 3.0, 7.0, 15.0, 31.0):
        restart = next_restart(POLICY, previous_delay=previous, ran_for=0.5, deaths=deaths, now=now)
        previous, deaths = restart.delay, restart.deaths
        loops.append(restart.crash_loop)
    assert loops == [False, False, False, False, True, True]
    later = next_restart(POLICY, previous_delay=previous, ran_for=0.5, deaths=deaths, now=75.0)
    assert later.deaths == (31.0, 75.0)  # 15 s is 60 s old: out of the window
    assert not later.crash_loop


@pytest.mark.parametrize(
    "options",
    [{"first_delay": 0.0}, {"first_delay": 40.0}, {"loop_deaths": 0}, {"start_attempts": 0}],
)
def test_a_policy_with_impossible_numbers_is_refused(options: dict[str, float]) -> None:
    """A zero or inverted delay, or zero deaths or attempts, is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        RestartPolicy(**options)  # type: ignore[arg-type]


def test_exit_codes_are_described_as_status_or_signal() -> None:
    """A negative return code names the signal that killed the child."""
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_processes_below_one_is_refused_before_anything_runs() -> None:
    """``--processes 0`` exits 2 naming the option; no supervisor, no child, no app import."""
    result = CliRunner().invoke(
        app, ["worker", "no.such.module:queue", "--processes", "0"], env=WIDE_PLAIN
    )
    assert result.exit_code == 2
    assert "--processes" in result.output


def test_each_child_gets_the_supervisors_options_without_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The children's command lines repeat every option but --processes; child i's metrics
    port is the given one plus i."""
    argvs: list[list[str]] = []

    class Recording:
        def __init__(
            self, argv_for: Callable[[int], list[str]], count: int, scaling: object = None
        ) -> None:
            argvs.extend(argv_for(index) for index in range(count))

        async def run(self) -> int:
            return 0

    monkeypatch.setattr(cli_worker, "Supervisor", Recording)
    monkeypatch.setattr(cli_worker, "configure_logging", lambda *_: None)  # the test's own
    result = CliRunner().invoke(
        app,
        [
            "worker",
            "tests.integration.apps.jobs:queue",
            "--processes",
            "2",
            "-Q",
            "emails:5",
            "--declare",  # the app's tasks use "default" only
            "--otel",
            "--metrics-port",
            "9100",
        ],
        env=WIDE_PLAIN,
    )
    assert result.exit_code == 0, result.output
    first, second = argvs
    assert first[:5] == [
        sys.executable,
        "-m",
        "aqueue",
        "worker",
        "tests.integration.apps.jobs:queue",
    ]
    assert "--processes" not in first
    assert first[first.index("--queues") + 1] == "emails:5"
    assert "--declare" in first
    assert "--otel" in first
    assert first[first.index("--metrics-port") + 1] == "9100"
    assert second[second.index("--metrics-port") + 1] == "9101"


SCALING = ProcessScaling(1, 3, grow_after=10, shrink_after=60)


@pytest.mark.parametrize(
    ("count", "all_since", "none_since", "now", "expected"),
    [
        (1, None, None, 100.0, 1),  # some bound, some not: no change
        (1, 95.0, None, 100.0, 1),  # all bound, not long enough
        (1, 90.0, None, 100.0, 2),  # all bound 10 s: one more
        (3, 0.0, None, 100.0, 3),  # at the maximum
        (2, None, 50.0, 100.0, 2),  # none bound, not long enough
        (2, None, 40.0, 100.0, 1),  # none bound 60 s: one fewer
        (1, None, 0.0, 100.0, 1),  # at the minimum
        (0, None, None, 100.0, 1),  # below the minimum: back to it at once
        (5, None, None, 100.0, 3),  # above the maximum: down to it at once
    ],
)
def test_process_target_follows_the_cpu_bound_reports(
    count: int, all_since: float | None, none_since: float | None, now: float, expected: int
) -> None:
    """One process more after grow_after of all CPU-bound, one fewer after shrink_after of none."""
    assert (
        process_target(
            SCALING, count, all_bound_since=all_since, none_bound_since=none_since, now=now
        )
        == expected
    )


def test_process_scaling_bounds_are_checked() -> None:
    """MIN above MAX, or below 1, is a configuration error naming the option."""
    for low, high in ((0, 2), (3, 2)):
        with pytest.raises(ConfigurationError, match="--processes"):
            ProcessScaling(low, high)


@pytest.mark.parametrize(
    ("value", "extra", "message"),
    [
        ("1:3", [], "needs --autoscale"),
        ("a:3", ["--autoscale", "1:4", "--target-wait", "1"], "not N or MIN:MAX"),
        ("3:1", ["--autoscale", "1:4", "--target-wait", "1"], "MIN <= MAX"),
        ("two", [], "not N or MIN:MAX"),
    ],
)
def test_bad_processes_ranges_exit_2_before_anything_starts(
    value: str, extra: list[str], message: str
) -> None:
    """A malformed --processes is refused with exit 2 before the app is imported."""
    result = CliRunner().invoke(
        app, ["worker", "no.such.module:queue", "--processes", value, *extra], env=WIDE_PLAIN
    )
    assert result.exit_code == 2
    assert message in result.output
