"""The ``aqueue`` command line (typer): the only place that configures logging.

Bad input (an app path that does not import, a bad option value) fails before any
connection is opened, with exit code 2; an error from the broker exits with code 1.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from typing import Annotated, TypeVar
from urllib.parse import urlsplit

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from aqueue._cli.telemetry import (
    LOG_FORMATS,
    LogFormat,
    ObservabilityError,
    configure_logging,
    worker_observability,
)
from aqueue._client.deadletters import DeadLetter, ReplayResult
from aqueue._client.queue import TaskQueue
from aqueue._core.config import WorkerSettings
from aqueue._core.topology import TopologyNames, validate_name
from aqueue._serialization import decode_arguments
from aqueue._worker.worker import Worker
from aqueue.exceptions import AqueueError, ConfigurationError, DecodeError

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


def _where(exc: BaseException) -> str:
    """Where an exception was raised (its innermost frame), as `` (at file:line)``."""
    if isinstance(exc, SyntaxError):
        return ""  # its message names the file and line already
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _configure_logging(level: str, log_format: LogFormat = "text") -> None:
    configure_logging(level, log_format)


@app.command()
def worker(
    app_path: AppArgument,
    queues: Annotated[
        str | None, typer.Option("--queues", "-Q", help="Comma-separated logical queues.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Jobs run at once, per queue.", min=1)] = 100,
    prefetch: Annotated[
        int | None, typer.Option(help="Unacked deliveries per queue (default: concurrency).", min=1)
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds to let running jobs finish on SIGTERM.", min=0)
    ] = 30.0,
    threads: Annotated[int, typer.Option(help="Threads for plain (sync) tasks.", min=1)] = 40,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[
        str,
        typer.Option(
            help="text, or json (one object per line); lines about a job carry its job_id, "
            "task, attempt and queue."
        ),
    ] = "text",
    otel: Annotated[
        bool,
        typer.Option(
            "--otel",
            help="Export traces and metrics over OTLP/HTTP, configured by the standard OTEL_* "
            "variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...). Needs aqueue[otel].",
            envvar="AQUEUE_OTEL",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on http://ADDRESS:PORT/metrics. Needs aqueue[metrics].",
            min=0,
            max=65535,
            envvar="AQUEUE_METRICS_PORT",
        ),
    ] = None,
    metrics_address: Annotated[
        str, typer.Option(help="The address the metrics endpoint listens on.")
    ] = "0.0.0.0",  # noqa: S104 - a worker in a container is scraped from outside
) -> None:
    """Run jobs from the queues until SIGTERM or SIGINT (a second signal stops at once)."""
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"unknown log format {log_format!r}: text or json", param_hint="--log-format"
        )
    queue = load_queue(app_path)
    names = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else ()
    try:
        settings = WorkerSettings(
            queues=names, concurrency=concurrency, prefetch=prefetch, grace=grace, threads=threads
        )
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _configure_logging(log_level, log_format)
    with ExitStack() as stack:  # its exit flushes the spans still to export
        try:
            stack.enter_context(
                worker_observability(
                    queue, otel=otel, metrics_port=metrics_port, metrics_address=metrics_address
                )
            )
        except ObservabilityError as exc:  # before connecting, like any other bad option
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        try:
            anyio.run(_run_worker, Worker(queue, settings))
        except (AqueueError, BaseExceptionGroup) as exc:
            error = _aqueue_error(exc)
            if error is None:
                raise
            console.print(f"[red]error:[/red] {escape(str(error))}")
            raise typer.Exit(1) from exc


def _aqueue_error(exc: BaseException) -> AqueueError | None:
    """The AqueueError in `exc`, looking inside exception groups (task groups raise those)."""
    if isinstance(exc, AqueueError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _aqueue_error(inner)
            if found is not None:
                return found
    return None


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


# -- aqueue dlq ------------------------------------------------------------------------------
#
# Which broker and prefix: `--app module:queue` takes both from the application's TaskQueue
# (its URLs, prefix, queue settings), and then --url/--prefix may not be given. Without
# --app, each of --url and --prefix comes from the option, else from $AQUEUE_URL /
# $AQUEUE_PREFIX, else the defaults (amqp://guest:guest@localhost/, aqueue).

T = TypeVar("T")

DEFAULT_URL = "amqp://guest:guest@localhost/"
DEFAULT_PREFIX = "aqueue"
#: Replays of more dead letters than this show a progress bar.
PROGRESS_THRESHOLD = 100

dlq_app = typer.Typer(
    name="dlq",
    help=(
        "Dead letters: list, show, replay and purge them. Say which broker with --app "
        "module:queue (URL and prefix from the app), or with --url and --prefix (defaults: "
        f"$AQUEUE_URL, else {DEFAULT_URL}; $AQUEUE_PREFIX, else {DEFAULT_PREFIX})."
    ),
    short_help="Dead letters: list, show, replay and purge them.",
    no_args_is_help=True,
)
app.add_typer(dlq_app)

QueueArgument = Annotated[
    str, typer.Argument(help="The logical queue, as in @queue.task(queue=...).", show_default=False)
]
AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        help="The TaskQueue, as 'package.module:attribute': broker URL(s), prefix and queue "
        "settings come from it. Not with --url or --prefix.",
        show_default=False,
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help=f"Broker URL; several, comma-separated, for a cluster. Default: $AQUEUE_URL, "
        f"else {DEFAULT_URL}",
        show_default=False,
    ),
]
PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        help=f"Prefix of the queue names. Default: $AQUEUE_PREFIX, else {DEFAULT_PREFIX}",
        show_default=False,
    ),
]


def broker_queue(app_path: str | None, url: str | None, prefix: str | None) -> TaskQueue:
    """The TaskQueue a ``dlq`` command talks through, from --app or --url/--prefix (no I/O).

    Raises:
        typer.BadParameter: both --app and --url/--prefix, a URL that is not AMQP, a bad
            prefix, or an app that does not load.
    """
    if app_path is not None:
        if url is not None or prefix is not None:
            given = " and ".join(
                o for o, v in (("--url", url), ("--prefix", prefix)) if v is not None
            )
            raise typer.BadParameter(
                f"--app takes the broker URL and prefix from the app: give --app, or {given}, "
                "not both",
                param_hint="--app",
            )
        return load_queue(app_path)
    url_hint = "--url" if url is not None else "AQUEUE_URL"
    url = url if url is not None else os.environ.get("AQUEUE_URL") or DEFAULT_URL
    urls = [u.strip() for u in url.split(",") if u.strip()]
    for one in urls or [url]:
        if urlsplit(one).scheme not in ("amqp", "amqps") or not urlsplit(one).hostname:
            raise typer.BadParameter(
                f"{one!r} is not an AMQP URL (amqp://user:password@host:port/vhost)",
                param_hint=url_hint,
            )
    prefix_hint = "--prefix" if prefix is not None else "AQUEUE_PREFIX"
    prefix = prefix if prefix is not None else os.environ.get("AQUEUE_PREFIX") or DEFAULT_PREFIX
    try:
        TopologyNames(prefix)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint=prefix_hint) from exc
    return TaskQueue(urls, prefix=prefix, name="aqueue-dlq")


def _queue_name(name: str, hint: str = "QUEUE") -> str:
    try:
        return validate_name(name)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


def _run(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """Run a coroutine function; an aqueue error (the broker's, mostly) exits 1, clearly."""
    try:
        return anyio.run(fn, *args)
    except AqueueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("interrupted: what was not done is still where it was")
        raise typer.Exit(130) from None


def _when(moment: dt.datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _error(letter: DeadLetter, width: int = 60) -> str:
    if letter.exception_type is None:
        return "-"
    text = f"{letter.exception_type}: {letter.exception_message or ''}".strip()
    return text if len(text) <= width else text[: width - 1] + "…"


@dlq_app.command("list")
def dlq_list(
    queue: QueueArgument,
    limit: Annotated[int, typer.Option(help="Show at most this many, oldest first.", min=1)] = 100,
    app_path: AppOption = None,
    url: UrlOption = None,
    prefix: PrefixOption = None,
) -> None:
    """List the dead letters of a queue, oldest first; they stay where they are, in order."""
    name = _queue_name(queue)
    letters, total, where = _run(_dlq_list, broker_queue(app_path, url, prefix), name, limit)
    if not letters:
        console.print(f"no dead letters in {where}")
        return
    table = Table("job id", "task", "reason", "attempts", "when (UTC)", "error")
    for letter in letters:
        table.add_row(
            escape(letter.job_id or "-"),
            escape(letter.task or "-"),
            escape(letter.reason),
            "-" if letter.attempts is None else str(letter.attempts),
            _when(letter.last_failed_at),
            escape(_error(letter)),
        )
    Console().print(table)
    more = f"; showing the first {len(letters)} (--limit)" if total > len(letters) else ""
    console.print(f"{total} dead letter(s) in {where}{more}")


async def _dlq_list(queue: TaskQueue, name: str, limit: int) -> tuple[list[DeadLetter], int, str]:
    async with queue:
        dlq = queue.dead_letters(name)
        total = await dlq.count()
        return await dlq.list(limit), total, dlq.broker_name


@dlq_app.command("show")
def dlq_show(
    job_id: Annotated[str, typer.Argument(help="The job id.", show_default=False)],
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-q",
            help="A queue to search (repeatable). Default with --app: every queue of its tasks.",
            show_default=False,
        ),
    ] = None,
    app_path: AppOption = None,
    url: UrlOption = None,
    prefix: PrefixOption = None,
) -> None:
    """Show everything about one dead letter: why, when, its history, traceback and arguments."""
    if not job_id.strip():
        raise typer.BadParameter("the job id is empty", param_hint="JOB_ID")
    names = [_queue_name(q, "--queue") for q in queues or ()]
    if not names and app_path is None:
        raise typer.BadParameter(
            "say where to look: --queue QUEUE (repeatable), or --app to search every queue of "
            "the app's tasks",
            param_hint="--queue",
        )
    queue = broker_queue(app_path, url, prefix)
    names = names or sorted(queue.registry.queues())
    if not names:
        raise typer.BadParameter("the app has no tasks, so no queues: give --queue")
    found = _run(_dlq_find, queue, job_id.strip(), names)
    if found is None:
        console.print(f"no dead letter with job id {escape(job_id)!r} in {', '.join(names)}")
        raise typer.Exit(1)
    _print_dead_letter(found)


async def _dlq_find(queue: TaskQueue, job_id: str, names: Sequence[str]) -> DeadLetter | None:
    missing = []
    async with queue:
        for name in names:
            dlq = queue.dead_letters(name)
            try:
                found = await dlq.find(job_id)
            except ConfigurationError:
                missing.append(dlq.broker_name)
                continue
            if found is not None:
                return found
    if len(missing) == len(names):
        raise ConfigurationError(
            f"none of these dead-letter queues exists: {', '.join(missing)} (check the queue "
            f"names and the prefix {queue.names.prefix!r})"
        )
    return None


def _print_dead_letter(letter: DeadLetter) -> None:
    out = Console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [
        ("job id", letter.job_id or "-"),
        ("task", letter.task or "-"),
        ("queue", letter.queue),
        ("reason", f"{letter.reason} (dead-lettered by the {letter.source})"),
        ("attempts", "-" if letter.attempts is None else str(letter.attempts)),
        ("enqueued", _when(letter.enqueued_at)),
        ("first failure", _when(letter.first_failed_at)),
        ("last failure", _when(letter.last_failed_at)),
        ("error", _error(letter, width=1000)),
        ("arguments", _arguments(letter.body)),
    ]
    for key, value in rows:
        grid.add_row(key, escape(value))
    out.print(grid)
    if letter.history:
        history = Table("attempt", "failed at (UTC)", "error", title="history")
        for failure in letter.history:
            at = dt.datetime.fromtimestamp(failure.at_ms / 1000, dt.UTC)
            history.add_row(
                str(failure.attempt), _when(at), escape(f"{failure.type}: {failure.message}")
            )
        out.print(history)
    if letter.traceback:
        out.print("[bold]traceback[/bold]")
        out.print(escape(letter.traceback.rstrip()), highlight=False)


def _arguments(body: bytes) -> str:
    try:
        args, kwargs = decode_arguments(body)
    except DecodeError:
        return f"(not JSON arguments: {body[:200]!r})"
    parts = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 2000 else text[:1999] + "…"


@dlq_app.command("replay")
def dlq_replay(
    queue: QueueArgument,
    task: Annotated[
        str | None,
        typer.Option(help="Replay only the jobs of this task; the others stay, in order."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Replay at most this many, oldest first.", min=1)
    ] = None,
    app_path: AppOption = None,
    url: UrlOption = None,
    prefix: PrefixOption = None,
) -> None:
    """Send dead letters back to their work queue, each confirmed by the broker before removal.

    At-least-once: a replay killed at any moment loses nothing, and run again finishes the
    job; the one job that was confirmed but not yet removed when it died runs twice.
    """
    name = _queue_name(queue)
    if task is not None and not task.strip():
        raise typer.BadParameter("the task name is empty", param_hint="--task")
    result, where = _run(_dlq_replay, broker_queue(app_path, url, prefix), name, task, limit)
    left = f"; {result.skipped} left in place" if result.skipped else ""
    console.print(f"replayed {result.replayed} dead letter(s) from {where} to {name!r}{left}")


async def _dlq_replay(
    queue: TaskQueue, name: str, task: str | None, limit: int | None
) -> tuple[ReplayResult, str]:
    bar = _ReplayBar()
    try:
        async with queue:
            dlq = queue.dead_letters(name)
            return await dlq.replay(task=task, limit=limit, on_progress=bar.update), dlq.broker_name
    except AqueueError:
        bar.stop()
        if bar.done.replayed:
            console.print(
                f"{bar.done.replayed} dead letter(s) were replayed before the error; "
                "the others are still in the dead-letter queue"
            )
        raise
    finally:
        bar.stop()


class _ReplayBar:
    """A progress bar on stderr, shown once a replay looks at more than `PROGRESS_THRESHOLD`."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self.done = ReplayResult(0, 0)

    def update(self, done: ReplayResult, total: int) -> None:
        self.done = done
        if total <= PROGRESS_THRESHOLD:
            return
        if self._progress is None or self._task is None:
            self._progress = Progress(
                TextColumn("replaying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._progress.start()
            self._task = self._progress.add_task("replay", total=total)
        self._progress.update(self._task, completed=done.replayed + done.skipped)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@dlq_app.command("purge")
def dlq_purge(
    queue: QueueArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
    app_path: AppOption = None,
    url: UrlOption = None,
    prefix: PrefixOption = None,
) -> None:
    """Delete every dead letter of a queue, for good (asks first unless --yes)."""
    name = _queue_name(queue)
    if not yes and not sys.stdin.isatty():
        raise typer.BadParameter(
            "refusing to purge without --yes: there is no terminal to ask for confirmation",
            param_hint="--yes",
        )
    task_queue = broker_queue(app_path, url, prefix)
    if not yes:
        count, where = _run(_dlq_count, task_queue, name)
        if count == 0:
            console.print(f"no dead letters in {where}")
            return
        if not typer.confirm(f"Delete {count} dead letter(s) from {where}, for good?"):
            console.print("nothing purged")
            raise typer.Exit(1)
    purged, where = _run(_dlq_purge, task_queue, name)
    console.print(f"purged {purged} dead letter(s) from {where}")


async def _dlq_count(queue: TaskQueue, name: str) -> tuple[int, str]:
    async with queue:
        dlq = queue.dead_letters(name)
        return await dlq.count(), dlq.broker_name


async def _dlq_purge(queue: TaskQueue, name: str) -> tuple[int, str]:
    async with queue:
        dlq = queue.dead_letters(name)
        return await dlq.purge(), dlq.broker_name


def main() -> None:
    """Entry point of the ``aqueue`` script."""
    app()
