"""The scenarios, each with its raw aio-pika and aqueue implementation, and the run loop."""

from __future__ import annotations

import functools
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from benchmarks import _aqueue, _memory, _processes, _raw, _telemetry, _web, _workflows
from benchmarks._common import PREFETCH, SLEEP, WINDOW, Sizes

Side = Literal["raw", "aqueue"]
SIDES: tuple[Side, Side] = ("raw", "aqueue")
Figures = dict[str, float]
Run = Callable[[str, int], Awaitable[Figures]]


class RedisRun(Protocol):
    """A run that also needs Redis (a result backend)."""

    def __call__(self, url: str, count: int, *, redis_url: str) -> Awaitable[Figures]: ...


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure a scenario reports."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


RATE = Metric("rate", "rate", "jobs/s", higher_is_better=True)
CPU = Metric("cpu", "client CPU per job", "us", higher_is_better=False)
P50 = Metric("p50", "p50", "ms", higher_is_better=False)
P99 = Metric("p99", "p99", "ms", higher_is_better=False)
SECONDS = Metric("seconds", "wall time", "s", higher_is_better=False)
RSS = Metric("rss", "resident memory added", "MiB", higher_is_better=False)


@dataclass(frozen=True, slots=True)
class Scenario:
    """What is measured, how many jobs, and the two implementations.

    A scenario without a `raw` side (results, workflows: RabbitMQ has neither) is reported in
    a table of its own; one that needs Redis has its aqueue side in `with_redis`.
    """

    key: str
    title: str
    size: Callable[[Sizes], int]
    metrics: tuple[Metric, ...]
    raw: Run | None
    aqueue: Run | None = None
    #: The issue's acceptance bar for aqueue/raw (reported, never asserted).
    bar: float | None = None
    with_redis: RedisRun | None = None
    #: A table of its own instead of rows in the shared ones (its figures do not fit them).
    report: Callable[[Results, Sizes], str] | None = None

    @property
    def sides(self) -> tuple[Side, ...]:
        """The sides this scenario has."""
        return SIDES if self.raw is not None else ("aqueue",)

    def run(self, side: Side, *, redis_url: str = "") -> Run:
        """The implementation of one side."""
        if side == "raw" and self.raw is not None:
            return self.raw
        if side == "aqueue" and self.aqueue is not None:
            return self.aqueue
        if side == "aqueue" and self.with_redis is not None:
            return functools.partial(self.with_redis, redis_url=redis_url)
        raise ValueError(f"scenario {self.key} has no {side} side")


SCENARIOS = (
    Scenario(
        "enqueue_many",
        f"enqueue_many, pipelined confirms ({WINDOW} in flight)",
        lambda s: s.enqueue_many,
        (RATE, CPU),
        _raw.enqueue_many,
        _aqueue.enqueue_many,
        bar=0.8,
    ),
    Scenario(
        "enqueue_one",
        "enqueue one by one, each confirm awaited",
        lambda s: s.enqueue_one,
        (RATE, CPU),
        _raw.enqueue_one,
        _aqueue.enqueue_one,
    ),
    Scenario(
        "drain",
        f"drain no-op jobs, 1 worker, prefetch {PREFETCH}",
        lambda s: s.drain,
        (RATE, CPU),
        _raw.drain,
        _aqueue.drain,
        bar=0.8,
    ),
    Scenario(
        "io_bound",
        f"IO-bound: each job sleeps {SLEEP * 1000:.0f} ms, concurrency {PREFETCH}",
        lambda s: s.io_bound,
        (RATE, CPU),
        _raw.io_bound,
        _aqueue.io_bound,
        bar=0.8,
    ),
    Scenario(
        "latency",
        "enqueue-to-start latency, idle worker, one job at a time",
        lambda s: s.latency,
        (P50, P99),
        _raw.latency,
        _aqueue.latency,
    ),
    Scenario(
        "web",
        "one enqueue from a FastAPI handler, warm connection (request to response)",
        lambda s: s.web,
        (P50, P99),
        _web.raw,
        _web.aqueue,
    ),
    Scenario(
        "memory",
        f"client memory with {_memory.IN_FLIGHT:,} jobs in flight (a fresh process each)",
        lambda s: _memory.IN_FLIGHT,
        (RSS,),
        _memory.raw,
        _memory.aqueue,
    ),
    Scenario(
        "plain",
        f"drain no-op jobs, no result backend, 1 worker, prefetch {PREFETCH}",
        lambda s: s.workflow,
        (SECONDS, RATE, CPU),
        None,
        _aqueue.drain,
    ),
    Scenario(
        "results",
        "the same, each job's states and result kept in Redis",
        lambda s: s.workflow,
        (SECONDS, RATE, CPU),
        None,
        with_redis=_workflows.drain_with_results,
    ),
    Scenario(
        "chord",
        "chord of no-op members, enqueue to callback (Redis)",
        lambda s: s.workflow,
        (SECONDS, RATE, CPU),
        None,
        with_redis=_workflows.chord_to_callback,
    ),
    Scenario(
        "untraced",
        "the plain drain, telemetry=False (no instrumentation hooks)",
        lambda s: s.workflow,
        (SECONDS, RATE, CPU),
        None,
        _telemetry.untraced,
    ),
    Scenario(
        "traced",
        "the plain drain, traced: OpenTelemetry SDK, BatchSpanProcessor, no-op exporter",
        lambda s: s.workflow,
        (SECONDS, RATE, CPU),
        None,
        _telemetry.traced,
    ),
    Scenario(
        "processes",
        f"drain no-op jobs with {', '.join(map(str, _processes.PROCESS_COUNTS))} worker "
        f"processes, prefetch {PREFETCH} each",
        lambda s: s.drain,  # the drain's count: 20,000, or 2,000 with --quick
        tuple(
            Metric(f"{key}{n}", f"{label}, {n} processes", unit, higher)
            for n in _processes.PROCESS_COUNTS
            for key, label, unit, higher in (
                ("rate", "rate", "jobs/s", True),
                ("cpu", "CPU per 1,000 jobs", "s", False),
            )
        ),
        _processes.raw_side,
        _processes.aqueue_side,
        report=_processes.table,
    ),
)


@dataclass(slots=True)
class Results:
    """Every figure of every run, by scenario and side, in run order."""

    figures: dict[tuple[str, Side], list[Figures]] = field(default_factory=dict)

    def add(self, scenario: str, side: Side, figures: Figures) -> None:
        """Record one run."""
        self.figures.setdefault((scenario, side), []).append(figures)

    def runs(self, scenario: str, side: Side) -> list[Figures]:
        """The runs of one scenario on one side."""
        return self.figures.get((scenario, side), [])

    def median(self, scenario: str, side: Side, metric: str) -> float | None:
        """The median of a figure over the repeats, or None when that side did not run."""
        values = [run[metric] for run in self.runs(scenario, side)]
        return statistics.median(values) if values else None

    def ratios(self, scenario: str, metric: str) -> list[float]:
        """aqueue/raw of each repeat (paired in run order)."""
        pairs = zip(self.runs(scenario, "raw"), self.runs(scenario, "aqueue"), strict=False)
        return [aq[metric] / raw[metric] for raw, aq in pairs]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def warm_up(url: str, sizes: Sizes, sides: Sequence[Side]) -> None:
    """A small untimed run of each side, so that neither pays for a cold broker or client."""
    for side in sides:
        scenario = SCENARIOS[2]  # drain: pre-fill (publish) + consume
        await scenario.run(side)(url, sizes.warmup)


async def run_all(
    url: str,
    sizes: Sizes,
    *,
    repeat: int,
    scenarios: Sequence[Scenario] = SCENARIOS,
    sides: Sequence[Side] = SIDES,
    redis_url: str = "",
) -> Results:
    """Run every scenario for every side, interleaved; odd repeats swap the order of the sides."""
    results = Results()
    _log(f"warming up ({sizes.warmup} jobs per side)")
    await warm_up(url, sizes, sides)
    for index in range(repeat):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        for scenario in scenarios:
            count = scenario.size(sizes)
            for side in (side for side in order if side in scenario.sides):
                figures = await scenario.run(side, redis_url=redis_url)(url, count)
                results.add(scenario.key, side, figures)
                shown = ", ".join(f"{key}={value:,.2f}" for key, value in figures.items())
                _log(f"[{index + 1}/{repeat}] {scenario.key:<12} {side:<6} n={count:<6} {shown}")
    return results
