"""What every ``aqueue`` command shares: the typer app, loading the app's queue, errors.

Bad input (an app path that does not import, a bad option value) fails before any
connection is opened, with exit code 2; an error from the broker exits with code 1.
"""

from __future__ import annotations

import difflib
import importlib
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
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

#: The aqueue package's folder: frames in it are aqueue's, not the app's.
_PACKAGE = Path(__file__).resolve().parents[1]

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
    queues = sorted(name for name, value in vars(module).items() if isinstance(value, TaskQueue))
    there = f"; it has {', '.join(map(repr, queues))}" if queues else ""
    if not hasattr(module, attribute):
        close = difflib.get_close_matches(attribute, queues, n=1)
        hint = f"; did you mean {module_name}:{close[0]}?" if close else there
        raise typer.BadParameter(f"module {module_name!r} has no attribute {attribute!r}{hint}")
    queue = getattr(module, attribute)
    if not isinstance(queue, TaskQueue):
        raise typer.BadParameter(
            f"{path!r} is {type(queue).__name__}, not an aqueue.TaskQueue{there}"
        )
    return queue


def queue_names(queue: TaskQueue) -> list[str]:
    """The logical queues of the app's tasks, sorted."""
    return sorted({task.options.queue for task in queue.tasks.values()})


def _where(exc: BaseException) -> str:
    """Where an exception was raised (its innermost frame), as `` (at file:line)``."""
    if isinstance(exc, SyntaxError):
        return ""  # its message names the file and line already
    frames = traceback.extract_tb(exc.__traceback__)
    # the app's line, not aqueue's: a misspelt task option is raised inside aqueue
    own = [frame for frame in frames if not _in_aqueue(frame.filename)]
    where = own[-1] if own else frames[-1] if frames else None
    return f" (at {where.filename}:{where.lineno})" if where is not None else ""


def _in_aqueue(filename: str) -> bool:
    """Whether `filename` is a module of the aqueue package (or of the import machinery)."""
    path = Path(filename)
    return path.is_relative_to(_PACKAGE) or filename.startswith("<frozen ")


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
