"""Middleware: an onion of ``async def mw(job, call_next)`` around every job run.

A middleware sees both sides of a run in one function, so it can use ``try/finally`` and
``async with`` (spans, timers, timeouts). It must return what ``call_next()`` returned, or
raise.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from aqueue._tasks.context import JobContext

CallNext: TypeAlias = Callable[[], Awaitable[object]]
Middleware: TypeAlias = Callable[[JobContext, CallNext], Awaitable[object]]


def build_chain(middleware: Sequence[Middleware], job: JobContext, innermost: CallNext) -> CallNext:
    """Wrap `innermost` in `middleware`; the first middleware is the outermost layer."""
    call = innermost
    for layer in reversed(middleware):
        call = functools.partial(layer, job, call)
    return call
