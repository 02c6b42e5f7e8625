"""The transactional outbox on PostgreSQL with SQLAlchemy (async).

The one module SQLAlchemy enters (Alembic's ``op`` is passed in by the migration).

- `outbox_table`: the table, as SQLAlchemy metadata (``schema.name`` or ``name``).
- `create_outbox` / `drop_outbox`: the migration's steps, for an Alembic revision
  (``op``), so the schema is created by a migration, never at import.
- `SqlAlchemyOutbox`: ``await queue.outbox(session).enqueue(task, ...)`` adds the job's row
  to the caller's transaction (`AsyncSession` or `AsyncConnection`): committed, the relay
  publishes it; rolled back, nothing is published.
- `SqlAlchemyOutboxStore`: the relay's side (``FOR UPDATE SKIP LOCKED``, then delete).
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Identity,
    LargeBinary,
    MetaData,
    Table,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from aqueue._client.queue import TaskQueue
from aqueue._results.handles import Job
from aqueue._tasks.task import Task
from aqueue.contrib.outbox import DEFAULT_TABLE, OutboxRow, PublishRows, job_handle, make_row
from aqueue.exceptions import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")


def split_table_name(name: str) -> tuple[str | None, str]:
    """``"schema.table"`` or ``"table"`` as (schema or None, table).

    Raises:
        ConfigurationError: an empty name or part, or more than one dot.
    """
    given: object = name
    if not isinstance(given, str):
        raise ConfigurationError(f"the outbox table name must be text, not {name!r}")
    parts = name.split(".")
    if len(parts) > 2 or not all(part.strip() for part in parts):
        raise ConfigurationError(
            f"the outbox table must be named 'table' or 'schema.table', not {name!r}"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _columns() -> list[Column[Any]]:
    return [
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("job_id", Text, nullable=False),
        Column("task", Text, nullable=False),
        Column("queue", Text, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("options", Text, nullable=False, server_default="{}"),
        Column("enqueued_at_ms", BigInteger, nullable=False),
        Column("eta_ms", BigInteger, nullable=True),
        Column("expires_at_ms", BigInteger, nullable=True),
        Column("headers", Text, nullable=False, server_default="{}"),
    ]


@functools.cache
def outbox_table(name: str = DEFAULT_TABLE) -> Table:
    """The outbox table (in its own `MetaData`), named ``"table"`` or ``"schema.table"``.

    Raises:
        ConfigurationError: a malformed name.
    """
    schema, table = split_table_name(name)
    return Table(table, MetaData(schema=schema), *_columns())


def create_outbox(op: Any, name: str = DEFAULT_TABLE) -> None:
    """The migration's upgrade: create the outbox table (call it from an Alembic revision).

    ``op`` is ``alembic.op`` (an ``alembic.operations.Operations``)::

        def upgrade() -> None:
            create_outbox(op)
    """
    schema, table = split_table_name(name)
    op.create_table(table, *_columns(), schema=schema)


def drop_outbox(op: Any, name: str = DEFAULT_TABLE) -> None:
    """The migration's downgrade: drop the outbox table."""
    schema, table = split_table_name(name)
    op.drop_table(table, schema=schema)


class SqlAlchemyOutbox:
    """Enqueue into the outbox table in the caller's SQLAlchemy transaction.

    Args:
        queue: the TaskQueue whose tasks are enqueued (it need not be open).
        session: the caller's `AsyncSession` or `AsyncConnection`; its transaction holds
            the row, so its commit is the enqueue.
        table: the outbox table's name (``"table"`` or ``"schema.table"``).

    Raises:
        ConfigurationError: `session` is neither, or a malformed table name.
    """

    def __init__(
        self,
        queue: TaskQueue,
        session: AsyncSession | AsyncConnection,
        *,
        table: str = DEFAULT_TABLE,
    ) -> None:
        if not isinstance(session, AsyncSession | AsyncConnection):
            raise ConfigurationError(
                "queue.outbox() needs an SQLAlchemy AsyncSession or AsyncConnection, "
                f"not {session!r}"
            )
        self._queue = queue
        self._session = session
        self._table = outbox_table(table)

    async def enqueue(self, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Add a job of `task` to the transaction; it is published after the commit.

        Returns:
            The job's handle (its id is final; its state is unknown until a relay publishes
            it).

        Raises:
            ConfigurationError, EncodeError: as `TaskQueue.enqueue`; nothing was written.
        """
        return await self._add(make_row(self._queue, task, args, kwargs))

    async def enqueue_in(
        self, delay: float | dt.timedelta, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        """As `enqueue`, due `delay` after it is written (the delay waits in the broker)."""
        return await self._add(make_row(self._queue, task, args, kwargs, delay=delay))

    async def enqueue_at(
        self, eta: dt.datetime, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        """As `enqueue`, due at `eta` (a timezone-aware datetime)."""
        return await self._add(make_row(self._queue, task, args, kwargs, eta=eta))

    async def _add(self, row: OutboxRow) -> Job[Any]:
        await self._session.execute(self._table.insert().values(**row.columns()))
        return job_handle(self._queue, row)


class SqlAlchemyOutboxStore:
    """The relay's side of the outbox table, on PostgreSQL.

    Args:
        engine: an `AsyncEngine`, or a database URL (``postgresql+asyncpg://...``; a bare
            ``postgresql://`` URL gets the asyncpg driver).
        table: the outbox table's name.

    Raises:
        ConfigurationError: a malformed table name, or a URL SQLAlchemy cannot use.
    """

    def __init__(self, engine: AsyncEngine | str, *, table: str = DEFAULT_TABLE) -> None:
        self._owned = not isinstance(engine, AsyncEngine)
        self._engine = engine if isinstance(engine, AsyncEngine) else _engine(engine)
        self._table = outbox_table(table)

    async def relay_batch(self, limit: int, publish: PublishRows) -> int:
        """Lock up to `limit` rows, publish them, delete the confirmed: one transaction.

        Rows are taken in id order, ``FOR UPDATE SKIP LOCKED``. A relay that dies before the
        commit deletes nothing (the database rolls its transaction back), so its rows are
        published again.
        """
        table = self._table
        query = select(table).order_by(table.c.id).limit(limit).with_for_update(skip_locked=True)
        async with self._engine.begin() as connection:
            result = await connection.execute(query)
            rows = [_row(mapping) for mapping in result.mappings()]
            if not rows:
                return 0
            confirmed = await publish(rows)
            if confirmed:
                await connection.execute(delete(table).where(table.c.id.in_(confirmed)))
        return len(rows)

    async def count(self) -> int:
        """How many rows wait in the table (committed and visible to a new transaction)."""
        async with self._engine.connect() as connection:
            value = await connection.scalar(select(func.count()).select_from(self._table))
        return int(value or 0)

    async def aclose(self) -> None:
        """Dispose of the engine if this store made it from a URL."""
        if self._owned:
            await self._engine.dispose()


def check_url(url: str) -> None:
    """Check that `url` is a database URL SQLAlchemy can parse (nothing connects).

    Raises:
        ConfigurationError: it is not.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r}") from exc


def _engine(url: str) -> AsyncEngine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    try:
        return create_async_engine(url, pool_size=2, max_overflow=2)
    except Exception as exc:  # SQLAlchemy raises several types for a URL it cannot use
        raise ConfigurationError(f"cannot use the outbox database URL: {exc}") from exc


def _row(mapping: Any) -> OutboxRow:
    return OutboxRow(
        id=mapping["id"],
        job_id=mapping["job_id"],
        task=mapping["task"],
        queue=mapping["queue"],
        body=bytes(mapping["body"]),
        options=mapping["options"].encode(),
        enqueued_at_ms=mapping["enqueued_at_ms"],
        eta_ms=mapping["eta_ms"],
        expires_at_ms=mapping["expires_at_ms"],
        headers=mapping["headers"].encode(),
    )
