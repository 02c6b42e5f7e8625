"""The machine's PostgreSQL for the outbox and Django tests: a schema of the test's own.

``AQUEUE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, trust
auth) names the database. Each test gets a fresh schema named after a random token, so
parallel runs never share a table, and drops it (``CASCADE``) when it ends. When no
PostgreSQL answers the tests skip, or fail under ``AQUEUE_REQUIRE_BROKER=1``.
"""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    """The PostgreSQL URL (plain ``postgresql://``), skipping or failing when none answers."""
    url = os.environ.get("AQUEUE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            pass
    except OSError:
        reason = f"no PostgreSQL answers at {url}"
        if os.environ.get("AQUEUE_REQUIRE_BROKER") == "1":
            pytest.fail(f"{reason} and AQUEUE_REQUIRE_BROKER=1", pytrace=False)
        pytest.skip(reason)
    return url


def asyncpg_url(url: str) -> str:
    """`url` with SQLAlchemy's asyncpg driver named."""
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


def schema_name() -> str:
    """A schema name no other test run uses."""
    return f"aqtest_{uuid.uuid4().hex[:10]}"
