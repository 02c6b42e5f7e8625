"""The autoscaler's rules closed in a loop with a simulated queue: no broker, no clock.

A FIFO queue on a 5 ms time step: jobs arrive in clumps every 100 ms (as the burst benchmark
publishes them), each runs a fixed time, and every second the worker's figures go to `decide`
as the worker hands them over. It checks the loop, not one decision: the queue reaches the
concurrency Little's law asks for, holds the wait under the target, and comes back down.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from aqueue._core.config import Autoscale
from aqueue._worker.autoscale import Measurements, ScaleState, decide
from aqueue._worker.waits import percentile

STEP = 0.005
CLUMP = 0.1


@dataclass
class Run:
    """What a simulated run saw: every job's wait and the concurrency at every step."""

    waits: list[float] = field(default_factory=list)
    concurrency: list[tuple[float, int]] = field(default_factory=list)


def simulate(rate: float, service: float, busy_for: float, until: float, bounds: Autoscale) -> Run:
    """Arrivals at `rate` per second for `busy_for` seconds; simulate to `until`."""
    run, waiting, ends = Run(), deque[float](), list[float]()
    concurrency, state = bounds.minimum, ScaleState()
    sent = started = peak = 0
    busy = 0.0
    recent: list[float] = []
    last_due: float | None = None
    mark: float | None = None
    next_decision = bounds.interval
    for step in range(round(until / STEP)):
        now = step * STEP
        if now < busy_for and step % round(CLUMP / STEP) == 0:
            clump = round((now + CLUMP) * rate) - sent
            waiting.extend([now] * clump)
            sent += clump
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        while waiting and len(ends) < concurrency:
            due = waiting.popleft()
            heapq.heappush(ends, now + service)
            run.waits.append(now - due)
            recent.append(now - due)
            started += 1
            mark = due if mark is None else mark
            last_due = due
        peak = max(peak, len(ends))
        busy += len(ends) * STEP
        run.concurrency.append((now, concurrency))
        if now >= next_decision:
            saturated = bool(waiting) and len(ends) >= concurrency
            advance = None if last_due is None or mark is None else last_due - mark
            measured = Measurements(
                concurrency=concurrency,
                wait_p95=percentile(recent, 0.95),
                oldest_wait=now - last_due if saturated and last_due is not None else 0.0,
                started=started,
                elapsed=bounds.interval,
                peak_running=peak,
                backlog=bool(waiting),
                busy=busy,
                due_advance=advance,
            )
            decision = decide(measured, state, bounds)
            state, concurrency = decision.state, decision.concurrency
            mark, started, busy, peak, recent = last_due, 0, 0.0, len(ends), []
            next_decision += bounds.interval
    return run


def test_a_steady_flow_gets_the_runners_littles_law_asks_for() -> None:
    """200 jobs/s of 100 ms need 20 runners: from a minimum of 2 the queue gets there, holds
    the p95 wait under the 1 s target, and after the flow stops returns to the minimum."""
    run = simulate(rate=200, service=0.1, busy_for=40, until=50, bounds=Autoscale(2, 400, 1.0))
    settled = [c for at, c in run.concurrency if 20 <= at < 40]
    assert min(settled) >= 20
    assert max(settled) <= 24
    p95 = percentile(run.waits, 0.95)
    assert p95 is not None
    assert p95 < 1.0
    assert run.concurrency[-1][1] == 2


def test_a_burst_meets_the_target_on_about_the_work_it_brings() -> None:
    """The burst benchmark's shape (1,000 jobs/s of 200 ms for 20 s, target 2 s): the p95
    wait stays under the target and the slot-seconds over the burst stay within 3% of the
    work itself (20,000 x 0.2 s): runners are added as they are needed and not many more."""
    run = simulate(rate=1000, service=0.2, busy_for=20, until=22, bounds=Autoscale(10, 400, 2.0))
    p95 = percentile(run.waits, 0.95)
    assert p95 is not None
    assert p95 < 2.0
    slots = sum(c for at, c in run.concurrency if at < 20.2) * STEP
    assert slots < 20_000 * 0.2 * 1.03
