"""The autoscaler's control logic: a pure function from one interval's figures to a decision.

`decide` reads no clock and does no I/O; the worker measures (`Measurements`), calls it once
per queue every ``Autoscale.interval``, applies the `Decision` and logs it. The rules, in the
order they are tried (docs/scaling.md states them for users):

1. Out of bounds: back to ``minimum`` or ``maximum``.
2. The wait is above `GROW_AT` of the target (the larger of the interval's p95 wait and the
   oldest-wait estimate) and every runner was busy or work is queued:
   - the event loop lags more than ``lag_limit``: hold (CPU-bound; more coroutines would
     only wait for the loop), and report ``cpu_saturated``;
   - sync jobs wait for a thread: hold (the thread pool is the bottleneck);
   - the last decision grew the queue and throughput did not rise by `MIN_GAIN`: hold, and
     do not try again for `PLATEAU_HOLD` decisions (more runners did not help);
   - else grow in proportion to how far behind it is: by the wait over `GROW_AT` of the
     target, at least doubling and at most `MAX_GROWTH` times, by at least one, at most to
     ``maximum``.
3. Jobs start at once (wait at most `IDLE_WAIT` of the target) and runners sit idle (at most
   half were busy at the peak): shrink to what the peak needs with 25% headroom, at most
   halving per decision, never below ``minimum``.
4. Else hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

from aqueue._core.config import Autoscale

#: Grow once the wait passes this share of the target: a burst that has filled every runner
#: is still arriving, and a queue that waits to breach the target first breaches it by far
#: (the burst benchmark: growing only above the target gave a p95 of 2.6 times the target).
GROW_AT = 0.5
#: The most one decision multiplies a queue's runners by.
MAX_GROWTH = 4.0
#: A growth must raise throughput by this share for the next growth to be tried.
MIN_GAIN = 0.1
#: Decisions to wait, once growing stopped helping, before growing is tried again.
PLATEAU_HOLD = 10
#: "Jobs start at once": the wait is at most this share of the target.
IDLE_WAIT = 0.25
#: Shrinking keeps this headroom over the interval's peak of running jobs.
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

    @property
    def throughput(self) -> float:
        """Jobs started per second in the interval."""
        return self.started / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def wait(self) -> float:
        """The wait the rules compare with the target."""
        return max(self.wait_p95 or 0.0, self.oldest_wait)


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What `decide` remembers between two decisions of one queue.

    Attributes:
        grown_from: throughput before the last decision's growth; None if it did not grow.
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


def decide(measured: Measurements, state: ScaleState, settings: Autoscale) -> Decision:
    """The queue's next concurrency from one interval's figures (the rules are above)."""
    current = measured.concurrency
    kept = ScaleState(plateau_hold=max(0, state.plateau_hold - 1))
    if current < settings.minimum:
        return Decision(settings.minimum, "grow", "below the minimum", kept)
    if current > settings.maximum:
        return Decision(settings.maximum, "shrink", "above the maximum", kept)
    wait, target = measured.wait, settings.target_wait
    busy = measured.peak_running >= current or measured.backlog
    if wait > target * GROW_AT and busy:
        return _behind(measured, state, kept, settings)
    idle = measured.peak_running * 2 <= current
    if wait <= target * IDLE_WAIT and idle and current > settings.minimum:
        needed = math.ceil(measured.peak_running * HEADROOM)
        shrunk = max(settings.minimum, needed, current // 2)
        if shrunk < current:
            reason = (
                f"wait {wait:.2f}s <= {target * IDLE_WAIT:g}s and at most "
                f"{measured.peak_running} of {current} runners busy"
            )
            return Decision(shrunk, "shrink", reason, kept)
    return Decision(current, "hold", "within target", replace(kept, grown_from=None))


def _behind(
    measured: Measurements, state: ScaleState, kept: ScaleState, settings: Autoscale
) -> Decision:
    """Rule 2: the wait is above target with every runner busy or work queued."""
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
        return Decision(current, "hold", reason, ScaleState(plateau_hold=PLATEAU_HOLD))
    if kept.plateau_hold:
        return Decision(current, "hold", "growth stopped helping recently", kept)
    if current >= settings.maximum:
        return Decision(current, "hold", "at the maximum", kept)
    behind = measured.wait / (settings.target_wait * GROW_AT)
    factor = min(MAX_GROWTH, max(2.0, behind))
    grown = min(settings.maximum, max(current + 1, math.ceil(current * factor)))
    return Decision(
        grown,
        "grow",
        f"wait {measured.wait:.2f}s > {GROW_AT:g} x target {settings.target_wait:g}s",
        ScaleState(grown_from=measured.throughput),
    )
