"""``aqueue stats``: the live workers and their queues, from heartbeats and passive declares.

It listens to the control exchange in a queue of its own (exclusive, auto-delete,
server-named) for a little more than one heartbeat interval, reads each work queue's ready
messages and consumers twice (at the start and the end of that window: the change in ready
gives the arrival rate), and prints what `aqueue._core.heartbeats.aggregate` makes of it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from aqueue._cli.common import AppArgument, app, console, load_queue, queue_names, run
from aqueue._client.fair import fair_queues
from aqueue._client.monitor import HeartbeatCollector, limiter_states, queue_facts, with_rates
from aqueue._client.queue import TaskQueue
from aqueue._core.heartbeats import (
    HEARTBEAT_BINDING,
    HEARTBEAT_INTERVAL,
    StatsView,
    WorkerRow,
    aggregate,
    control_exchange,
)
from aqueue._results import ResultBackend
from aqueue._worker.heartbeats import control_topology
from aqueue.exceptions import AqueueError, TransportError

#: ``--json`` output's ``version``: fields are only ever added within one version.
STATS_VERSION = 1
#: The collection window is this many heartbeat intervals (plus `WINDOW_SLACK` seconds), so
#: that every live worker has sent at least one heartbeat in it.
WINDOW_INTERVALS = 1.2
WINDOW_SLACK = 0.3


@app.command()
def stats(
    app_path: AppArgument,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON (one object per refresh with --watch).")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float,
        typer.Option(
            help="The workers' heartbeat interval in seconds: stats listens for a little more "
            "than one, and --watch refreshes at this pace.",
            min=0.05,
            max=3600,
            envvar="AQUEUE_HEARTBEAT_INTERVAL",
        ),
    ] = HEARTBEAT_INTERVAL,
) -> None:
    """Show every live worker and its queues: ready, unacked, consumers, rates, waits."""
    queue = load_queue(app_path)
    try:
        run(_stats, queue, interval, json_output, watch)
    except typer.Exit as exc:
        if watch and exc.exit_code == 130:  # Ctrl-C is how --watch ends
            raise typer.Exit(0) from None
        raise


async def _stats(queue: TaskQueue, interval: float, json_output: bool, watch: bool) -> None:
    window = interval * WINDOW_INTERVALS + WINDOW_SLACK
    async with queue.session() as session:
        transport, names = session.transport, session.names
        # declared here too: a reader may start before any worker ever has
        await transport.declare(control_topology(names))
        collector = HeartbeatCollector(names.prefix)
        listener = await transport.listen(
            control_exchange(names.prefix), HEARTBEAT_BINDING, collector
        )
        live: Live | None = None
        try:
            known = queue_names(queue)
            began = time.monotonic()
            fair = fair_queues(queue.tasks.values())
            before = await queue_facts(transport, names, known, fair)
            while True:
                await anyio.sleep(max(0.0, window - (time.monotonic() - began)))
                now = time.time()
                heard = {q for seen in collector.seen for q in seen.heartbeat.queues}
                after = await queue_facts(transport, names, sorted(set(known) | heard), fair)
                facts = with_rates(before, after, time.monotonic() - began)
                view = aggregate(collector.seen, facts, now=now, queues=known)
                limits = await limiter_rows(queue, session.states.backend)
                collector.forget_old(now)
                if json_output:
                    document = stats_json(view, now=now, window=window, limiters=limits)
                    print(json.dumps(document), flush=True)
                elif watch:
                    if live is None:
                        live = Live(_tables(view, limits), console=Console(), auto_refresh=False)
                        live.start()
                    live.update(_tables(view, limits), refresh=True)
                else:
                    Console().print(_tables(view, limits))
                if not watch:
                    return
                began, before, window = time.monotonic(), after, interval
        finally:
            if live is not None:
                live.stop()
            with anyio.CancelScope(shield=True):
                try:
                    await listener.cancel()
                except AqueueError as exc:
                    console.print(f"could not cancel the heartbeat listener: {escape(str(exc))}")


async def limiter_rows(queue: TaskQueue, backend: ResultBackend | None) -> list[dict[str, Any]]:
    """The state of every flow limit of the app's tasks (`limiter_states`); [] if unreadable."""
    try:
        return await limiter_states(queue, backend)
    except TransportError as exc:
        console.print(f"could not read the limiters: {escape(str(exc))}")
        return []


def stats_json(
    view: StatsView, *, now: float, window: float, limiters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The ``--json`` document (documented on the CLI page; `STATS_VERSION`)."""
    return {
        "version": STATS_VERSION,
        "generated_at": round(now, 3),
        "window": round(window, 3),
        "queues": [
            {
                "queue": row.queue,
                "ready": row.ready,
                "unacked": row.unacked,
                "consumers": row.consumers,
                "workers": row.workers,
                "in_per_s": _round(row.in_per_s),
                "out_per_s": _round(row.out_per_s),
                "wait_p50": _round(row.wait_p50),
                "wait_p95": _round(row.wait_p95),
                "oldest_wait": _round(row.oldest_wait),
            }
            for row in view.queues
        ],
        "workers": [
            {
                "worker_id": row.worker_id,
                "host": row.host,
                "pid": row.pid,
                "queues": list(row.queues),
                "concurrency": row.concurrency,
                "in_flight": row.in_flight,
                "busy_ratio": round(row.busy_ratio, 4),
                "last_seen": round(row.last_seen, 3),
                "started_at": round(row.started_at, 3),
                "decisions": {
                    queue: [decision.to_payload() for decision in decisions]
                    for queue, decisions in row.decisions.items()
                },
            }
            for row in view.workers
        ],
        "limiters": limiters or [],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _cell(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return ""  # unknown: blank, not a misleading 0
    if isinstance(value, int):
        return str(value)
    return f"{value:.1f}{unit}" if unit else f"{value:.1f}"


def last_scaling(worker: WorkerRow) -> str:
    """The newest autoscaler decision of any of the worker's queues, as a table cell."""
    newest = [(decisions[0], queue) for queue, decisions in worker.decisions.items() if decisions]
    if not newest:
        return ""
    decision, queue = max(newest, key=lambda item: item[0].at)
    when = dt.datetime.fromtimestamp(decision.at, dt.UTC).strftime("%H:%M:%S")
    return f"{queue}: {decision.action} {decision.before} -> {decision.after} at {when} UTC"


def _tables(view: StatsView, limiters: list[dict[str, Any]] | None = None) -> Group:
    queues = Table(
        "queue",
        "ready",
        "unacked",
        "consumers",
        "in/s",
        "out/s",
        "wait p50",
        "wait p95",
        "oldest wait",
        title="queues",
    )
    for row in view.queues:
        queues.add_row(
            escape(row.queue),
            _cell(row.ready),
            str(row.unacked),
            _cell(row.consumers),
            _cell(row.in_per_s),
            _cell(row.out_per_s),
            _cell(row.wait_p50, "s"),
            _cell(row.wait_p95, "s"),
            _cell(row.oldest_wait, "s"),
        )
    workers = Table(
        "worker",
        "host",
        "pid",
        "queues",
        "concurrency",
        "busy",
        "last seen",
        "last scaling",
        title="workers",
    )
    for worker in view.workers:
        workers.add_row(
            escape(worker.worker_id),
            escape(worker.host),
            str(worker.pid),
            escape(", ".join(worker.queues)),
            str(worker.concurrency),
            f"{worker.in_flight} ({worker.busy_ratio:.0%})",
            f"{worker.last_seen:.1f}s ago",
            escape(last_scaling(worker)),
        )
    if not view.workers:
        workers.caption = "no live worker sent a heartbeat"
    if not limiters:
        return Group(queues, workers)
    limits = Table("task", "key", "limit", "now", title="limiters")
    for limiter in limiters:
        now = (
            f"{limiter['value']:.1f}s reserved ahead"
            if limiter["kind"] == "rate"
            else f"{limiter['value']:.0f} running"
        )
        key = limiter["key"] or ""
        limits.add_row(escape(limiter["task"]), escape(key), escape(str(limiter["limit"])), now)
    return Group(queues, workers, limits)
