"""``GET /scale``: the wait signal as a small JSON document for autoscalers that add machines.

Served on the port of ``aqueue worker --metrics-port`` beside ``/metrics`` (the server is in
`aqueue._observability.prometheus`); made for KEDA's ``metrics-api`` scaler, which reads one
number from a JSON answer by a path (``valueLocation: queues.emails.suggested_workers``).
Everything here is pure but `ScaleSignal`, which keeps the worker's last sample. The formula of
``suggested_workers``, and its limits, are on the docs/scaling.md page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import parse_qs

from aqueue._observability.hooks import Instrumentation, QueueStats
from aqueue._serialization import dumps

#: The most one answer multiplies the workers by: a queue stalled for an hour must not ask
#: for a thousand times its workers in one step (the HPA's maxReplicaCount is the real bound).
MAX_FACTOR = 10.0


def scale_factor(stats: QueueStats, target_wait: float) -> float:
    """How many times its current workers a queue needs to hold `target_wait`.

    Behind (the wait, the larger of the minute's p95 and the oldest-wait estimate, is above
    the target, and every runner is busy or jobs are ready or known to wait): wait ÷ target,
    at most `MAX_FACTOR`; the same proportional rule the HPA applies to a ``Value`` metric.
    Else the busy ratio: the share of the workers' runners in use, so idle workers are given
    back and a fully busy queue that meets its target holds.
    """
    wait = max(stats.wait_p95 or 0.0, stats.oldest_wait)
    # the minute's p95 stays high for up to a minute after a burst is served: only a queue
    # that still has work waiting or saturates its runners counts as behind
    working = stats.busy_ratio >= 1.0 or bool(stats.ready) or stats.oldest_wait > target_wait
    if wait > target_wait and working:
        return min(MAX_FACTOR, wait / target_wait)
    return max(0.0, stats.busy_ratio)


def suggested_workers(stats: QueueStats, target_wait: float) -> int:
    """The workers a queue needs to hold `target_wait`: ceil(workers * `scale_factor`), >= 1.

    ``workers`` is the work queue's consumers on the broker (one per worker consuming it),
    or 1 before the first read: it assumes every worker of the queue has this one's
    concurrency and sees the same figures (the broker spreads deliveries over consumers).
    """
    workers = max(1, stats.consumers or 1)
    # rounded first: 3 workers * 0.1 / 0.1 must be 3, not ceil(3.0000000000000004) = 4
    return max(1, math.ceil(round(workers * scale_factor(stats, target_wait), 6)))


def queue_document(stats: QueueStats, target_wait: float | None) -> dict[str, object]:
    """One queue's entry of the document."""
    return {
        "wait_p95": None if stats.wait_p95 is None else round(stats.wait_p95, 3),
        "oldest_wait": round(stats.oldest_wait, 3),
        "ready": stats.ready,
        "busy_ratio": round(stats.busy_ratio, 3),
        "concurrency": stats.concurrency,
        "running": stats.running,
        "workers": stats.consumers,
        "suggested_workers": None if target_wait is None else suggested_workers(stats, target_wait),
    }


def scale_document(
    stats: Sequence[QueueStats],
    *,
    target_wait: float | None,
    worker: Mapping[str, object],
    sampled_at: float | None,
) -> dict[str, object]:
    """The ``/scale`` document: the worker, the target, each queue's figures.

    ``suggested_workers`` is None without a target (no ``?target_wait=`` and no
    ``--target-wait``); ``queues`` is empty until the worker's first sample.
    """
    return {
        "worker": dict(worker),
        "target_wait": target_wait,
        "sampled_at": sampled_at,
        "queues": {one.queue: queue_document(one, target_wait) for one in stats},
    }


def parse_target(query: str, default: float | None) -> float | None:
    """The ``target_wait`` of a query string, else `default`.

    Raises:
        ValueError: it is given but not a finite number above 0.
    """
    values = parse_qs(query).get("target_wait")
    if not values:
        return default
    try:
        target = float(values[-1])
    except ValueError:
        raise ValueError(f"target_wait must be a number of seconds, not {values[-1]!r}") from None
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"target_wait must be above 0 seconds, not {values[-1]!r}")
    return target


class ScaleSignal(Instrumentation):
    """Keeps a worker's last sample (about once a second) and answers ``/scale`` from it.

    The HTTP server answers in its own threads: it reads the last sample, a tuple swapped
    whole by the event loop, and never the worker's live state, which only the loop may touch.

    Args:
        identity: the worker's identity now (its heartbeat id, host and pid).
        target_wait: the target when a request names none (the worker's ``--target-wait``).
    """

    def __init__(
        self, identity: Callable[[], Mapping[str, object]], target_wait: float | None = None
    ) -> None:
        self._identity = identity
        self.target_wait = target_wait
        self._last: tuple[float | None, tuple[QueueStats, ...]] = (None, ())

    def sample(self, stats: Sequence[QueueStats]) -> None:
        self._last = (time.time(), tuple(stats))

    def answer(self, query: str) -> tuple[int, bytes]:
        """The HTTP status and JSON body of ``GET /scale?QUERY``: 400 for a bad target."""
        try:
            target = parse_target(query, self.target_wait)
        except ValueError as exc:
            return 400, dumps({"error": str(exc)})
        sampled_at, stats = self._last
        document = scale_document(
            stats, target_wait=target, worker=self._identity(), sampled_at=sampled_at
        )
        return 200, dumps(document)
