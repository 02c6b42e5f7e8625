"""``python manage.py aqueue_worker [OPTIONS]``: ``aqueue worker aqueue.contrib.django:queue``.

Every option of ``aqueue worker`` is passed through as it is (``-Q default,emails``,
``--concurrency 50``, ``--outbox-database URL``, ...); the settings are the project's.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

#: The worker's app: the TaskQueue built from ``settings.TASKS``.
APP = "aqueue.contrib.django:queue"


class Command(BaseCommand):
    """Run the aqueue worker for this project's ``TASKS`` backend."""

    help = "Run the aqueue worker for the TASKS backend (the options of 'aqueue worker')."

    def run_from_argv(self, argv: list[str]) -> None:
        """Hand the arguments to ``aqueue worker`` unparsed (its options are not Django's)."""
        from aqueue._cli import app

        app(args=["worker", APP, *argv[2:]], prog_name=f"{argv[0]} {argv[1]}")

    def handle(self, *args: Any, **options: Any) -> None:
        """Not used: `run_from_argv` runs the worker."""
        raise NotImplementedError
