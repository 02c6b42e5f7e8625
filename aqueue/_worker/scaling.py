"""The autoscaler at work: each interval, measure every autoscaled queue, decide, log, resize.

The rules are `decide`'s (pure, in `aqueue._worker.autoscale`); this module feeds it one
queue's figures, remembers its state between decisions, logs every change at INFO on the
``aqueue.autoscale`` logger with the figures that drove it, and the CPU-bound verdicts with
the marks the ``--processes`` supervisor reads. `DecisionLog` keeps the last few decisions
that mattered per queue, for the worker's heartbeats (``aqueue stats``, the dashboard).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from aqueue._core.config import Autoscale
from aqueue._core.heartbeats import MAX_DECISIONS, MAX_REASON_CHARS, ScaleDecision
from aqueue._core.supervision import CPU_BOUND_MARK, CPU_FREE_MARK
from aqueue._worker.autoscale import Decision, Measurements, ScaleState, decide
from aqueue._worker.waits import QueueRunners, percentile

scaling_logger = logging.getLogger("aqueue.autoscale")


class DecisionLog:
    """The last `size` decisions that mattered of each queue: changes and CPU-bound holds.

    A steady queue's "hold" is not news and is not kept (it would push the changes out);
    a hold because the queue is CPU-bound is, once, when that verdict is reached.
    """

    def __init__(self, size: int = MAX_DECISIONS) -> None:
        self._size = size
        self._log: dict[str, deque[ScaleDecision]] = {}

    def note(self, queue: str, decision: ScaleDecision) -> None:
        """Keep `decision` as the newest of `queue`'s, dropping its oldest past `size`."""
        reason = decision.reason[:MAX_REASON_CHARS]
        log = self._log.setdefault(queue, deque(maxlen=self._size))
        log.append(
            ScaleDecision(decision.at, decision.action, decision.before, decision.after, reason)
        )

    def recent(self, queue: str) -> tuple[ScaleDecision, ...]:
        """`queue`'s kept decisions, newest first."""
        return tuple(reversed(self._log.get(queue, ())))


class Scaler:
    """The decisions of a worker's autoscaled queues, each within its own bounds.

    Args:
        queues: per autoscaled queue, its runners and its bounds.
        resize: sets a queue's runners (and its prefetch, where it follows) to a number.
        serving: whether a queue's consumer is subscribed (not paused).
        threads_waiting: sync jobs of a queue waiting for a thread now.
        log: where the decisions that mattered are kept (the heartbeats read it).
    """

    def __init__(
        self,
        queues: Mapping[str, tuple[QueueRunners, Autoscale]],
        resize: Callable[[QueueRunners, int], Awaitable[None]],
        serving: Callable[[str], bool],
        threads_waiting: Callable[[str], int],
        log: DecisionLog | None = None,
    ) -> None:
        self.log = log if log is not None else DecisionLog()
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
            at = time.time()
            if decision.cpu_saturated and not runners.cpu_saturated:
                self.log.note(
                    queue,
                    ScaleDecision(at, "hold", runners.target, runners.target, decision.reason),
                )
            self._report_cpu(queue, runners, decision)
            if decision.concurrency != runners.target:
                _log_change(queue, runners, measured, decision)
                self.log.note(
                    queue,
                    ScaleDecision(
                        at,
                        decision.action,
                        runners.target,
                        decision.concurrency,
                        _reason(measured, decision),
                    ),
                )
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


def _reason(measured: Measurements, decision: Decision) -> str:
    """A decision's reason with the two figures an operator reads first."""
    p95 = "-" if measured.wait_p95 is None else f"{measured.wait_p95:.2f}s"
    return f"{decision.reason} (p95 wait {p95}, {measured.throughput:.1f} jobs/s)"
