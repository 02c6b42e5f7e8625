"""The wait signal's bookkeeping: recent waits, the event loop's lag, one queue's runners.

Nothing here reads a clock: the worker passes the times in, so each piece is tested with plain
values. How the figures are computed, and their error, is on the docs/scaling.md page.
"""

from __future__ import annotations

import math
from collections import deque

from aqueue._core.wire import due_at_ms
from aqueue._worker.intake import Intake

#: Seconds of waits the p50/p95 figures cover.
WAIT_SPAN = 60.0
#: The most waits kept: past ~330 jobs/s the window covers less than `WAIT_SPAN` (the newest
#: are kept), a bound on the memory and on the sort of each sample.
WAIT_LIMIT = 20_000
#: Seconds after its runners were last all busy that a queue still counts as saturated for the
#: oldest-wait estimate: under a backlog a runner is between two jobs for milliseconds (the
#: next delivery is on its way), while a queue served faster than it fills has idle runners
#: for longer.
FULL_GRACE = 1.0


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` quantile (0 < q <= 1) of `values`; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class WaitWindow:
    """The waits (due to start) of the jobs a queue started, over the last `span` seconds."""

    __slots__ = ("_span", "_waits")

    def __init__(self, span: float = WAIT_SPAN, limit: int = WAIT_LIMIT) -> None:
        self._span = span
        self._waits: deque[tuple[float, float]] = deque(maxlen=limit)  # (monotonic, wait)

    def record(self, now: float, wait: float) -> None:
        """A job started at monotonic time `now` after waiting `wait` seconds."""
        self._waits.append((now, wait))

    def since(self, start: float) -> list[float]:
        """The waits recorded after monotonic time `start`, oldest first."""
        waits = self._waits
        recent: list[float] = []
        for index in range(len(waits) - 1, -1, -1):  # newest first: a short interval is cheap
            at, wait = waits[index]
            if at <= start:
                break
            recent.append(wait)
        recent.reverse()
        return recent

    def last_span(self, now: float) -> tuple[float | None, float | None]:
        """The (p50, p95) of the waits of the last `span` seconds; older ones are dropped."""
        waits, horizon = self._waits, now - self._span
        while waits and waits[0][0] <= horizon:
            waits.popleft()
        values = [wait for _, wait in waits]
        return percentile(values, 0.5), percentile(values, 0.95)


class LoopLag:
    """How late a periodic timer fires: the event loop's lag, averaged between two takes.

    A coroutine that computes without awaiting holds the loop, so the timer's wake-up comes
    late by about as long as the loop was held: a mean lag near the timer's period means the
    loop is busy all the time (CPU-bound work, where more coroutines would not run sooner).
    """

    __slots__ = ("_count", "_total")

    def __init__(self) -> None:
        self._total = 0.0
        self._count = 0

    def add(self, lag: float) -> None:
        """One timer fired `lag` seconds late."""
        self._total += max(0.0, lag)
        self._count += 1

    def take(self) -> float:
        """The mean lag since the last take (0.0 for none), and start again."""
        mean = self._total / self._count if self._count else 0.0
        self._total, self._count = 0.0, 0
        return mean


class QueueRunners:
    """One queue's intake, runners and wait figures in a worker.

    ``target`` is the number of runners the queue should have; ``alive`` the runners that
    exist. When the target drops, idle runners are woken to leave (``leaving``), busy ones
    leave after their current job: a running job is never cancelled to shrink.
    """

    def __init__(self, queue: str, intake: Intake, concurrency: int, prefetch: int) -> None:
        self.queue = queue
        self.intake = intake
        self.target = concurrency
        self.prefetch = prefetch
        self.alive = 0
        self.leaving = 0
        self.running = 0
        self.peak_running = 0  # the most running at once since the last decision
        self.started = 0
        self.waits = WaitWindow()
        self.last_started_due: float | None = None  # epoch seconds
        self._due_mark: float | None = None  # last_started_due at the last take
        self._busy = 0.0  # runner-seconds since the last take
        self._busy_since: float | None = None  # monotonic time `_busy` was brought up to
        self.ready: int | None = None
        self.consumers: int | None = None
        self.cpu_saturated = False
        self._last_full: float | None = None  # monotonic time every runner was last busy

    def too_many(self) -> bool:
        """True while more runners stay than the target (a runner then leaves)."""
        return self.alive - self.leaving > self.target

    def started_job(self, now: float, wall: float, due: float | None) -> None:
        """A runner started a delivery due at epoch `due` (None: unknown), at `now`/`wall`."""
        self._count_busy(now)
        self.started += 1
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        if due is not None:
            self.waits.record(now, max(0.0, wall - due))
            if self.last_started_due is None:
                self._due_mark = due  # the first interval's advance is from the first job
            self.last_started_due = due

    def finished_job(self, now: float) -> None:
        """A runner settled its delivery at monotonic time `now`."""
        self._count_busy(now)
        if self.running >= self.target:
            self._last_full = now
        self.running -= 1

    def _count_busy(self, now: float) -> None:
        if self._busy_since is not None:
            self._busy += self.running * (now - self._busy_since)
        self._busy_since = now

    def take_interval(self, now: float) -> tuple[float, float | None]:
        """The runner-seconds busy, and how far the due time of the last started job moved.

        Both since the last take (the advance is None before any job with a due time
        started); then start again.
        """
        self._count_busy(now)
        busy, self._busy = self._busy, 0.0
        advance = None
        if self.last_started_due is not None and self._due_mark is not None:
            advance = self.last_started_due - self._due_mark
            self._due_mark = self.last_started_due
        return busy, advance

    def oldest_wait(self, wall: float, now: float, *, serving: bool) -> tuple[float, bool]:
        """The oldest wait this worker knows of, and whether it is exact (docs/scaling.md).

        Exact from the prefetched deliveries held unstarted; else, while the last read ready
        count is positive and the queue is not being served faster (every runner busy now or
        within the last `FULL_GRACE` seconds, or `serving` False: its consumer paused), the
        time since the last started job became due; else 0. The grace keeps the estimate from
        dropping to 0 whenever one runner is between two jobs of a backlog.
        """
        dues = [due for d in self.intake.held() if (due := due_at_ms(d.headers)) is not None]
        if dues:
            return max(0.0, wall - min(dues) / 1000), True
        recently_full = self._last_full is not None and now - self._last_full < FULL_GRACE
        saturated = self.running >= self.target or recently_full or not serving
        if self.ready and saturated and self.last_started_due is not None:
            return max(0.0, wall - self.last_started_due), False
        return 0.0, False
