"""The autoscaler's pure control logic, the wait bookkeeping, and a worker resizing its runners."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace

import anyio
import pytest

from aqueue import TaskQueue, WorkerSettings
from aqueue._core.config import Autoscale
from aqueue._observability.hooks import Instrumentation, QueueStats
from aqueue._worker.autoscale import (
    PLATEAU_HOLD,
    Decision,
    Measurements,
    ScaleState,
    decide,
    needed_runners,
)
from aqueue._worker.waits import LoopLag, WaitWindow, percentile
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for

SETTINGS = Autoscale(minimum=2, maximum=100, target_wait=1.0)


def measured(**changes: object) -> Measurements:
    """A queue at 10 runners, all busy, a backlog, 100 jobs/s, waiting 5 s (above target)."""
    values: dict[str, object] = {
        "concurrency": 10,
        "wait_p95": 5.0,
        "oldest_wait": 5.0,
        "started": 100,
        "elapsed": 1.0,
        "peak_running": 10,
        "backlog": True,
        "loop_lag": 0.001,
        "threads_waiting": 0,
    }
    values.update(changes)
    return Measurements(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("measurements", "state", "concurrency", "action", "cpu_saturated"),
    [
        pytest.param(
            measured(concurrency=5, peak_running=5),
            ScaleState(),
            50,
            "grow",
            False,
            id="far-behind-grows-by-wait-over-aim-up-to-10x",
        ),
        pytest.param(
            measured(wait_p95=1.5, oldest_wait=1.5),
            ScaleState(),
            30,
            "grow",
            False,
            id="growth-in-proportion",
        ),
        pytest.param(
            measured(wait_p95=0.8, oldest_wait=0.8),
            ScaleState(),
            20,
            "grow",
            False,
            id="above-the-aim-at-least-doubles",
        ),
        pytest.param(
            measured(wait_p95=0.5, oldest_wait=0.5),
            ScaleState(),
            10,
            "hold",
            False,
            id="at-the-aim-holds",
        ),
        pytest.param(measured(concurrency=60), ScaleState(), 100, "grow", False, id="capped"),
        pytest.param(
            measured(concurrency=100, peak_running=100),
            ScaleState(),
            100,
            "hold",
            False,
            id="at-maximum",
        ),
        pytest.param(
            measured(concurrency=1, peak_running=1),
            ScaleState(),
            2,
            "grow",
            False,
            id="below-minimum",
        ),
        pytest.param(
            measured(concurrency=150), ScaleState(), 100, "shrink", False, id="above-maximum"
        ),
        pytest.param(
            measured(wait_p95=None, oldest_wait=3.0),
            ScaleState(),
            60,
            "grow",
            False,
            id="oldest-wait-alone-is-behind",
        ),
        pytest.param(
            measured(loop_lag=0.08), ScaleState(), 10, "hold", True, id="loop-lags-cpu-bound"
        ),
        pytest.param(
            measured(threads_waiting=4), ScaleState(), 10, "hold", False, id="thread-pool-full"
        ),
        pytest.param(
            measured(started=105),
            ScaleState(grown_from=100.0),
            10,
            "hold",
            False,
            id="growth-did-not-raise-throughput",
        ),
        pytest.param(
            measured(started=150),
            ScaleState(grown_from=100.0),
            100,
            "grow",
            False,
            id="growth-raised-throughput",
        ),
        pytest.param(measured(), ScaleState(plateau_hold=3), 10, "hold", False, id="plateau-holds"),
        pytest.param(
            measured(), ScaleState(plateau_hold=1), 100, "grow", False, id="plateau-expires"
        ),
        pytest.param(
            measured(peak_running=4, backlog=False),
            ScaleState(),
            10,
            "hold",
            False,
            id="slow-but-runners-idle-no-backlog",
        ),
        pytest.param(
            measured(wait_p95=0.01, oldest_wait=0.0, peak_running=0, backlog=False, started=0),
            ScaleState(),
            5,
            "shrink",
            False,
            id="idle-halves",
        ),
        pytest.param(
            measured(
                concurrency=3,
                wait_p95=None,
                oldest_wait=0.0,
                peak_running=0,
                backlog=False,
                started=0,
            ),
            ScaleState(),
            2,
            "shrink",
            False,
            id="idle-stops-at-minimum",
        ),
        pytest.param(
            measured(
                concurrency=100, wait_p95=0.05, oldest_wait=0.0, peak_running=40, backlog=False
            ),
            ScaleState(),
            50,
            "shrink",
            False,
            id="half-busy-shrinks-to-headroom",
        ),
        pytest.param(
            measured(
                concurrency=100, wait_p95=0.05, oldest_wait=0.0, peak_running=20, backlog=False
            ),
            ScaleState(),
            50,
            "shrink",
            False,
            id="shrinks-at-most-half",
        ),
        pytest.param(
            measured(wait_p95=0.05, oldest_wait=0.0, peak_running=6, backlog=False),
            ScaleState(),
            10,
            "hold",
            False,
            id="more-than-half-busy-holds",
        ),
        pytest.param(
            measured(wait_p95=0.5, oldest_wait=0.0, peak_running=0, backlog=False),
            ScaleState(),
            10,
            "hold",
            False,
            id="under-target-but-not-at-once",
        ),
        pytest.param(
            measured(concurrency=2, wait_p95=0.0, oldest_wait=0.0, peak_running=0, backlog=False),
            ScaleState(),
            2,
            "hold",
            False,
            id="idle-at-minimum",
        ),
    ],
)
def test_decide_without_sizing_figures(
    measurements: Measurements,
    state: ScaleState,
    concurrency: int,
    action: str,
    cpu_saturated: bool,
) -> None:
    """Without the figures to size from (rule 3), each scenario gets the concurrency, action
    and CPU verdict the rules state."""
    decision = decide(measurements, state, SETTINGS)
    assert (decision.concurrency, decision.action, decision.cpu_saturated) == (
        concurrency,
        action,
        cpu_saturated,
    )
    assert decision.reason


#: Target 2 s, so the aim is 1 s; room to grow to 1,000.
SIZING = Autoscale(minimum=2, maximum=1000, target_wait=2.0)


def sized(**changes: object) -> Measurements:
    """100 runners busy all the interval, the head's due time moving on in step with time
    (arrivals = starts), 500 jobs started, a wait under the aim: it keeps pace."""
    values: dict[str, object] = {
        "concurrency": 100,
        "wait_p95": 0.8,
        "oldest_wait": 0.8,
        "started": 500,
        "elapsed": 1.0,
        "peak_running": 100,
        "backlog": True,
        "busy": 100.0,
        "due_advance": 1.0,
    }
    values.update(changes)
    return Measurements(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("measurements", "concurrency", "action", "cpu_saturated"),
    [
        pytest.param(sized(), 100, "hold", False, id="keeps-pace-holds"),
        pytest.param(sized(due_advance=0.5), 200, "grow", False, id="falling-behind-by-pace"),
        pytest.param(
            sized(wait_p95=3.0, oldest_wait=3.0), 200, "grow", False, id="wait-over-aim-drains"
        ),
        pytest.param(sized(due_advance=0.0), 1000, "grow", False, id="clumped-dues-pace-capped"),
        pytest.param(sized(due_advance=0.96), 100, "hold", False, id="within-the-band-holds"),
        pytest.param(
            sized(due_advance=0.5, loop_lag=0.08), 100, "hold", True, id="cpu-bound-holds"
        ),
        pytest.param(
            sized(due_advance=0.5, threads_waiting=3), 100, "hold", False, id="threads-hold"
        ),
        pytest.param(
            sized(busy=80.0, peak_running=90, backlog=False, wait_p95=0.1, oldest_wait=0.0),
            80,
            "shrink",
            False,
            id="spare-runners-shrink-to-what-is-used",
        ),
        pytest.param(
            sized(busy=20.0, peak_running=30, backlog=False, wait_p95=0.1, oldest_wait=0.0),
            50,
            "shrink",
            False,
            id="shrinks-at-most-half",
        ),
        pytest.param(
            sized(due_advance=2.0, wait_p95=1.5, oldest_wait=1.5),
            100,
            "hold",
            False,
            id="draining-above-the-aim-does-not-shrink",
        ),
        pytest.param(
            sized(due_advance=2.0, wait_p95=0.5, oldest_wait=0.5),
            50,
            "shrink",
            False,
            id="draining-below-the-aim-shrinks",
        ),
    ],
)
def test_decide_sizes_by_littles_law(
    measurements: Measurements, concurrency: int, action: str, cpu_saturated: bool
) -> None:
    """With the figures (rule 2): mean running x pace x the drain correction, within a band,
    under the same holds as rule 3."""
    decision = decide(measurements, ScaleState(), SIZING)
    assert (decision.concurrency, decision.action, decision.cpu_saturated) == (
        concurrency,
        action,
        cpu_saturated,
    )
    assert decision.reason


def test_each_worker_of_a_queue_sizes_its_own_share() -> None:
    """Two workers that each start half the jobs see the head move on half as fast as one
    worker alone would: each asks for half of what one worker asks for."""
    alone = needed_runners(
        sized(busy=50.0, concurrency=50, peak_running=50, due_advance=0.25), SIZING
    )
    shared = needed_runners(
        sized(busy=50.0, concurrency=50, peak_running=50, due_advance=0.5), SIZING
    )
    assert alone == pytest.approx(200.0)
    assert shared == pytest.approx(100.0)


def test_needed_runners_need_starts_and_figures() -> None:
    """No job started, or no busy time or due advance measured: rule 2 has nothing to go on."""
    assert needed_runners(sized(started=0), SIZING) is None
    assert needed_runners(sized(busy=None), SIZING) is None
    assert needed_runners(sized(due_advance=None), SIZING) is None


def test_a_growth_remembers_throughput_and_a_plateau_starts_the_hold() -> None:
    """A big growth records the throughput it started from; a growth that did not help sets
    the plateau hold, which counts down by one per decision."""
    grown = decide(measured(), ScaleState(), SETTINGS)
    assert grown.state == ScaleState(grown_from=100.0)
    flat = decide(measured(concurrency=20, peak_running=20), grown.state, SETTINGS)
    assert flat.state == ScaleState(plateau_hold=PLATEAU_HOLD)
    later = decide(measured(concurrency=20, peak_running=20), flat.state, SETTINGS)
    assert later.state.plateau_hold == PLATEAU_HOLD - 1


def test_a_small_growth_is_not_checked_for_a_plateau() -> None:
    """A correction of a few runners is not expected to raise throughput by 10%."""
    grown = decide(sized(due_advance=0.88), ScaleState(), SIZING)
    assert (grown.action, grown.concurrency) == ("grow", 114)
    assert grown.state.grown_from is None


def test_a_backlog_reaches_the_maximum_in_a_few_steps() -> None:
    """Fed throughput that rises with concurrency, a queue far behind grows 10x per step."""
    state, concurrency, steps = ScaleState(), 2, []
    for _ in range(6):
        decision: Decision = decide(
            measured(concurrency=concurrency, peak_running=concurrency, started=10 * concurrency),
            state,
            SETTINGS,
        )
        state, concurrency = decision.state, decision.concurrency
        steps.append(concurrency)
    assert steps == [20, 100, 100, 100, 100, 100]


@pytest.mark.parametrize(
    ("minimum", "maximum", "target"),
    [(0, 4, 1.0), (5, 4, 1.0), (1, 4, 0.0), (1, 4, -1.0)],
)
def test_autoscale_settings_are_checked(minimum: int, maximum: int, target: float) -> None:
    """Bounds out of order, a minimum below 1 or a non-positive target are refused."""
    with pytest.raises(ConfigurationError):
        Autoscale(minimum, maximum, target)


def test_wait_window_percentiles_and_span() -> None:
    """p50/p95 cover the last minute only; `since` returns the waits after a time."""
    window = WaitWindow(span=60.0)
    for index in range(100):
        window.record(float(index), float(index))
    assert window.since(97.0) == [98.0, 99.0]
    # waits 41..99 remain (one exactly 60 s old is dropped): nearest ranks 30 and 57 of 59
    assert window.last_span(100.0) == (70.0, 97.0)
    assert window.last_span(1000.0) == (None, None)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([], 0.95) is None


def test_loop_lag_means_and_resets() -> None:
    """The lag is the mean of the late wake-ups since the last take, never negative."""
    lag = LoopLag()
    for late in (0.01, 0.03, -0.001):
        lag.add(late)
    assert lag.take() == pytest.approx(0.04 / 3)
    assert lag.take() == 0.0


class Samples(Instrumentation):
    """Keeps every `QueueStats` a worker samples."""

    def __init__(self) -> None:
        self.seen: list[QueueStats] = []

    def sample(self, stats: Sequence[QueueStats]) -> None:
        self.seen.extend(stats)


async def test_worker_grows_under_a_backlog_then_shrinks_to_the_minimum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On the in-memory broker, a backlog of async jobs grows the queue's runners past the
    minimum (and its prefetch with them); once idle, they shrink back to the minimum, each
    decision logged with its figures."""
    queue = TaskQueue("memory://", prefix="t", telemetry=False)
    running = peak = 0

    @queue.task
    async def nap() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.02)
        running -= 1

    scaling = Autoscale(2, 32, target_wait=0.05, interval=0.2)
    settings = WorkerSettings(autoscale=scaling, ready_interval=0.1)
    caplog.set_level(logging.INFO, logger="aqueue.autoscale")
    async with queue:
        await queue.enqueue_many(nap, [() for _ in range(1500)])
        async with running_worker(queue, settings) as worker:
            await worker.wait_until(lambda s: s.succeeded == 1500)
            grown = peak
            await wait_for(
                lambda: worker.queue_stats()["default"].concurrency == 2,
                timeout=10,
                what="concurrency back at the minimum",
            )
            stats = worker.queue_stats()["default"]
    assert grown > 2
    assert (stats.prefetch, stats.running, stats.busy_ratio) == (2, 0, 0.0)
    assert any(re.search(r"grow concurrency 2 -> \d+", r.getMessage()) for r in caplog.records)
    assert any("shrink concurrency" in r.getMessage() for r in caplog.records)


async def test_worker_without_autoscale_keeps_its_concurrency_and_samples_stats() -> None:
    """A fixed worker reports its concurrency, busy ratio and ready count, and hands each
    sample to the instrumentation; the oldest-wait estimate is 0 once drained."""
    samples = Samples()
    queue = TaskQueue("memory://", prefix="t", telemetry=False, instrumentation=[samples])
    release = anyio.Event()

    @queue.task
    async def held() -> None:
        await release.wait()

    async with queue:
        await queue.enqueue_many(held, [() for _ in range(5)])
        settings = WorkerSettings(concurrency=3, ready_interval=0.05)
        async with running_worker(queue, settings) as worker:
            await wait_for(
                lambda: worker.queue_stats()["default"].ready == 2,
                timeout=5,
                what="two ready behind three busy runners",
            )
            busy = worker.queue_stats()["default"]
            await wait_for(lambda: bool(samples.seen), timeout=5, what="a sample")
            release.set()
            await worker.wait_until(lambda s: s.succeeded == 5)
            await wait_for(
                lambda: worker.queue_stats()["default"].ready == 0,
                timeout=5,
                what="ready read as 0",
            )
            idle = worker.queue_stats()["default"]
    assert (busy.concurrency, busy.running, busy.busy_ratio) == (3, 3, 1.0)
    assert busy.oldest_wait > 0
    assert not busy.oldest_wait_exact
    assert (idle.concurrency, idle.oldest_wait, idle.started) == (3, 0.0, 5)
    assert idle.wait_p95 is not None
    assert idle.wait_p95 < 5


@pytest.mark.parametrize(
    ("bounds", "target"),
    [("2:100", None), (None, 1.0), ("2-100", 1.0), ("x:4", 1.0), ("5:4", 1.0)],
)
def test_cli_autoscale_options_are_checked_before_anything_runs(
    bounds: str | None, target: float | None
) -> None:
    """--autoscale and --target-wait come together, as MIN:MAX whole numbers in order."""
    import typer

    from aqueue._cli.worker import _autoscale

    with pytest.raises(typer.BadParameter):
        _autoscale(bounds, target)


def test_cli_autoscale_options_make_the_settings() -> None:
    """--autoscale 2:100 --target-wait 1 is Autoscale(2, 100, 1.0); neither is no autoscaling."""
    from aqueue._cli.worker import _autoscale

    assert _autoscale("2:100", 1.0) == Autoscale(2, 100, 1.0)
    assert _autoscale(None, None) is None


def test_a_lagging_loop_at_the_maximum_is_still_reported_cpu_bound() -> None:
    """Behind at the maximum with the loop lagging: the verdict the supervisor adds processes
    on is given there too, with or without the sizing figures."""
    at_max = sized(concurrency=1000, busy=1000.0, peak_running=1000, due_advance=0.5)
    assert decide(replace(at_max, loop_lag=0.08), ScaleState(), SIZING).cpu_saturated
    assert not decide(at_max, ScaleState(), SIZING).cpu_saturated
    assert decide(measured(concurrency=100, loop_lag=0.08), ScaleState(), SETTINGS).cpu_saturated
