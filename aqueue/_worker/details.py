"""What each state of an attempt records besides its status: arguments, times, earlier failures.

The job screen's facts (see `aqueue._results.states.JobDetails`). Made once per attempt, and
only when its states are stored: the arguments redacted by the task's ``redact=`` before they
go anywhere near the result backend.
"""

from __future__ import annotations

from typing import Any

from aqueue._core.types import Headers
from aqueue._core.wire import JobHeaders, trace_id
from aqueue._results.base import FailedAttempt
from aqueue._results.states import JobDetails
from aqueue._tasks.context import JobContext
from aqueue._tasks.redact import stored_arguments
from aqueue._tasks.task import Task


def attempt_details(
    task: Task[Any, Any], context: JobContext, headers: JobHeaders, raw: Headers, body: bytes
) -> JobDetails:
    """An attempt's details: its redacted arguments, times, the headers' failure history."""
    return JobDetails(
        arguments=stored_arguments(task, context.args, context.kwargs, body),
        enqueued_at=context.enqueued_at or None,
        started_at=context.started_at,
        history=tuple(
            FailedAttempt(f.attempt, f.type, f.message, "", f.at_ms / 1000) for f in headers.history
        ),
        trace_id=trace_id(raw),
    )
