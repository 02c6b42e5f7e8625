"""``aqueue scheduler`` (run the election, lead when elected) and ``aqueue schedules`` (list)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import time
from collections.abc import Mapping
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.table import Table

from aqueue._cli.common import AppArgument, app, console, load_queue, run
from aqueue._cli.telemetry import LOG_FORMATS, configure_logging
from aqueue._client.monitor import schedules_document
from aqueue._client.queue import TaskQueue
from aqueue._core.heartbeats import control_exchange
from aqueue._core.schedules import STATUS_BINDING, Schedule, SchedulerStatus
from aqueue._scheduler.scheduler import STATUS_INTERVAL, Scheduler, scheduler_topology
from aqueue._serialization import loads
from aqueue.exceptions import AqueueError, DecodeError

#: ``aqueue schedules --json`` output's ``version``.
SCHEDULES_VERSION = 1


@app.command()
def scheduler(
    app_path: AppArgument,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[str, typer.Option(help="text, or json (one object per line).")] = "text",
) -> None:
    """Run the app's schedules: take part in the election; the leader enqueues every tick.

    Any number may run (and every ``aqueue worker`` runs one unless --no-scheduler): exactly
    one leads at a time. Stops on SIGTERM or SIGINT, handing the lead over at once.
    """
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"unknown log format {log_format!r}: text or json", param_hint="--log-format"
        )
    queue = load_queue(app_path)
    if not queue.schedules:
        raise typer.BadParameter(f"{app_path!r} has no schedules (@queue.periodic, queue.schedule)")
    configure_logging(log_level, log_format)
    run(_run_scheduler, queue)


async def _run_scheduler(queue: TaskQueue) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, tg.cancel_scope)
        await run_schedules(queue)


async def run_schedules(queue: TaskQueue) -> None:
    """Run a `Scheduler` for the queue's schedules until cancelled (``aqueue worker`` too)."""
    async with queue.session() as session:
        await Scheduler(session, queue.schedules).run()


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logging.getLogger("aqueue.scheduler").warning(
                "received %s: stopping", signal.Signals(signum).name
            )
            scope.cancel()
            return


@app.command()
def schedules(
    app_path: AppArgument,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    interval: Annotated[
        float,
        typer.Option(
            help="The schedulers' notice interval in seconds: listens for a little more.",
            min=0.05,
            max=3600,
        ),
    ] = STATUS_INTERVAL,
) -> None:
    """List the app's schedules: trigger, next and last run, and which scheduler leads."""
    queue = load_queue(app_path)
    heard = run(_listen, queue, interval * 1.2 + 0.3)
    now = time.time()
    doc = schedules_json(queue.schedules, heard, now=now)
    if json_output:
        print(json.dumps(doc))
        return
    leader = doc["leader"]
    console.print(
        f"leader: {leader['scheduler_id']} (pid {leader['pid']} on {leader['host']})"
        if leader
        else "leader: none heard (no scheduler runs, or none has been elected yet)"
    )
    table = Table("schedule", "task", "when", "misfire", "overlap", "next run", "last run")
    for row in doc["schedules"]:
        table.add_row(
            row["name"],
            row["task"],
            row["trigger"],
            row["misfire"],
            str(row["overlap"]).lower(),
            row["next_run"],
            row["last_run"] or "-",
        )
    Console().print(table)


async def _listen(queue: TaskQueue, window: float) -> list[SchedulerStatus]:
    heard: list[SchedulerStatus] = []

    def collect(_routing_key: str, body: bytes) -> None:
        try:
            status = SchedulerStatus.from_payload(loads(body))
        except (ValueError, DecodeError):
            return
        if status.prefix == queue_prefix:
            heard.append(status)

    async with queue.session() as session:
        queue_prefix = session.names.prefix
        await session.transport.declare(scheduler_topology(session.names))
        listener = await session.transport.listen(
            control_exchange(queue_prefix), STATUS_BINDING, collect
        )
        try:
            await anyio.sleep(window)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await listener.cancel()
                except AqueueError as exc:
                    console.print(f"could not cancel the listener: {exc}")
    return heard


def schedules_json(
    schedules: Mapping[str, Schedule], heard: list[SchedulerStatus], *, now: float
) -> dict[str, Any]:
    """The ``--json`` document (documented on the CLI page; `SCHEDULES_VERSION`)."""
    return {"version": SCHEDULES_VERSION, **schedules_document(schedules, heard, now=now)}


def _iso(instant: float) -> str:
    return dt.datetime.fromtimestamp(instant, dt.UTC).isoformat(timespec="seconds")
