"""`JobStates.may_have_started`: which states of a returned job make it a crash suspect."""

from __future__ import annotations

import pytest

from aqueue import JobState, JobStatus, MemoryResultBackend
from aqueue._results.states import JobStates


@pytest.mark.parametrize(
    ("status", "state_attempt", "attempt", "suspect"),
    [
        (None, 0, 1, True),  # no state: cannot tell
        (JobStatus.QUEUED, 0, 1, False),  # as enqueued: never ran
        (JobStatus.SCHEDULED, 0, 1, False),
        (JobStatus.DEFERRED, 2, 2, False),  # deferred before attempt 2 started
        (JobStatus.PENDING, 0, 1, False),
        (JobStatus.RETRYING, 1, 2, False),  # attempt 1 failed; attempt 2 never started
        (JobStatus.RUNNING, 2, 2, True),  # it ran: its worker may have died of it
        (JobStatus.RUNNING, 1, 2, True),
        (JobStatus.RETRYING, 2, 2, True),  # a later write than this attempt's start
        (JobStatus.QUEUED, 3, 2, True),  # a state newer than this attempt: do not guess
        (JobStatus.SUCCEEDED, 1, 1, False),  # done: the run path acks it without a run
        (JobStatus.FAILED, 1, 1, True),
        (JobStatus.CANCELLED, 1, 1, True),
    ],
)
async def test_a_returned_attempt_is_a_suspect_unless_its_state_shows_it_never_ran(
    status: JobStatus | None, state_attempt: int, attempt: int, suspect: bool
) -> None:
    backend = MemoryResultBackend()
    if status is not None:
        await backend.set_state(JobState("job", status, attempt=state_attempt), ttl=60)
    assert await JobStates(backend, ttl=60).may_have_started("job", attempt) is suspect


async def test_without_a_backend_every_returned_job_is_a_suspect() -> None:
    assert await JobStates(None, ttl=60).may_have_started("job", 1)
