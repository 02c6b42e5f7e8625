"""A job's arguments as they may be shown and stored: the task's ``redact=`` applied, bounded.

One place for both the dashboard (which shows a dead letter's body) and the job states
(which keep the arguments of a job looked up by id): a value named by ``redact=`` is replaced
by `REDACTED` before anything is stored, so the result backend never holds it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aqueue._serialization import dumps

if TYPE_CHECKING:
    from aqueue._tasks.task import Task

__all__ = ["MAX_STORED_ARGUMENTS", "REDACTED", "TRUNCATED", "redacted", "stored_arguments"]

#: What a redacted argument shows (a whole redacted call: ``redact=True``).
REDACTED = "[redacted]"
#: Bytes of a job's arguments kept in its state; longer JSON is cut and ends with `TRUNCATED`.
MAX_STORED_ARGUMENTS = 8192
#: The marker that ends stored arguments that were cut (then they are no longer JSON).
TRUNCATED = "… [truncated: {size} bytes in all]"


def redacted(task: Task[Any, Any] | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> object:
    """``{"args": [...], "kwargs": {...}}`` with the values ``redact=`` names replaced.

    Positional arguments are matched to the task's parameters by position; with
    ``redact=True`` the whole call is `REDACTED`. A task unknown here (None) hides nothing.
    """
    redact = task.options.redact if task is not None else ()
    if redact is True:
        return REDACTED
    if not redact or task is None:
        return {"args": list(args), "kwargs": dict(kwargs)}
    names = _positional_names(task.fn)
    hidden = set(redact)
    shown_args = [
        REDACTED if index < len(names) and names[index] in hidden else value
        for index, value in enumerate(args)
    ]
    shown_kwargs = {key: REDACTED if key in hidden else value for key, value in kwargs.items()}
    return {"args": shown_args, "kwargs": shown_kwargs}


@functools.cache
def _positional_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The names positional arguments bind to (read once per function: every enqueue asks)."""
    return tuple(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def stored_arguments(
    task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any], body: bytes | None = None
) -> str:
    """The JSON text of a job's `redacted` arguments, at most `MAX_STORED_ARGUMENTS` bytes.

    `body` is the job's encoded arguments when at hand: a task that redacts nothing stores
    it as it is, without encoding them again. Past the bound the text is cut (at a character
    boundary) and ends with `TRUNCATED`.
    """
    if body is not None and not task.options.redact:
        text = body
    else:
        text = dumps(redacted(task, args, kwargs))
    if len(text) <= MAX_STORED_ARGUMENTS:
        return text.decode()
    marker = TRUNCATED.format(size=len(text))
    keep = MAX_STORED_ARGUMENTS - len(marker.encode())
    return text[:keep].decode(errors="ignore") + marker
