"""Job metrics through a `MetricSink`: one `JobMetrics` instrumentation, any metrics library.

`aqueue.telemetry.Telemetry` (OpenTelemetry) and the Prometheus exporter of ``aqueue worker
--metrics-port`` are sinks; the names and descriptions of the metrics are stated here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Literal, Protocol, TypeAlias

from aqueue._core import wire as t
from aqueue._observability.hooks import Instrumentation, JobObserver, QueueStats, Settlement
from aqueue._tasks.context import JobContext
from aqueue._transport import Delivery

#: The job counters every metrics backend keeps, per task and queue.
Counter: TypeAlias = Literal[
    "started",
    "succeeded",
    "failed",
    "retried",
    "dead_lettered",
    "deferred_rate",
    "deferred_concurrency",
    "deduplicated",
    "expired",
    "cancelled",
]
#: The histograms, in seconds: a job's run time, and its wait from due to start.
Histogram: TypeAlias = Literal["duration", "queue_wait"]
#: What each counter counts (both metrics backends describe them with these words).
COUNTERS: Mapping[Counter, str] = {
    "started": "Jobs that started running.",
    "succeeded": "Jobs that succeeded (acked).",
    "failed": "Attempts that failed (each retried or dead-lettered).",
    "retried": "Failed attempts sent to a next attempt.",
    "dead_lettered": "Jobs sent to the dead-letter queue.",
    "deferred_rate": "Jobs deferred through the delay levels by their task's rate limit.",
    "deferred_concurrency": "Jobs deferred through the delay levels by a concurrency cap.",
    "deduplicated": "Enqueues of a unique job already enqueued: nothing was published.",
    "expired": "Jobs delivered after their deadline (expires), not run: dead-lettered or dropped.",
    "cancelled": "Jobs cancelled: never started, or their run was stopped.",
}
#: What each histogram measures, in seconds.
HISTOGRAMS: Mapping[Histogram, str] = {
    "duration": "How long a job's run (its middleware chain) took.",
    "queue_wait": "How long a job waited between becoming due and starting.",
}
IN_FLIGHT = "Jobs running now."
#: The per-queue gauges a running worker samples about once a second (`QueueStats`).
Gauge: TypeAlias = Literal[
    "oldest_wait", "ready", "concurrency", "busy_ratio", "loop_lag", "cpu_saturated"
]
#: What each gauge shows (both metrics backends describe them with these words).
GAUGES: Mapping[Gauge, str] = {
    "oldest_wait": "Seconds the oldest job known to be waiting has waited since it became due "
    "(exact for prefetched jobs, else an estimate that rises while no job starts).",
    "ready": "Ready messages in the work queue (a passive declare every few seconds).",
    "concurrency": "The queue's runners in this worker (its concurrency limit now).",
    "busy_ratio": "Jobs running divided by concurrency.",
    "loop_lag": "Mean lag of the worker's event loop over the last second, in seconds.",
    "cpu_saturated": "1 while the autoscaler holds the queue because the event loop lags "
    "(CPU-bound work), else 0.",
}


def gauge_values(stats: QueueStats) -> dict[Gauge, float]:
    """The gauges of one queue's figures; `ready` is left out until it was read once."""
    values: dict[Gauge, float] = {
        "oldest_wait": stats.oldest_wait,
        "concurrency": stats.concurrency,
        "busy_ratio": stats.busy_ratio,
        "loop_lag": stats.loop_lag,
        "cpu_saturated": 1.0 if stats.cpu_saturated else 0.0,
    }
    if stats.ready is not None:
        values["ready"] = stats.ready
    return values


#: Bucket bounds of both histograms, in seconds: from a 5 ms job to a ten-minute wait.
SECONDS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


class MetricSink(Protocol):
    """Where `JobMetrics` records: one implementation per metrics library."""

    def count(self, counter: Counter, task: str, queue: str) -> None:
        """Add one to `counter`."""

    def observe(self, histogram: Histogram, seconds: float, task: str, queue: str) -> None:
        """Record a value in `histogram`."""

    def in_flight(self, delta: int, task: str, queue: str) -> None:
        """Jobs running now, up or down by `delta`."""

    def gauge(self, gauge: Gauge, value: float, queue: str) -> None:
        """Set the per-queue `gauge` to `value`."""


class JobMetrics(Instrumentation):
    """Job metrics per task and queue, recorded into a `MetricSink`.

    Counts jobs started, succeeded, failed, retried and dead-lettered; times their runs and
    their queue waits; tracks jobs in flight; sets the per-queue gauges a worker samples.
    ``failed`` counts attempts that ended in an exception and were settled as such: each is
    also counted in ``retried`` or ``dead_lettered``. A delivery that could not be decoded
    counts as failed and dead-lettered under the task its header names (``""`` if none).
    """

    def __init__(self, sink: MetricSink) -> None:
        self.sink = sink

    def job(self, delivery: Delivery, queue: str) -> JobObserver:
        return JobMetricsObserver(self.sink, delivery, queue)

    def sample(self, stats: Sequence[QueueStats]) -> None:
        record_gauges(self.sink, stats)

    def deduplicated(self, task: str, queue: str, job_id: str) -> None:
        self.sink.count("deduplicated", task, queue)


def record_gauges(sink: MetricSink, stats: Sequence[QueueStats]) -> None:
    """Set every gauge of every queue's figures in `sink`."""
    for queue_stats in stats:
        for gauge, value in gauge_values(queue_stats).items():
            sink.gauge(gauge, value, queue_stats.queue)


class JobMetricsObserver(JobObserver):
    """The `JobObserver` of `JobMetrics` (subclassed by observers that also record metrics)."""

    __slots__ = ("_queue", "_running", "_sink", "_task")

    def __init__(self, sink: MetricSink, delivery: Delivery, queue: str) -> None:
        self._sink = sink
        task = delivery.headers.get(t.HEADER_TASK)
        self._task = task if isinstance(task, str) else ""
        self._queue = queue
        self._running = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._running:
            self._running = False
            self._sink.in_flight(-1, self._task, self._queue)

    def started(self, job: JobContext) -> None:
        self._task, self._queue = job.task, job.queue
        sink = self._sink
        sink.count("started", job.task, job.queue)
        sink.observe("queue_wait", job.queue_wait, job.task, job.queue)
        sink.in_flight(1, job.task, job.queue)
        self._running = True

    def finished(self, job: JobContext, error: BaseException | None, duration: float) -> None:
        self._sink.observe("duration", duration, job.task, job.queue)

    def settled(self, settlement: Settlement, error: BaseException | None) -> None:
        sink, task, queue = self._sink, self._task, self._queue
        if settlement == "succeeded":
            sink.count("succeeded", task, queue)
        elif settlement == "retried":
            sink.count("failed", task, queue)
            sink.count("retried", task, queue)
        elif settlement == "dead-lettered":
            sink.count("failed", task, queue)
            sink.count("dead_lettered", task, queue)
        elif settlement == "rate-limited":
            sink.count("deferred_rate", task, queue)
        elif settlement == "concurrency-limited":
            sink.count("deferred_concurrency", task, queue)
        elif settlement in ("expired", "cancelled"):
            sink.count(settlement, task, queue)
