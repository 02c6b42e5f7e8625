"""What every ``aqueue`` command shares: the typer app, loading the app's queue, errors.

Bad input (an app path that does not import, a bad option value) fails before any
connection is opened, with exit code 2; an error from the broker exits with code 1.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import anyio
import typer
from rich.console import Console
from rich.markup import escape

from aqueue._client.queue import TaskQueue
from aqueue.exceptions import AqueueError

T = TypeVar("T")

app = typer.Typer(
    name="aqueue",
    help="aqueue: an asyncio-native task queue on RabbitMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

AppArgument = Annotated[
    str, typer.Argument(help="Where the TaskQueue lives, as 'package.module:attribute'.")
]


def load_queue(path: str) -> TaskQueue:
    """Import ``module:attribute`` and check that it is a TaskQueue.

    Raises:
        typer.BadParameter: the path is malformed, does not import, or is not a TaskQueue.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise typer.BadParameter(f"{path!r} must look like 'package.module:attribute'")
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the app's own code failed at import: bad input too
        raise typer.BadParameter(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}{_where(exc)}"
        ) from exc
    queue = getattr(module, attribute, None)
    if not isinstance(queue, TaskQueue):
        raise typer.BadParameter(f"{path!r} is {type(queue).__name__}, not an aqueue.TaskQueue")
    return queue


def queue_names(queue: TaskQueue) -> list[str]:
    """The logical queues of the app's tasks, sorted."""
    return sorted({task.options.queue for task in queue.tasks.values()})


def _where(exc: BaseException) -> str:
    """Where an exception was raised (its innermost frame), as `` (at file:line)``."""
    if isinstance(exc, SyntaxError):
        return ""  # its message names the file and line already
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def aqueue_error(exc: BaseException) -> AqueueError | None:
    """The AqueueError in `exc`, looking inside exception groups (task groups raise those)."""
    if isinstance(exc, AqueueError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = aqueue_error(inner)
            if found is not None:
                return found
    return None


def print_error(error: BaseException | str) -> None:
    """``error: ...`` on stderr as one line (never folded at the terminal's width)."""
    console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)


def run(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """Run a coroutine function; an aqueue error (the broker's, mostly) exits 1, clearly."""
    try:
        return anyio.run(fn, *args)
    except AqueueError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("interrupted: what was not done is still where it was")
        raise typer.Exit(130) from None
