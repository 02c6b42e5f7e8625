"""Exceptions as text, for logs, dead letters and results: never raises (pure, no I/O).

A task's exception is data from user code: its ``__str__`` may raise, return a huge string,
or its traceback may not format. Settling a job must not depend on any of that.
"""

from __future__ import annotations

import traceback

#: Characters of a traceback kept in a dead letter or a result.
TRACEBACK_TAIL_CHARS = 4000
#: Characters of an exception message kept in a dead letter's header.
MESSAGE_CHARS = 1000


def qualified_name(cls: type) -> str:
    """``module.Qualname``, or just the name for builtins."""
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?")
    return str(name) if module in (None, "builtins") else f"{module}.{name}"


def error_message(error: BaseException, limit: int | None = None) -> str:
    """``str(error)``, or a placeholder naming its type when that raises."""
    try:
        text = str(error)
    except Exception as exc:  # noqa: BLE001 - user code: any failure becomes a placeholder
        text = f"<{qualified_name(type(error))}: str() raised {qualified_name(type(exc))}>"
    return text if limit is None else text[:limit]


def traceback_tail(error: BaseException) -> str:
    """The last `TRACEBACK_TAIL_CHARS` characters of the formatted traceback."""
    try:
        text = "".join(traceback.format_exception(error))
    except Exception:  # noqa: BLE001 - a traceback that will not format loses its text only
        text = f"{qualified_name(type(error))}: {error_message(error)} (traceback unavailable)"
    return text[-TRACEBACK_TAIL_CHARS:]
