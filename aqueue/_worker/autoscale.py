"""The autoscaler's control logic: a pure function from one interval's figures to a decision.

`decide` reads no clock and does no I/O; the worker measures (`Measurements`), calls it once
per queue every ``Autoscale.interval``, applies the `Decision` and logs it.

It sizes a queue by Little's law rather than by trial: the runners a queue needs are the
jobs it has running on average, times how much faster jobs arrive than they start (the
*pace*), times a correction that drains a wait above the aim. The pace needs no arrival
count, which a consumer cannot see: the broker delivers in order, so the due times of the
jobs a worker starts advance at the rate the jobs arrived, and ``elapsed / (advance of the
mean due time)`` is arrivals over starts. Because each worker sees only the jobs it starts,
each sizes its own share: several workers of one queue do not each size for the whole queue.

The rules, in the order they are tried (docs/scaling.md states them for users):

1. Out of bounds: back to ``minimum`` or ``maximum``.
2. Needed runners (when the interval started jobs and the last one did too)::

       needed = mean running x pace x (1 + max(0, wait - aim) / target)

   with ``aim = AIM x target``; pace 1 while some runner sat idle with nothing queued (they
   keep up), else the due-time advance, at most `MAX_PACE`.
   - More than `BAND` above the concurrency: grow to it (at most `MAX_GROWTH` times per
     decision, at most ``maximum``), unless the event loop lags more than ``lag_limit``
     (CPU-bound: hold, and report ``cpu_saturated``, at the maximum too: more processes are
     then the remedy), sync jobs wait for a thread (the pool is the bottleneck), or the last
     big growth did not raise the throughput (`MIN_GAIN`: hold for `PLATEAU_HOLD` decisions).
   - More than `BAND` below, and the wait at most the aim: shrink to it, at most halving per
     decision, never below ``minimum``. Running jobs are never cancelled to shrink.
3. Without those figures (nothing started, or the first interval): grow by 2 to `MAX_GROWTH`
   times, in proportion to the wait over the aim, while every runner is busy or work is
   queued (the same holds apply); shrink an idle queue (wait at most `IDLE_WAIT` of the
   target, at most half the runners busy) to its peak plus `HEADROOM`, at most halving.
4. Else hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

from aqueue._core.config import Autoscale

#: The share of the target the wait is steered to: under it the queue runs on just enough
#: runners (every one busy, a short queue in front), above it runners are added to drain the
#: excess within about one target. The rest of the target is room for noise.
AIM = 0.5
#: The most the pace (arrivals over starts) is taken to be: jobs enqueued in one clump have
#: due times that barely advance, which would read as an unbounded pace.
MAX_PACE = 10.0
#: The most one decision multiplies a queue's runners by.
MAX_GROWTH = 10.0
#: Needed runners within this share of the concurrency leave it as it is (no resize, no log
#: line, no prefetch change every second for noise).
BAND = 0.05
#: A growth of at least `BIG_GROWTH` times that did not raise throughput by `MIN_GAIN` while
#: the queue stayed behind means more runners do not help (a database, an API at its limit).
MIN_GAIN = 0.1
BIG_GROWTH = 1.25
#: Decisions to wait, once growing stopped helping, before growing is tried again.
PLATEAU_HOLD = 10
#: Without sizing figures: "jobs start at once" is a wait of at most this share of the target.
IDLE_WAIT = 0.25
#: Without sizing figures, shrinking keeps this headroom over the interval's peak of running.
HEADROOM = 1.25

Action: TypeAlias = Literal["grow", "shrink", "hold"]


@dataclass(frozen=True, slots=True)
class Measurements:
    """One queue's figures over the interval since the last decision.

    Attributes:
        concurrency: the queue's runners now.
        wait_p95: p95 wait (due to start) of the jobs started in the interval; None if none.
        oldest_wait: the oldest-wait estimate now (`QueueStats.oldest_wait`).
        started: jobs started in the interval.
        elapsed: seconds the interval lasted.
        peak_running: the most jobs of the queue running at once in the interval.
        backlog: work is queued: ready messages at the last read, or deliveries held here.
        loop_lag: mean event-loop lag over the interval, seconds.
        threads_waiting: sync jobs waiting for a thread now.
        busy: runner-seconds spent running jobs in the interval (the integral of running);
            None if not measured.
        due_advance: seconds the due time of the last job started moved on over the
            interval (from the first job's, in the first interval); None if not measured.
    """

    concurrency: int
    wait_p95: float | None
    oldest_wait: float
    started: int
    elapsed: float
    peak_running: int
    backlog: bool
    loop_lag: float = 0.0
    threads_waiting: int = 0
    busy: float | None = None
    due_advance: float | None = None

    @property
    def throughput(self) -> float:
        """Jobs started per second in the interval."""
        return self.started / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def wait(self) -> float:
        """The wait the rules compare with the target."""
        return max(self.wait_p95 or 0.0, self.oldest_wait)

    @property
    def saturated(self) -> bool:
        """Every runner was busy at some point, or work is queued."""
        return self.peak_running >= self.concurrency or self.backlog


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What `decide` remembers between two decisions of one queue.

    Attributes:
        grown_from: throughput before the last decision's big growth; None if it did not.
        plateau_hold: decisions left before growing may be tried again after a plateau.
    """

    grown_from: float | None = None
    plateau_hold: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one queue: its new concurrency, why, and the state to keep."""

    concurrency: int
    action: Action
    reason: str
    state: ScaleState
    cpu_saturated: bool = False


def needed_runners(measured: Measurements, settings: Autoscale) -> float | None:
    """Rule 2's runners for the queue; None without the figures it is computed from."""
    if (
        measured.busy is None
        or measured.due_advance is None
        or measured.started == 0
        or measured.elapsed <= 0
    ):
        return None
    pace = 1.0
    if measured.saturated:
        pace = measured.elapsed / max(measured.due_advance, measured.elapsed / MAX_PACE)
    target = settings.target_wait
    excess = max(0.0, measured.wait - AIM * target) / target
    return measured.busy / measured.elapsed * pace * (1 + excess)


def decide(measured: Measurements, state: ScaleState, settings: Autoscale) -> Decision:
    """The queue's next concurrency from one interval's figures (the rules are above)."""
    current = measured.concurrency
    kept = ScaleState(plateau_hold=max(0, state.plateau_hold - 1))
    if current < settings.minimum:
        return Decision(settings.minimum, "grow", "below the minimum", kept)
    if current > settings.maximum:
        return Decision(settings.maximum, "shrink", "above the maximum", kept)
    needed = needed_runners(measured, settings)
    if needed is None:
        return _without_figures(measured, state, kept, settings)
    wait, aim = measured.wait, AIM * settings.target_wait
    if needed > current * (1 + BAND):
        reason = f"needs {needed:.0f} runners (wait {wait:.2f}s, aim {aim:g}s)"
        return _grow(measured, state, kept, settings, math.ceil(needed), reason)
    if needed < current * (1 - BAND) and wait <= aim and current > settings.minimum:
        shrunk = max(settings.minimum, math.ceil(needed), current // 2)
        reason = f"needs {needed:.0f} runners (wait {wait:.2f}s <= aim {aim:g}s)"
        return Decision(shrunk, "shrink", reason, kept)
    return Decision(current, "hold", f"needs {needed:.0f} runners", kept)


def _without_figures(
    measured: Measurements, state: ScaleState, kept: ScaleState, settings: Autoscale
) -> Decision:
    """Rule 3: nothing to size from; grow on the wait alone, or shrink an idle queue."""
    current, wait = measured.concurrency, measured.wait
    aim = AIM * settings.target_wait
    if wait > aim and measured.saturated:
        factor = min(MAX_GROWTH, max(2.0, wait / aim))
        reason = f"wait {wait:.2f}s > aim {aim:g}s"
        return _grow(measured, state, kept, settings, math.ceil(current * factor), reason)
    idle = measured.peak_running * 2 <= current
    if wait <= settings.target_wait * IDLE_WAIT and idle and current > settings.minimum:
        needed = math.ceil(measured.peak_running * HEADROOM)
        shrunk = max(settings.minimum, needed, current // 2)
        if shrunk < current:
            reason = (
                f"wait {wait:.2f}s <= {settings.target_wait * IDLE_WAIT:g}s and at most "
                f"{measured.peak_running} of {current} runners busy"
            )
            return Decision(shrunk, "shrink", reason, kept)
    return Decision(current, "hold", "within target", kept)


def _grow(
    measured: Measurements,
    state: ScaleState,
    kept: ScaleState,
    settings: Autoscale,
    wanted: int,
    reason: str,
) -> Decision:
    """Grow towards `wanted` runners unless a hold applies (the loop, the threads, a plateau)."""
    current = measured.concurrency
    if measured.loop_lag > settings.lag_limit:
        reason = (
            f"event loop lags {measured.loop_lag * 1000:.0f} ms > "
            f"{settings.lag_limit * 1000:.0f} ms: CPU-bound, more runners would not help"
        )
        return Decision(current, "hold", reason, kept, cpu_saturated=True)
    if measured.threads_waiting:
        reason = f"{measured.threads_waiting} sync jobs wait for a thread: the pool is full"
        return Decision(current, "hold", reason, kept)
    grown_from = state.grown_from
    if grown_from is not None and measured.throughput < grown_from * (1 + MIN_GAIN):
        reason = (
            f"throughput {measured.throughput:.1f}/s did not rise from {grown_from:.1f}/s "
            "after the last growth"
        )
        return Decision(current, "hold", reason, replace(kept, plateau_hold=PLATEAU_HOLD))
    if kept.plateau_hold:
        return Decision(current, "hold", "growth stopped helping recently", kept)
    if current >= settings.maximum:
        return Decision(current, "hold", "at the maximum", kept)
    grown = min(settings.maximum, max(current + 1, min(wanted, math.ceil(current * MAX_GROWTH))))
    big = grown >= current * BIG_GROWTH
    return Decision(
        grown,
        "grow",
        reason,
        replace(kept, grown_from=measured.throughput if big else None),
    )
