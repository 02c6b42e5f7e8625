"""Expiring jobs on RabbitMQ: the same checks as on the in-memory broker (tests/unit)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers.expiry import (
    check_expired_job_is_dead_lettered,
    check_retry_never_outlives_the_deadline,
)
from tests.helpers.workers import delete_topology

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    yield
    await delete_topology(amqp_url, prefix)


async def test_expired_job_is_dead_lettered_and_never_runs(
    amqp_url: str, prefix: str, cleanup: None
) -> None:
    """A job with expires=1 delivered after 2 s is dead-lettered as expired and never runs
    (see `check_expired_job_is_dead_lettered`)."""
    await check_expired_job_is_dead_lettered(amqp_url, prefix)


async def test_retry_never_outlives_the_deadline(amqp_url: str, prefix: str, cleanup: None) -> None:
    """See `check_retry_never_outlives_the_deadline`."""
    await check_retry_never_outlives_the_deadline(amqp_url, prefix)
