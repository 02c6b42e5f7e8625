"""The autoscaler at work: each interval, measure every autoscaled queue, decide, log, resize.

The rules are `decide`'s (pure, in `aqueue._worker.autoscale`); this module feeds it one
queue's figures, remembers its state between decisions, logs every change at INFO on the
``aqueue.autoscale`` logger with the figures that drove it, and the CPU-bound verdicts with
the marks the ``--processes`` supervisor reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aqueue._core.config import Autoscale
from aqueue._core.supervision import CPU_BOUND_MARK, CPU_FREE_MARK
from aqueue._worker.autoscale import Decision, Measurements, ScaleState, decide
from aqueue._worker.waits import QueueRunners, percentile

scaling_logger = logging.getLogger("aqueue.autoscale")


class Scaler:
    """The decisions of a worker's autoscaled queues, each within its own bounds.

    Args:
        queues: per autoscaled queue, its runners and its bounds.
        resize: sets a queue's runners (and its prefetch, where it follows) to a number.
        serving: whether a queue's consumer is subscribed (not paused).
        threads_waiting: sync jobs of a queue waiting for a thread now.
    """

    def __init__(
        self,
        queues: Mapping[str, tuple[QueueRunners, Autoscale]],
        resize: Callable[[QueueRunners, int], Awaitable[None]],
        serving: Callable[[str], bool],
        threads_waiting: Callable[[str], int],
    ) -> None:
        self._queues = dict(queues)
        self._resize = resize
        self._serving = serving
        self._threads_waiting = threads_waiting
        self._states = {queue: ScaleState() for queue in self._queues}
        self._started = {queue: runners.started for queue, (runners, _) in self._queues.items()}

    async def decide(self, now: float, elapsed: float, loop_lag: float) -> None:
        """One decision per autoscaled queue over the last `elapsed` seconds, at `now`."""
        for queue, (runners, bounds) in self._queues.items():
            measured = self._measure(queue, runners, now, elapsed, loop_lag)
            decision = decide(measured, self._states[queue], bounds)
            self._states[queue] = decision.state
            self._report_cpu(queue, runners, decision)
            if decision.concurrency != runners.target:
                _log_change(queue, runners, measured, decision)
                await self._resize(runners, decision.concurrency)

    def _measure(
        self, queue: str, runners: QueueRunners, now: float, elapsed: float, loop_lag: float
    ) -> Measurements:
        busy, due_advance = runners.take_interval(now)
        started, self._started[queue] = runners.started - self._started[queue], runners.started
        peak, runners.peak_running = runners.peak_running, runners.running
        return Measurements(
            concurrency=runners.target,
            wait_p95=percentile(runners.waits.since(now - elapsed), 0.95),
            oldest_wait=runners.oldest_wait(time.time(), now, serving=self._serving(queue))[0],
            started=started,
            elapsed=elapsed,
            peak_running=peak,
            backlog=bool(runners.ready) or runners.intake.waiting() > 0,
            loop_lag=loop_lag,
            threads_waiting=self._threads_waiting(queue),
            busy=busy,
            due_advance=due_advance,
        )

    @staticmethod
    def _report_cpu(queue: str, runners: QueueRunners, decision: Decision) -> None:
        if decision.cpu_saturated and not runners.cpu_saturated:
            scaling_logger.warning(
                "queue %s: %s %s; holding concurrency at %d",
                queue,
                CPU_BOUND_MARK,
                decision.reason,
                runners.target,
            )
        elif runners.cpu_saturated and not decision.cpu_saturated:
            scaling_logger.info("queue %s: %s", queue, CPU_FREE_MARK)
        runners.cpu_saturated = decision.cpu_saturated


def _log_change(
    queue: str, runners: QueueRunners, measured: Measurements, decision: Decision
) -> None:
    scaling_logger.info(
        "queue %s: %s concurrency %d -> %d: %s (p95 wait %s, oldest wait %.2fs, %.1f jobs/s, "
        "%.1f busy on average, peak busy %d, ready %s, loop lag %.0f ms)",
        queue,
        decision.action,
        runners.target,
        decision.concurrency,
        decision.reason,
        "-" if measured.wait_p95 is None else f"{measured.wait_p95:.2f}s",
        measured.oldest_wait,
        measured.throughput,
        (measured.busy or 0.0) / measured.elapsed if measured.elapsed > 0 else 0.0,
        measured.peak_running,
        runners.ready,
        measured.loop_lag * 1000,
    )
