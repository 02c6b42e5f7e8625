"""``aqueue dlq``: list, show, replay and purge dead letters.

Which broker and prefix: ``--app module:queue`` takes both from the application's TaskQueue
(its URLs, prefix, queue settings), and then --url/--prefix may not be given. Without --app,
each of --url and --prefix comes from the option, else from $AQUEUE_URL / $AQUEUE_PREFIX, else
the defaults.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import sys
from collections.abc import Sequence
from typing import Annotated
from urllib.parse import urlsplit

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

from aqueue._cli.common import app, console, load_queue, queue_names, run
from aqueue._cli.output import JSON_VERSION, dead_letter_json, id_table, print_json
from aqueue._client.deadletters import DeadLetter, ReplayResult
from aqueue._client.queue import TaskQueue
from aqueue._core.config import DEFAULT_PREFIX, DEFAULT_URL
from aqueue._core.topology import TopologyNames, validate_name
from aqueue._serialization import decode_arguments
from aqueue._transport import redact_url
from aqueue.exceptions import AqueueError, ConfigurationError, DecodeError, QueueNotFound

# -- aqueue dlq ------------------------------------------------------------------------------
#
# Which broker and prefix: `--app module:queue` takes both from the application's TaskQueue
# (its URLs, prefix, queue settings), and then --url/--prefix may not be given. Without
# --app, each of --url and --prefix comes from the option, else from $AQUEUE_URL /
# $AQUEUE_PREFIX, else the defaults (amqp://guest:guest@localhost/, aqueue).

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


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (see the CLI docs).")
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
                f"{redact_url(one)!r} is not an AMQP URL (amqp://user:password@host:port/vhost)",
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
    json_output: JsonOption = False,
) -> None:
    """List the dead letters of a queue, oldest first; they stay where they are, in order."""
    name = _queue_name(queue)
    letters, total, where = run(_dlq_list, broker_queue(app_path, url, prefix), name, limit)
    if json_output:
        print_json(
            {
                "version": JSON_VERSION,
                "dead_letter_queue": where,
                "total": total,
                "dead_letters": [dead_letter_json(letter, full=False) for letter in letters],
            }
        )
        return
    if not letters:
        console.print(f"no dead letters in {where}")
        return
    ids = [letter.job_id or "-" for letter in letters]
    table = id_table("job id", ids, "task", "reason", "attempts", "when (UTC)", "error")
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
    json_output: JsonOption = False,
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
    names = names or queue_names(queue)
    if not names:
        raise typer.BadParameter("the app has no tasks, so no queues: give --queue")
    found = run(_dlq_find, queue, job_id.strip(), names)
    if found is None:
        console.print(f"no dead letter with job id {escape(job_id)!r} in {', '.join(names)}")
        raise typer.Exit(1)
    if json_output:
        print_json({"version": JSON_VERSION, **dead_letter_json(found, full=True)})
        return
    _print_dead_letter(found)


async def _dlq_find(queue: TaskQueue, job_id: str, names: Sequence[str]) -> DeadLetter | None:
    missing = []
    async with queue.session() as session:
        for name in names:
            dlq = queue.dead_letters(name)
            try:
                found = await dlq.find(job_id)
            except QueueNotFound:
                missing.append(dlq.broker_name)
                continue
            if found is not None:
                return found
        prefix = session.names.prefix
    if len(missing) == len(names):
        raise QueueNotFound(
            f"none of these dead-letter queues exists: {', '.join(missing)} (check the queue "
            f"names and the prefix {prefix!r})"
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
            history.add_row(
                str(failure.attempt),
                _when(failure.failed_at),
                escape(f"{failure.type}: {failure.message}"),
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
    task_queue = broker_queue(app_path, url, prefix)
    result, where = run(_dlq_replay, task_queue, name, task, limit)
    left = f"; {result.skipped} left in place" if result.skipped else ""
    if task is not None and result.replayed == 0:
        # a misspelt task name would otherwise look like a replay that worked
        others = f" (the {result.skipped} there are other tasks')" if result.skipped else ""
        console.print(
            f"no dead letters of task {escape(task)!r} in {where}{others}"
            f"{_task_hint(task_queue, task) if app_path is not None else ''}",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(f"replayed {result.replayed} dead letter(s) from {where} to {name!r}{left}")


def _task_hint(queue: TaskQueue, task: str) -> str:
    """``; the app has no task 'x' (did you mean 'y'?)`` when the app does not know `task`."""
    if task in queue.tasks:
        return ""
    close = difflib.get_close_matches(task, list(queue.tasks), n=1)
    return f"; the app has no task {task!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


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
        count, where = run(_dlq_count, task_queue, name)
        if count == 0:
            console.print(f"no dead letters in {where}")
            return
        if not typer.confirm(f"Delete {count} dead letter(s) from {where}, for good?"):
            console.print("nothing purged")
            raise typer.Exit(1)
    purged, where = run(_dlq_purge, task_queue, name)
    console.print(f"purged {purged} dead letter(s) from {where}")


async def _dlq_count(queue: TaskQueue, name: str) -> tuple[int, str]:
    async with queue:
        dlq = queue.dead_letters(name)
        return await dlq.count(), dlq.broker_name


async def _dlq_purge(queue: TaskQueue, name: str) -> tuple[int, str]:
    async with queue:
        dlq = queue.dead_letters(name)
        return await dlq.purge(), dlq.broker_name
