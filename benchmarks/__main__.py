"""``python -m benchmarks``: aqueue against raw aio-pika, on the same broker, in one run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anyio

from benchmarks._burst import FULL_BURST, QUICK_BURST, Burst, burst_table, run_burst
from benchmarks._common import FULL, QUICK, Sizes, broker_version
from benchmarks._report import Environment, command_line, report
from benchmarks._scenarios import SCENARIOS, SIDES, Results, Scenario, Side, run_all

DEFAULT_URL = os.environ.get("AQUEUE_URL", "amqp://guest:guest@127.0.0.1:5672/")
DEFAULT_REDIS_URL = os.environ.get("AQUEUE_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Only with ``--only burst``: four worker processes in turn, minutes of wall time.
BURST = "burst"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure aqueue against raw aio-pika on one broker and print the ratios.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="AMQP URL (default: %(default)s)")
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="Redis URL of the result-backend scenarios (default: %(default)s); their keys "
        "are deleted after each run",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario per side")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (default: all but burst): "
        + ", ".join([*(s.key for s in SCENARIOS), BURST]),
    )
    parser.add_argument(
        "--side", choices=("both", *SIDES), default="both", help="run one side only (profiling)"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of both sides (uvloop: pip install 'aqueue-rabbitmq[speed]')",
    )
    options = parser.parse_args()
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    known = {s.key for s in SCENARIOS} | {BURST}
    unknown = {key for key in options.only.split(",") if key} - known
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return options


async def _main(
    url: str,
    redis_url: str,
    sizes: Sizes,
    repeat: int,
    scenarios: list[Scenario],
    sides: tuple[Side, ...],
    burst: Burst | None,
) -> str:
    environment = Environment.collect(await broker_version(url))
    # no warm-up for the burst alone: it starts a fresh worker process per configuration
    results = (
        await run_all(
            url, sizes, repeat=repeat, scenarios=scenarios, sides=sides, redis_url=redis_url
        )
        if scenarios
        else Results()
    )
    text = report(results, scenarios, sizes, environment, repeat=repeat, command=command_line())
    if burst is not None:
        text += "\n" + burst_table(await run_burst(url, burst), burst)
    return text


def main() -> None:
    """Run the benchmarks; print the report (and write it with ``--output``)."""
    options = _parse()
    wanted = {key for key in options.only.split(",") if key}
    scenarios = [s for s in SCENARIOS if not wanted or s.key in wanted]
    sides: tuple[Side, ...] = SIDES if options.side == "both" else (options.side,)
    sizes = QUICK if options.quick else FULL
    burst = (QUICK_BURST if options.quick else FULL_BURST) if BURST in wanted else None
    text = anyio.run(
        _main,
        options.url,
        options.redis_url,
        sizes,
        options.repeat,
        scenarios,
        sides,
        burst,
        backend_options={"use_uvloop": options.loop == "uvloop"},
    )
    print(text)
    if options.output is not None:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(text)


if __name__ == "__main__":
    main()
