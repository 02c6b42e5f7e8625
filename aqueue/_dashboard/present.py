"""What the dashboard shows of a job: its arguments, redacted per task, and its trace (pure)."""

from __future__ import annotations

import datetime as dt
import inspect
import json
from collections.abc import Mapping
from typing import Any

from aqueue._core.types import HeaderValue
from aqueue._serialization import loads
from aqueue._tasks.task import Task

__all__ = ["REDACTED", "arguments_text", "fmt_time", "trace_id"]

#: What a redacted argument shows.
REDACTED = "[redacted]"


def _redact(task: Task[Any, Any] | None, args: list[Any], kwargs: dict[str, Any]) -> object:
    redact = task.options.redact if task is not None else ()
    if redact is True:
        return REDACTED
    if not redact or task is None:
        return {"args": args, "kwargs": kwargs}
    names = [
        p.name
        for p in inspect.signature(task.fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    hidden = set(redact)
    shown_args = [
        REDACTED if index < len(names) and names[index] in hidden else value
        for index, value in enumerate(args)
    ]
    shown_kwargs = {key: REDACTED if key in hidden else value for key, value in kwargs.items()}
    return {"args": shown_args, "kwargs": shown_kwargs}


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
    return json.dumps(_redact(task, args, kwargs), indent=2, ensure_ascii=False)


def trace_id(headers: Mapping[str, HeaderValue]) -> str | None:
    """The W3C trace id of a message's ``traceparent`` header, if it has a valid one."""
    value = headers.get("traceparent")
    if not isinstance(value, str):
        return None
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or set(parts[1]) - set("0123456789abcdef"):
        return None
    return parts[1] if parts[1] != "0" * 32 else None


def fmt_time(value: dt.datetime | float | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (Unix seconds or an aware datetime); "" if None."""
    if value is None:
        return ""
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromtimestamp(value, dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
