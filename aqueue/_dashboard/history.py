"""The last hour of each queue, kept in the dashboard's memory, and its sparkline (pure)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aqueue._core.heartbeats import StatsView

__all__ = ["History", "Point", "sparkline"]


@dataclass(frozen=True, slots=True)
class Point:
    """One queue at one time: ready messages, jobs settled per second, wait p95."""

    at: float
    ready: int | None
    out_per_s: float | None
    wait_p95: float | None


class History:
    """One point per queue every `step` seconds, for the last `span` seconds.

    Fed from the heartbeats as they arrive (`record`), so it grows while nobody looks at the
    page; lost when the dashboard restarts.
    """

    def __init__(self, *, span: float = 3600.0, step: float = 5.0) -> None:
        self.span = span
        self.step = step
        self._points: dict[str, deque[Point]] = {}
        self._last = float("-inf")

    def due(self, now: float) -> bool:
        """Whether a point is due at `now` (one `step` after the last)."""
        return now - self._last >= self.step

    def record(self, view: StatsView, now: float) -> None:
        """Add a point for every queue of `view`."""
        self._last = now
        size = int(self.span / self.step) + 1
        for row in view.queues:
            points = self._points.setdefault(row.queue, deque(maxlen=size))
            points.append(Point(now, row.ready, row.out_per_s, row.wait_p95))

    def points(self, queue: str, now: float) -> list[Point]:
        """The queue's points of the last `span` seconds, oldest first."""
        return [p for p in self._points.get(queue, ()) if now - p.at <= self.span]


def sparkline(values: Sequence[float | None], *, width: int = 120, height: int = 24) -> str:
    """SVG ``polyline`` points for `values` (unknown ones skipped); "" for fewer than two."""
    known: Iterable[tuple[int, float]] = [(i, v) for i, v in enumerate(values) if v is not None]
    pairs = list(known)
    if len(pairs) < 2:
        return ""
    top = max(v for _, v in pairs) or 1.0
    last = max(len(values) - 1, 1)
    return " ".join(
        f"{i * width / last:.1f},{height - 1 - v / top * (height - 2):.1f}" for i, v in pairs
    )
