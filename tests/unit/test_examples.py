"""The examples run (here on the in-memory broker; the README demo uses RabbitMQ)."""

from __future__ import annotations

from examples.demo import run_demo


async def test_demo_runs_every_job_and_reports_its_figures() -> None:
    """The demo fans out its jobs, runs every one, and reports throughput and queue wait."""
    figures = await run_demo("memory://", 300, 50)
    assert figures["jobs"] == 300
    assert figures["failed_to_enqueue"] == 0
    assert figures["run_per_s"] > 0
    assert 0 <= figures["wait_p50"] <= figures["wait_p99"]
