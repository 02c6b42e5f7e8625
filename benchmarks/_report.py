"""The markdown report: environment, then one row per scenario figure."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version

from benchmarks._common import Sizes
from benchmarks._scenarios import Metric, Results, Scenario


@dataclass(frozen=True, slots=True)
class Environment:
    """Where and with what the figures were measured."""

    date: str
    python: str
    aio_pika: str
    aiormq: str
    aqueue: str
    broker: str
    machine: str
    loop: str = "asyncio"

    @classmethod
    def collect(cls, broker: tuple[str, str]) -> Environment:
        """The versions of this process and the broker's own product and version."""
        product, broker_version = broker
        cores = os.cpu_count() or 0
        return cls(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            python=platform.python_version(),
            aio_pika=version("aio-pika"),
            aiormq=version("aiormq"),
            aqueue=version("aqueue-rabbitmq"),
            broker=f"{product} {broker_version}",
            machine=f"{platform.system()} {platform.machine()}, {cores} cores",
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )


def _value(value: float | None, metric: Metric) -> str:
    if value is None:
        return "-"
    if metric.unit == "ms":
        return f"{value:,.2f} ms"
    if metric.unit == "us":
        return f"{value:,.0f} us"
    if metric.unit == "s":
        return f"{value:,.2f} s"
    if metric.unit == "MiB":
        return f"{value:,.1f} MiB"
    return f"{value:,.0f} {metric.unit}"


def _ratio(results: Results, scenario: Scenario, metric: Metric) -> str:
    raw = results.median(scenario.key, "raw", metric.key)
    aq = results.median(scenario.key, "aqueue", metric.key)
    if raw is None or aq is None:
        return "-"
    text = f"{aq / raw:.2f}"
    ratios = results.ratios(scenario.key, metric.key)
    if len(ratios) > 1:
        text += f" ({min(ratios):.2f} to {max(ratios):.2f})"
    return text


def _bar(results: Results, scenario: Scenario, metric: Metric) -> str:
    raw = results.median(scenario.key, "raw", metric.key)
    aq = results.median(scenario.key, "aqueue", metric.key)
    if scenario.bar is None or not metric.higher_is_better or raw is None or aq is None:
        return ""
    verdict = "met" if aq / raw >= scenario.bar else "**not met**"
    return f"≥ {scenario.bar:.1f}: {verdict}"


def table(results: Results, scenarios: Sequence[Scenario], sizes: Sizes) -> str:
    """The markdown table: both figures (median over repeats) and the ratio aqueue/raw."""
    lines = [
        "| # | scenario | jobs | figure | raw aio-pika | aqueue | aqueue/raw | bar |",
        "|---|---|--:|---|--:|--:|--:|---|",
    ]
    compared = [s for s in scenarios if s.raw is not None and s.report is None]
    for number, scenario in enumerate(compared, 1):
        for metric in scenario.metrics:
            direction = "higher is better" if metric.higher_is_better else "lower is better"
            lines.append(
                f"| {number} | {scenario.title} | {scenario.size(sizes):,} "
                f"| {metric.label} ({direction}) "
                f"| {_value(results.median(scenario.key, 'raw', metric.key), metric)} "
                f"| {_value(results.median(scenario.key, 'aqueue', metric.key), metric)} "
                f"| {_ratio(results, scenario, metric)} | {_bar(results, scenario, metric)} |"
            )
    return "\n".join(lines)


def aqueue_table(results: Results, scenarios: Sequence[Scenario], sizes: Sizes) -> str:
    """The scenarios aqueue alone runs (results, workflows), median over repeats."""
    lines = ["| # | scenario | jobs | figure | aqueue |", "|---|---|--:|---|--:|"]
    alone = [s for s in scenarios if s.raw is None and s.report is None]
    for number, scenario in enumerate(alone, 1):
        for metric in scenario.metrics:
            direction = "higher is better" if metric.higher_is_better else "lower is better"
            lines.append(
                f"| {number} | {scenario.title} | {scenario.size(sizes):,} "
                f"| {metric.label} ({direction}) "
                f"| {_value(results.median(scenario.key, 'aqueue', metric.key), metric)} |"
            )
    return "\n".join(lines)


def report(
    results: Results,
    scenarios: Sequence[Scenario],
    sizes: Sizes,
    environment: Environment,
    *,
    repeat: int,
    command: str,
) -> str:
    """The whole markdown report."""
    env = environment
    header = [
        f"Measured {env.date} with `{command}`.",
        "",
        f"- Python {env.python} ({env.loop} loop), aio-pika {env.aio_pika} "
        f"(aiormq {env.aiormq}), aqueue {env.aqueue}",
        f"- {env.broker} on the same machine ({env.machine}); quorum queues on both sides",
        f"- repeats: {repeat}"
        + (
            "; figures are medians, the ratio's range over the paired repeats in brackets"
            if repeat > 1
            else ""
        ),
        "",
        "",
    ]
    tables = []
    if any(s.raw is not None and s.report is None for s in scenarios):
        tables.append(table(results, scenarios, sizes))
    if any(s.raw is None and s.report is None for s in scenarios):
        tables.append(
            "aqueue alone (RabbitMQ has no results or workflows to compare with):\n\n"
            + aqueue_table(results, scenarios, sizes)
        )
    tables.extend(s.report(results, sizes) for s in scenarios if s.report is not None)
    return "\n".join(header) + "\n\n".join(tables) + "\n"


def command_line() -> str:
    """How this process was started, for the report."""
    return " ".join(["python -m benchmarks", *sys.argv[1:]])
