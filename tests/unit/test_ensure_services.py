"""``scripts/ensure-services`` checks that PostgreSQL answers queries, and fails clearly when
it does not (the outbox and Django tests need it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-services"


def _run_postgres_check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}" && ensure_postgres'],
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "AQUEUE_TEST_POSTGRES_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_a_postgres_that_does_not_answer_fails_clearly() -> None:
    """A PostgreSQL URL where nothing listens (not the local default: only checked) exits 1
    with an error naming the URL and the cause."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    done = _run_postgres_check(url)
    assert done.returncode == 1
    assert f"ERROR: PostgreSQL does not answer queries at {url}" in done.stderr
    assert "refused" in done.stderr
