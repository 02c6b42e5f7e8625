"""The operator dashboard: a Starlette app over an app's queues, workers, jobs, dead letters.

Needs the ``dashboard`` extra (``pip install 'aqueue-rabbitmq[dashboard]'``); served by
``aqueue dashboard APP`` or mounted with `app`. Layout: `app` (the factory), `pages` (the
screens and their JSON), `actions` (replay, purge, cancel), `auth` (the credential and the
CSRF token), `monitor` (what it reads of the broker), `history`, `present`.
"""

from __future__ import annotations

from aqueue._dashboard.app import app

__all__ = ["app"]
