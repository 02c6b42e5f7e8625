"""``aqueue outbox-relay``: publish the outbox table's committed rows, then delete them."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import anyio
import typer

from aqueue._cli.common import AppArgument, app, load_queue, run
from aqueue._cli.telemetry import ObservabilityError, configure_logging, require_extra
from aqueue._client.queue import TaskQueue
from aqueue.exceptions import ConfigurationError

if TYPE_CHECKING:  # imported when the command runs: SQLAlchemy is an optional dependency
    from aqueue._worker.worker import Worker
    from aqueue.contrib.outbox import OutboxRelay
    from aqueue.contrib.sqlalchemy import SqlAlchemyOutboxStore

#: Makes the relay of a worker's queue (``aqueue worker --outbox-database``).
RelayFactory = Callable[[TaskQueue], "tuple[OutboxRelay, SqlAlchemyOutboxStore]"]

#: The environment variable read when ``--database`` is not given.
DATABASE_ENV = "AQUEUE_OUTBOX_DATABASE_URL"

logger = logging.getLogger("aqueue.outbox")


@app.command("outbox-relay")
def outbox_relay(
    app_path: AppArgument,
    database: Annotated[
        str | None,
        typer.Option(
            help=f"The outbox's database, e.g. postgresql+asyncpg://user@host/db "
            f"(default: ${DATABASE_ENV}).",
        ),
    ] = None,
    table: Annotated[
        str, typer.Option(help="The outbox table, 'table' or 'schema.table'.")
    ] = "aqueue_outbox",
    batch: Annotated[int, typer.Option(help="Rows per database transaction.", min=1)] = 100,
    interval: Annotated[
        float, typer.Option(help="Seconds to wait when no row is waiting.", min=0)
    ] = 0.5,
    once: Annotated[
        bool, typer.Option("--once", help="Publish what is waiting, then exit.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Relay the transactional outbox: publish committed rows (confirmed), delete them.

    Several relays may run on one table: each locks its batch (FOR UPDATE SKIP LOCKED). A
    relay killed mid-batch leaves its rows, and the next publishes them again with the same
    job ids (see the outbox page for who deduplicates).
    """
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    url = database or os.environ.get(DATABASE_ENV, "")
    if not url:
        raise typer.BadParameter(
            f"give the outbox's database URL (or set ${DATABASE_ENV})", param_hint="--database"
        )
    try:
        require_extra("outbox-relay", "sqlalchemy", ["sqlalchemy", "asyncpg"])
    except ObservabilityError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from aqueue.contrib.outbox import OutboxRelay
    from aqueue.contrib.sqlalchemy import SqlAlchemyOutboxStore, check_url, split_table_name

    try:
        split_table_name(table)
        check_url(url)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--database/--table") from exc
    queue = load_queue(app_path)
    configure_logging(log_level, "text")
    try:
        store = SqlAlchemyOutboxStore(url, table=table)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--database") from exc
    relay = OutboxRelay(queue, store, batch_size=batch, interval=interval)
    run(_relay, queue, relay, store, once)


async def _relay(
    queue: TaskQueue, relay: OutboxRelay, store: SqlAlchemyOutboxStore, once: bool
) -> None:
    try:
        if once:
            published = await relay.run_until_empty()
            logger.info("outbox relay: published %d jobs; none waits", published)
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, tg.cancel_scope)
            logger.info("outbox relay started")
            await relay.run()
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
        stats = relay.statistics
        logger.info(
            "outbox relay stopped: %d published, %d not confirmed", stats.published, stats.failed
        )


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            # the batch in flight rolls back: its rows are published again by the next relay
            scope.cancel()
            return


def outbox_relay_factory(database: str | None, table: str) -> RelayFactory | None:
    """What ``aqueue worker --outbox-database`` relays with; None without the option.

    Raises:
        typer.BadParameter: the extra is missing, or a malformed table name or URL.
    """
    if not database:
        return None
    try:
        require_extra("--outbox-database", "sqlalchemy", ["sqlalchemy", "asyncpg"])
    except ObservabilityError as exc:
        raise typer.BadParameter(str(exc), param_hint="--outbox-database") from exc
    from aqueue.contrib.outbox import OutboxRelay
    from aqueue.contrib.sqlalchemy import SqlAlchemyOutboxStore, check_url, split_table_name

    try:
        split_table_name(table)
        check_url(database)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--outbox-database/--outbox-table") from exc

    def make(queue: TaskQueue) -> tuple[OutboxRelay, SqlAlchemyOutboxStore]:
        store = SqlAlchemyOutboxStore(database, table=table)
        return OutboxRelay(queue, store), store

    return make


async def relay_once_started(worker: Worker, make: RelayFactory) -> None:
    """Relay the outbox beside the worker, on its session, once it consumes; until cancelled."""
    await worker.wait_started()
    relay, store = make(worker.queue)
    logger.info("outbox relay started in the worker")
    try:
        await relay.run()
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
