"""Tier 7: the ``aqueue`` command line (typer), the one place that sets up logging and OTel.

``common`` holds the typer app and what every command shares; ``worker``, ``dlq``,
``dashboard``, ``outbox``, ``schedules``, ``cancel`` and ``stats`` add their commands to it;
``telemetry`` sets up logging, OTLP export and the metrics endpoint.
"""

from aqueue._cli import cancel, dashboard, dlq, outbox, schedules, stats, worker
from aqueue._cli.common import app

__all__ = ["app", "cancel", "dashboard", "dlq", "main", "outbox", "schedules", "stats", "worker"]


def main() -> None:
    """Entry point of the ``aqueue`` script."""
    app()
