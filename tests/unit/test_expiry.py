"""Expiring jobs on the in-memory broker, and the errors at the edge."""

from __future__ import annotations

import datetime as dt

import pytest

from aqueue import TaskQueue
from aqueue.exceptions import ConfigurationError
from tests.helpers.expiry import (
    check_expired_job_is_dead_lettered,
    check_retry_never_outlives_the_deadline,
)

pytestmark = pytest.mark.anyio


async def test_expired_job_is_dead_lettered_and_never_runs() -> None:
    """See `check_expired_job_is_dead_lettered` (the same check runs on RabbitMQ)."""
    await check_expired_job_is_dead_lettered("memory://", "t")


async def test_retry_never_outlives_the_deadline() -> None:
    """See `check_retry_never_outlives_the_deadline` (the same check runs on RabbitMQ)."""
    await check_retry_never_outlives_the_deadline("memory://", "t")


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        (0, "expires must be a positive number"),
        (-1, "expires must be a positive number"),
        ("soon", "expires must be a positive number"),
        (dt.datetime(2030, 1, 1), "timezone-aware"),  # noqa: DTZ001 - the naive one is the point
        (dt.datetime(2001, 1, 1, tzinfo=dt.UTC), "is in the past"),
    ],
)
def test_bad_expires_fails_at_with_options(expires: object, message: str) -> None:
    """A non-positive, naive or past `expires` fails where it is written."""
    queue = TaskQueue("memory://", telemetry=False)

    @queue.task()
    async def work() -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        work.with_options(expires=expires)  # type: ignore[arg-type]


def test_bad_on_expire_fails_at_decoration() -> None:
    """on_expire is 'dead-letter' or 'drop'."""
    queue = TaskQueue("memory://", telemetry=False)
    with pytest.raises(ConfigurationError, match="on_expire must be"):
        queue.task(on_expire="keep")  # type: ignore[call-overload]


async def test_a_job_that_would_expire_before_it_is_due_is_refused() -> None:
    """enqueue_in with a delay past the deadline raises before anything is published."""
    queue = TaskQueue("memory://", telemetry=False)

    @queue.task()
    async def work() -> None: ...

    async with queue:
        with pytest.raises(ConfigurationError, match="would expire before it is due"):
            await queue.enqueue_in(10, work.with_options(expires=5))
        with pytest.raises(ConfigurationError, match="would expire before it is due"):
            await queue.enqueue_many(work, [()], delay=10, expires=5)
        assert (await queue.enqueue_many(work, [(), ()], expires=60)).ok
