"""``aqueue worker`` and ``aqueue queues``."""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import os
import signal
import socket
import sys
import traceback
from contextlib import ExitStack
from functools import partial
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

from aqueue._cli.common import (
    AppArgument,
    app,
    aqueue_error,
    load_queue,
    print_error,
    queue_names,
)
from aqueue._cli.outbox import RelayFactory, outbox_relay_factory, relay_once_started
from aqueue._cli.output import JSON_VERSION, print_json
from aqueue._cli.schedules import run_schedules
from aqueue._cli.supervisor import Supervisor
from aqueue._cli.telemetry import (
    LOG_FORMATS,
    ObservabilityError,
    configure_logging,
    worker_observability,
)
from aqueue._client.fair import fair_queues, ready_info
from aqueue._client.queue import TaskQueue
from aqueue._core.config import Autoscale, QueueLimits, WorkerSettings, parse_queues
from aqueue._core.supervision import ProcessScaling
from aqueue._worker.worker import Worker
from aqueue.exceptions import AqueueError, ConfigurationError

_WORKER = WorkerSettings()  # the defaults, stated once there


@app.command()
def worker(
    ctx: typer.Context,
    app_path: AppArgument,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Comma-separated logical queues, each NAME[:CONCURRENCY][:threads=N]"
            "[:prefetch=N] (e.g. emails:50,reports:4:threads=4); a bare name takes "
            "--concurrency, and each queue has min(its concurrency, --threads) threads of its "
            "own unless it says. With --autoscale, NAME:min=N:max=N sets a queue's own "
            "bounds and NAME:CONCURRENCY keeps that queue fixed.",
        ),
    ] = None,
    declare: Annotated[
        bool,
        typer.Option(
            "--declare",
            help="Consume from -Q queues that no task of the app names (one used only through "
            "with_options(queue=...)): without it they are refused, as a typo would be.",
        ),
    ] = False,
    concurrency: Annotated[
        int, typer.Option(help="Jobs run at once, per queue.", min=1)
    ] = _WORKER.concurrency,
    prefetch: Annotated[
        int | None, typer.Option(help="Unacked deliveries per queue (default: concurrency).", min=1)
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds to let running jobs finish on SIGTERM.", min=0)
    ] = _WORKER.grace,
    threads: Annotated[
        int,
        typer.Option(
            help="Threads for plain (sync) tasks, per queue: each queue has min(its "
            "concurrency, this) of its own.",
            min=1,
        ),
    ] = _WORKER.threads,
    crash_limit: Annotated[
        int,
        typer.Option(
            help="Dead-letter a job (reason 'crashed') whose deliveries came back unacked this "
            "many times: it kills its worker.",
            min=1,
        ),
    ] = _WORKER.crash_limit,
    lease_after: Annotated[
        float,
        typer.Option(
            help="With a result backend: ack a job still running after this many seconds under "
            "a renewed lease, so it may outlive RabbitMQ's consumer_timeout (0: never).",
            min=0,
        ),
    ] = _WORKER.lease_after or 0.0,
    lease_ttl: Annotated[
        float, typer.Option(help="Seconds a lease lasts unless renewed.", min=1)
    ] = _WORKER.lease_ttl,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between heartbeats on the control exchange (aqueue stats reads "
            "them); readers drop a worker silent for 3 of them.",
            min=0.05,
            max=3600,
            envvar="AQUEUE_HEARTBEAT_INTERVAL",
        ),
    ] = _WORKER.heartbeat_interval,
    autoscale: Annotated[
        str | None,
        typer.Option(
            help="MIN:MAX: grow and shrink each queue's concurrency (and prefetch, unless "
            "--prefetch is given) between MIN and MAX to hold the p95 wait under --target-wait; "
            "replaces --concurrency.",
            metavar="MIN:MAX",
        ),
    ] = None,
    target_wait: Annotated[
        float | None,
        typer.Option(
            help="Seconds of p95 wait (due to start) --autoscale holds each queue under.", min=0
        ),
    ] = None,
    loop: Annotated[
        str,
        typer.Option(
            help="The event loop: asyncio, or uvloop (pip install 'aqueue-rabbitmq[speed]'; "
            "docs/benchmarks.md has what it changes).",
            metavar="asyncio|uvloop",
        ),
    ] = "asyncio",
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
            "variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...). Needs "
            "aqueue-rabbitmq[otel].",
            envvar="AQUEUE_OTEL",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on http://ADDRESS:PORT/metrics. Needs "
            "aqueue-rabbitmq[metrics].",
            min=0,
            max=65535,
            envvar="AQUEUE_METRICS_PORT",
        ),
    ] = None,
    metrics_address: Annotated[
        str, typer.Option(help="The address the metrics endpoint listens on.")
    ] = "0.0.0.0",  # noqa: S104 - a worker in a container is scraped from outside
    no_scheduler: Annotated[
        bool,
        typer.Option(
            "--no-scheduler",
            help="Do not run the app's schedules in this worker (by default every worker "
            "takes part in the scheduler election; exactly one leads).",
        ),
    ] = False,
    processes: Annotated[
        str,
        typer.Option(
            help="Run this many worker processes under one supervisor, which restarts one "
            "that dies and forwards SIGTERM and SIGINT to all (1: this process is the worker). "
            "MIN:MAX (with --autoscale): add a process while every one is CPU-bound, retire "
            "one when none has been for a minute. With --metrics-port P, process i serves on "
            "P + i.",
            metavar="N|MIN:MAX",
        ),
    ] = "1",
    outbox_database: Annotated[
        str | None,
        typer.Option(
            help="Also relay the transactional outbox of this database (postgresql+asyncpg://"
            "...) in this worker, as 'aqueue outbox-relay' does. Needs aqueue-rabbitmq"
            "[sqlalchemy].",
            envvar="AQUEUE_OUTBOX_DATABASE_URL",
        ),
    ] = None,
    outbox_table: Annotated[
        str, typer.Option(help="The outbox table, 'table' or 'schema.table'.")
    ] = "aqueue_outbox",
) -> None:
    """Run jobs from the queues until SIGTERM or SIGINT (a second signal stops at once)."""
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"unknown log format {log_format!r}: text or json", param_hint="--log-format"
        )
    backend_options = _loop_options(loop)
    chosen = _queues(queues)
    scaling = _autoscale(autoscale, target_wait)
    count, process_scaling = _processes(processes, autoscaling=scaling is not None)
    relay = outbox_relay_factory(outbox_database, outbox_table)  # checked before connecting
    queue = load_queue(app_path)
    if not declare:
        _check_known(queue, chosen)
    try:
        settings = WorkerSettings(
            queues=chosen,
            concurrency=concurrency,
            prefetch=prefetch,
            grace=grace,
            threads=threads,
            crash_limit=crash_limit,
            lease_after=lease_after or None,
            lease_ttl=lease_ttl,
            heartbeat_interval=heartbeat_interval,
            autoscale=scaling,
        )
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    configure_logging(log_level, log_format)
    if count > 1 or process_scaling is not None:  # all checked above, before any spawn
        supervisor = Supervisor(partial(_child_argv, ctx), count, scaling=process_scaling)
        raise typer.Exit(anyio.run(supervisor.run))
    running = Worker(queue, settings)
    try:
        _observed_run(
            running,
            otel=otel,
            metrics_port=metrics_port,
            metrics_address=metrics_address,
            scheduler=not no_scheduler and bool(queue.schedules),
            backend_options=backend_options,
            relay=relay,
        )
    except typer.Exit as exc:
        _exit_now_if_threads_abandoned(running, exc.exit_code)
        raise
    except BaseException:
        if running.abandoned():  # a traceback first, then do not hang on the threads
            traceback.print_exc()
            _exit_now_if_threads_abandoned(running, 1)
        raise
    # A stop on a signal exits 0 even when sync jobs were abandoned: each one is logged as an
    # error, and its delivery, left unacked, is back in the queue for another worker.
    _exit_now_if_threads_abandoned(running, 0)


def _loop_options(loop: str) -> dict[str, object]:
    """The options of anyio's asyncio backend for ``--loop``; checked before connecting."""
    if loop == "asyncio":
        return {}
    if loop != "uvloop":
        raise typer.BadParameter(
            f"unknown event loop {loop!r}: asyncio or uvloop", param_hint="--loop"
        )
    if importlib.util.find_spec("uvloop") is None:
        raise typer.BadParameter(
            "uvloop is not installed: pip install 'aqueue-rabbitmq[speed]'", param_hint="--loop"
        )
    return {"use_uvloop": True}


_Q = "'--queues' / '-Q'"


def _queues(text: str | None) -> tuple[str | QueueLimits, ...]:
    """``-Q``, read and checked before anything is loaded; an empty one is refused."""
    if text is None:
        return ()
    try:
        chosen = parse_queues(text)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint=_Q) from exc
    if not chosen:
        raise typer.BadParameter(
            f"{text!r} names no queue: give one or more, or leave -Q out to consume from "
            "every queue of the app's tasks",
            param_hint=_Q,
        )
    return chosen


def _check_known(queue: TaskQueue, chosen: tuple[str | QueueLimits, ...]) -> None:
    """Refuse ``-Q`` names that no task of the app names (a typo, most often).

    Such a queue would be declared (for good: durable) and consumed from, and the worker
    would idle on it forever.
    """
    known = queue_names(queue)
    names = [item if isinstance(item, str) else item.name for item in chosen]
    unknown = [name for name in names if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise typer.BadParameter(
        f"no task of the app uses queue {', '.join(hints)}; its tasks use "
        f"{', '.join(map(repr, known)) or 'no queue'}. Give --declare to consume from it "
        "anyway (a queue named only by with_options(queue=...))",
        param_hint=_Q,
    )


def _child_argv(ctx: typer.Context, index: int) -> list[str]:
    """The command line of worker process `index`: this command's, without ``--processes``.

    Rebuilt from the parsed options (not from `sys.argv`, which is not this command's when it
    is called from Python): each is passed explicitly, values from the environment included,
    so every child runs with the same settings as the supervisor checked.
    """
    argv = [sys.executable, "-m", "aqueue", "worker", ctx.params["app_path"]]
    for param in ctx.command.params:
        name = param.name
        value = ctx.params.get(name or "")
        if name in ("app_path", "processes") or value is None:
            continue
        flag = max(param.opts, key=len)  # the long form
        if isinstance(value, bool):  # a flag: --otel
            if value:
                argv.append(flag)
            continue
        if name == "metrics_port" and value:  # one port each (0 stays "any free port")
            value += index
        argv += [flag, str(value)]
    return argv


def _processes(text: str, *, autoscaling: bool) -> tuple[int, ProcessScaling | None]:
    """``--processes N`` or ``MIN:MAX``, checked before anything is loaded or spawned."""
    low, sep, high = text.partition(":")
    numbers = (low, high) if sep else (low,)
    if not all(n.strip().isascii() and n.strip().isdigit() for n in numbers):
        raise typer.BadParameter(
            f"{text!r} is not N or MIN:MAX (whole numbers)", param_hint="--processes"
        )
    if not sep:
        if int(low) < 1:
            raise typer.BadParameter("must be at least 1", param_hint="--processes")
        return int(low), None
    if not autoscaling:
        # the children's autoscalers are what report a CPU-bound queue
        raise typer.BadParameter("MIN:MAX needs --autoscale", param_hint="--processes")
    try:
        scaling = ProcessScaling(int(low), int(high))
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--processes") from exc
    return scaling.minimum, scaling


def _autoscale(bounds: str | None, target_wait: float | None) -> Autoscale | None:
    """``--autoscale MIN:MAX`` and ``--target-wait``, checked before anything is loaded."""
    if bounds is None:
        if target_wait is not None:
            raise typer.BadParameter("needs --autoscale MIN:MAX", param_hint="--target-wait")
        return None
    if target_wait is None:
        raise typer.BadParameter("needs --target-wait SECONDS", param_hint="--autoscale")
    low, sep, high = bounds.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise typer.BadParameter(
            f"{bounds!r} is not MIN:MAX (two whole numbers)", param_hint="--autoscale"
        )
    try:
        return Autoscale(int(low), int(high), target_wait)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--autoscale") from exc


def _observed_run(
    worker: Worker,
    *,
    otel: bool,
    metrics_port: int | None,
    metrics_address: str,
    scheduler: bool,
    backend_options: dict[str, object] | None = None,
    relay: RelayFactory | None = None,
) -> None:
    """Run `worker` until it stops, with the observability the options ask for around it."""
    with ExitStack() as stack:  # its exit flushes the spans still to export
        try:
            stack.enter_context(
                worker_observability(
                    worker.queue,
                    otel=otel,
                    metrics_port=metrics_port,
                    metrics_address=metrics_address,
                    identity=lambda: _identity(worker),
                    target_wait=worker.settings.autoscale.target_wait
                    if worker.settings.autoscale is not None
                    else None,
                )
            )
        except ObservabilityError as exc:  # before connecting, like any other bad option
            print_error(exc)
            raise typer.Exit(2) from exc
        try:
            anyio.run(_run_worker, worker, scheduler, relay, backend_options=backend_options)
        except (AqueueError, BaseExceptionGroup) as exc:
            error = aqueue_error(exc)
            if error is None:
                raise
            print_error(error)
            raise typer.Exit(1) from exc


def _identity(worker: Worker) -> dict[str, object]:
    """Who answers ``/scale``: the id of its heartbeats (None before it runs), host, pid."""
    heartbeats = worker.heartbeats
    return {
        "id": heartbeats.worker_id if heartbeats is not None else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def _exit_now_if_threads_abandoned(worker: Worker, code: int) -> None:
    """End the process with `code` at once if sync jobs still run in abandoned threads.

    A Python thread cannot be killed, and interpreter exit joins every non-daemon thread
    (anyio's worker threads are not daemons): without this, a worker whose grace ran out
    while a sync job ran would live on until that function returned, however short
    ``--grace`` is. By now the worker has logged each abandoned job, its connections are
    closed (the unsettled deliveries are back with the broker at once, not after a TCP
    timeout) and its telemetry is flushed; `os._exit` skips atexit handlers and buffered
    output, so the log handlers and stdio are flushed here first.
    """
    abandoned = worker.abandoned()
    if not abandoned:
        return  # a normal exit: no thread to wait for
    logging.getLogger("aqueue.worker").warning(
        "exiting with status %d without waiting for %d abandoned thread(s)", code, len(abandoned)
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing more to do
            stream.flush()
    os._exit(code)


async def _run_worker(worker: Worker, scheduler: bool, relay: RelayFactory | None = None) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, worker)
        if scheduler:
            tg.start_soon(_schedules_once_started, worker)
        if relay is not None:
            tg.start_soon(relay_once_started, worker, relay)
        await worker.run()
        tg.cancel_scope.cancel()


async def _schedules_once_started(worker: Worker) -> None:
    """Run the app's schedules beside the worker, on its session, once it consumes."""
    await worker.wait_started()  # its session is open: the scheduler shares it
    await run_schedules(worker.queue)


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
def list_queues(
    app_path: AppArgument,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout (see the CLI docs).")
    ] = False,
) -> None:
    """Show ready messages in every work queue and dead-letter queue of the app's tasks."""
    queue = load_queue(app_path)
    try:
        rows = anyio.run(_queue_sizes, queue)
    except AqueueError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc
    if json_output:
        print_json(
            {
                "version": JSON_VERSION,
                "queues": [
                    {"queue": name, "ready": ready, "dead_letters": dead}
                    for name, ready, dead in rows
                ],
            }
        )
        return
    table = Table("queue", "ready", "dead letters")
    for name, ready, dead in rows:
        table.add_row(name, str(ready), str(dead))
    Console().print(table)


async def _queue_sizes(queue: TaskQueue) -> list[tuple[str, int, int]]:
    rows = []
    async with queue.session() as session:
        count, names = session.transport.message_count, session.names
        fair = fair_queues(queue.tasks.values())
        for name in queue_names(queue):
            info = await ready_info(session.transport, names, name, fair=name in fair)
            ready = info.ready
            dead = await count(names.dead_letter_queue(name))
            rows.append((name, ready, dead))
    return rows
