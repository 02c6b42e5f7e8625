"""Issue 15: the Django project of ``tests/integration/apps/django_project``, run by Django's
own test runner (``python -m django test``) in a subprocess, against the shared RabbitMQ and
Redis and the machine's PostgreSQL.

The runner creates a test database of a name unique to this run (and drops it); the Django
tests start ``aqueue worker aqueue.contrib.django:queue`` and ``aqueue outbox-relay`` on it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from tests.helpers.postgres import postgres_url
from tests.helpers.worker_process import ROOT, subprocess_env
from tests.helpers.workers import delete_topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SETTINGS = "tests.integration.apps.django_project.settings"


def test_django_test_runner_passes(
    amqp_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """Django's test runner runs the project's tests (backend, async view, ORM task, outbox,
    enqueue_on_commit) and they all pass."""
    pg = postgres_url()
    env = subprocess_env(
        {
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "AQUEUE_TEST_URL": amqp_url,
            "AQUEUE_TEST_REDIS_URL": redis_url,
            "AQUEUE_TEST_PREFIX": prefix,
            "AQUEUE_TEST_POSTGRES_URL": pg,
            "AQUEUE_TEST_DJANGO_TEST_DB": f"test_aqueue_{uuid.uuid4().hex[:10]}",
            "AQUEUE_TEST_LOG_DIR": str(tmp_path),
        }
    )
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "django",
                "test",
                "tests.integration.apps.django_project.shop",
                "--noinput",
                "-v",
                "2",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
    finally:
        anyio.run(delete_topology, amqp_url, prefix, ["default", "emails"])
        anyio.run(_delete_redis_keys, redis_url, prefix)
    logs = "\n".join(
        f"--- {log.name}:\n" + "\n".join(log.read_text().splitlines()[-40:])
        for log in sorted(tmp_path.glob("*.log"))
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    assert "Ran 10 tests" in done.stderr, done.stderr
    assert "\nOK\n" in done.stderr, done.stderr


async def _delete_redis_keys(url: str, prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
