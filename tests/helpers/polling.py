"""Waiting on a condition that has no event: poll it until a deadline.

Only for what a test cannot await directly (a file another process writes, a queue's message
count, a line in a subprocess's log). Where an event exists (``Worker.wait_until``), use it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

POLL_INTERVAL = 0.02


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
    details: Callable[[], str] | None = None,
) -> float:
    """Check `condition` every `interval` seconds until it holds; return the seconds it took.

    Raises:
        TimeoutError: it still did not hold after `timeout` seconds; the message names `what`
            and ends with ``details()`` (a log tail, the current count) when given.
    """
    began = anyio.current_time()
    deadline = began + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return anyio.current_time() - began
        if anyio.current_time() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        await anyio.sleep(interval)


def read_lines(path: Path) -> list[str]:
    """The complete lines of a file another process appends to (``[]`` while it is missing).

    A line still being written (no newline yet) is left out.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1]  # the part after the last newline is empty or incomplete
