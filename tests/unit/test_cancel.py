"""Cancellation on the in-memory broker (the same checks run on RabbitMQ), and the memory."""

from __future__ import annotations

import pytest

from aqueue._core.cancels import CancelMemory, CancelNotice
from tests.helpers import cancelling

pytestmark = pytest.mark.anyio


async def test_queued_and_delayed_jobs_never_run() -> None:
    """See `check_queued_and_delayed_jobs_never_run`."""
    await cancelling.check_queued_and_delayed_jobs_never_run("memory://", "t")


async def test_a_running_worker_honours_notices_without_a_backend() -> None:
    """See `check_a_running_worker_honours_notices_without_a_backend`."""
    await cancelling.check_a_running_worker_honours_notices_without_a_backend("memory://", "t")


async def test_running_jobs_stop_and_read_cancelled() -> None:
    """See `check_running_jobs_stop_and_read_cancelled`."""
    await cancelling.check_running_jobs_stop_and_read_cancelled("memory://", "t")


async def test_cancelling_a_chord_prevents_its_callback() -> None:
    """See `check_cancelling_a_chord_prevents_its_callback`."""
    await cancelling.check_cancelling_a_chord_prevents_its_callback("memory://", "t")


async def test_cancelling_a_chain_stops_it_and_tells_its_error_callback() -> None:
    """See `check_cancelling_a_chain_stops_it_and_tells_its_error_callback`."""
    await cancelling.check_cancelling_a_chain_stops_it_and_tells_its_error_callback(
        "memory://", "t"
    )


def test_cancel_memory_is_bounded_in_number_and_time() -> None:
    """The oldest cancellation goes first past the size; each one is forgotten after its ttl."""
    memory = CancelMemory(size=2, ttl=10)
    memory.add("a", 0)
    memory.add("b", 1)
    memory.add("c", 2)
    assert "a" not in memory
    assert memory.holds("b", 5)
    assert not memory.holds("b", 11.5)
    assert memory.holds("c", 12)
    assert len(memory) == 1


def test_cancel_notice_round_trips_and_rejects_others() -> None:
    """A notice reads back; anything else is refused."""
    assert CancelNotice.from_payload(CancelNotice("x").to_payload()) == CancelNotice("x")
    bad: object
    for bad in ({"version": 2, "job_id": "x"}, {"version": 1, "job_id": ""}, []):
        with pytest.raises(ValueError, match="cancel"):
            CancelNotice.from_payload(bad)
