"""What the dashboard shows of a job: its arguments (redacted per task), attempts, trace (pure)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from aqueue._core.wire import trace_id
from aqueue._results import JobState
from aqueue._serialization import loads
from aqueue._tasks.redact import REDACTED, redacted
from aqueue._tasks.task import Task

__all__ = [
    "REDACTED",
    "AttemptRow",
    "arguments_text",
    "fmt_time",
    "job_attempts",
    "stored_arguments_text",
    "trace_id",
]


def arguments_text(task: Task[Any, Any] | None, body: bytes) -> str:
    """A job body's arguments as indented JSON, with the task's ``redact=`` applied.

    A task unknown to this app shows its arguments as they are; a body that is not the
    ``{"args": [...], "kwargs": {...}}`` of the wire format shows as "(not JSON arguments)".
    It is text: the page escapes it like everything else.
    """
    try:
        decoded = loads(body)
    except ValueError:
        return "(not JSON arguments)"
    if not isinstance(decoded, dict):
        return "(not JSON arguments)"
    args, kwargs = decoded.get("args", []), decoded.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return "(not JSON arguments)"
    return json.dumps(redacted(task, args, kwargs), indent=2, ensure_ascii=False)


def fmt_time(value: dt.datetime | float | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (Unix seconds or an aware datetime); "" if None."""
    if value is None:
        return ""
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromtimestamp(value, dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One line of the job screen's attempts: a failed one, or the state's own attempt."""

    attempt: int
    outcome: str
    at: float | None
    type: str = ""
    message: str = ""
    traceback: str = ""


def job_attempts(state: JobState) -> list[AttemptRow]:
    """A job's attempts, oldest first.

    Each failed one its state keeps, then the attempt the state is about when that one did
    not fail (running, succeeded, ...).
    """
    rows = [
        AttemptRow(f.attempt, "failed", f.at, f.type, f.message, f.traceback) for f in state.history
    ]
    if state.attempt and all(f.attempt != state.attempt for f in state.history):
        at = state.finished_at or state.started_at or state.updated_at or None
        rows.append(AttemptRow(state.attempt, state.status.value, at))
    return rows


def stored_arguments_text(text: str | None) -> str | None:
    """A state's stored arguments, indented when they are whole JSON.

    Cut ones are shown as they are, ending with their marker.
    """
    if text is None:
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
