"""The ``aqueue`` command line (typer): the only place that configures logging.

Bad input (an app path that does not import, a bad option value) fails before any
connection is opened, with exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import traceback
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

from aqueue._config import WorkerSettings
from aqueue._queue import TaskQueue
from aqueue._worker import Worker
from aqueue.exceptions import AqueueError, ConfigurationError

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
    except Exception as exc:  # noqa: BLE001 - the app's own code failed at import: bad input too
        raise typer.BadParameter(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}{_where(exc)}"
        ) from exc
    queue = getattr(module, attribute, None)
    if not isinstance(queue, TaskQueue):
        raise typer.BadParameter(f"{path!r} is {type(queue).__name__}, not an aqueue.TaskQueue")
    return queue


def _where(exc: BaseException) -> str:
    """Where an exception was raised (its innermost frame), as `` (at file:line)``."""
    if isinstance(exc, SyntaxError):
        return ""  # its message names the file and line already
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def worker(
    app_path: AppArgument,
    queues: Annotated[
        str | None, typer.Option("--queues", "-Q", help="Comma-separated logical queues.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Jobs run at once.", min=1)] = 100,
    prefetch: Annotated[
        int | None, typer.Option(help="Unacked deliveries per queue (default: concurrency).", min=1)
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds to let running jobs finish on SIGTERM.", min=0)
    ] = 30.0,
    threads: Annotated[int, typer.Option(help="Threads for plain (sync) tasks.", min=1)] = 40,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run jobs from the queues until SIGTERM or SIGINT (a second signal stops at once)."""
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    queue = load_queue(app_path)
    names = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else ()
    try:
        settings = WorkerSettings(
            queues=names, concurrency=concurrency, prefetch=prefetch, grace=grace, threads=threads
        )
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _configure_logging(log_level)
    try:
        anyio.run(_run_worker, Worker(queue, settings))
    except AqueueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


async def _run_worker(worker: Worker) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, worker)
        await worker.run()
        tg.cancel_scope.cancel()


async def _stop_on_signals(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        first = True
        async for signum in signals:
            logging.getLogger("aqueue.worker").warning(
                "received %s: %s",
                signal.Signals(signum).name,
                "stopping gracefully" if first else "stopping now",
            )
            worker.stop(now=not first)
            first = False


@app.command("queues")
def list_queues(app_path: AppArgument) -> None:
    """Show ready messages in every work queue and dead-letter queue of the app's tasks."""
    queue = load_queue(app_path)
    try:
        rows = anyio.run(_queue_sizes, queue)
    except AqueueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    table = Table("queue", "ready", "dead letters")
    for name, ready, dead in rows:
        table.add_row(name, str(ready), str(dead))
    Console().print(table)


async def _queue_sizes(queue: TaskQueue) -> list[tuple[str, int, int]]:
    rows = []
    async with queue:
        for name in sorted(queue.registry.queues()):
            ready = await queue.transport.message_count(queue.names.work_queue(name))
            dead = await queue.transport.message_count(queue.names.dead_letter_queue(name))
            rows.append((name, ready, dead))
    return rows


def main() -> None:
    """Entry point of the ``aqueue`` script."""
    app()
