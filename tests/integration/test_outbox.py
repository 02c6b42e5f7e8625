"""The transactional outbox (issue 15) on the machine's PostgreSQL and the shared RabbitMQ.

Every test makes its own schema, creates the outbox table in it with the Alembic migration
step (`create_outbox`, through Alembic's ``Operations``), and drops the schema afterwards.
Jobs are written with ``queue.outbox(session).enqueue(...)`` in SQLAlchemy transactions,
relayed by `OutboxRelay` (in-process) or by ``aqueue outbox-relay`` (a subprocess that one
test SIGKILLs, by its PID), and run by an in-process worker that counts the runs per job id.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import anyio
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from aqueue import TaskQueue
from aqueue.contrib.outbox import OutboxRelay, OutboxRow
from aqueue.contrib.sqlalchemy import SqlAlchemyOutboxStore, create_outbox, drop_outbox
from aqueue.exceptions import ConfigurationError, EncodeError
from aqueue.testing import running_worker
from tests.helpers.otel import Tree
from tests.helpers.polling import wait_for
from tests.helpers.postgres import asyncpg_url, postgres_url, schema_name
from tests.helpers.worker_process import WorkerProcess, apps_env, aqueue_command
from tests.helpers.workers import delete_topology, wait_until
from tests.integration.apps.outbox import App, make_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OUTBOX_APP = "tests.integration.apps.outbox:queue"
tracer = trace.get_tracer("tests.outbox")


@pytest.fixture
def pg_url() -> str:
    """The machine's PostgreSQL (skips or fails when it does not answer)."""
    return postgres_url()


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """An SQLAlchemy async engine on PostgreSQL (asyncpg)."""
    made = create_async_engine(asyncpg_url(pg_url))
    try:
        yield made
    finally:
        await made.dispose()


@pytest.fixture
async def table(engine: AsyncEngine) -> AsyncIterator[str]:
    """``schema.aqueue_outbox`` in a fresh schema, made by the migration step; dropped after."""
    schema = schema_name()
    name = f"{schema}.aqueue_outbox"
    async with engine.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        await connection.run_sync(lambda sync: create_outbox(_operations(sync), name))
    try:
        yield name
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def _operations(connection: object) -> Operations:
    return Operations(MigrationContext.configure(connection))  # type: ignore[arg-type]


@pytest.fixture
async def app(amqp_url: str, redis_url: str, prefix: str) -> AsyncIterator[App]:
    """The outbox app with a Redis result backend; its topology and Redis keys deleted after."""
    made = make_app(amqp_url, prefix, redis_url)
    try:
        yield made
    finally:
        await delete_topology(amqp_url, prefix)
        async with made.queue.session() as session:
            backend = session.states.backend
            client = getattr(backend, "_client", None)
            if client is not None:
                keys = [key async for key in client.scan_iter(f"{prefix}:*")]
                if keys:
                    await client.delete(*keys)


async def _enqueue_in_transactions(
    engine: AsyncEngine, queue: TaskQueue, app: App, table: str, count: int, *, every: int
) -> tuple[set[int], set[str]]:
    """Enqueue `count` jobs, one transaction each; every `every`-th transaction rolls back.

    Returns:
        The numbers and job ids of the committed jobs.
    """
    numbers: set[int] = set()
    job_ids: set[str] = set()
    async with AsyncSession(engine) as session:
        for number in range(count):
            try:
                async with session.begin():  # commits, or rolls back on the exception
                    job = await queue.outbox(session, table=table).enqueue(app.record, number)
                    if number % every == every - 1:
                        raise _RolledBack
            except _RolledBack:
                continue
            numbers.add(number)
            job_ids.add(job.job_id)
    return numbers, job_ids


class _RolledBack(Exception):
    """Raised in a transaction to roll it back, as the application's error would."""


async def test_only_committed_jobs_run(engine: AsyncEngine, table: str, app: App) -> None:
    """1,000 jobs enqueued in transactions of which every tenth rolls back: the relay
    publishes the 900 committed rows (and deletes them), and exactly those 900 jobs run once."""
    store = SqlAlchemyOutboxStore(engine, table=table)
    numbers, job_ids = await _enqueue_in_transactions(engine, app.queue, app, table, 1000, every=10)
    assert len(numbers) == 900
    assert await store.count() == 900  # nothing is published before a relay runs
    relay = OutboxRelay(app.queue, store, batch_size=100)
    async with app.queue, running_worker(app.queue) as worker:
        assert await relay.run_until_empty() == 900
        await wait_until(worker, lambda stats: stats.succeeded >= 900, timeout=60)
        stats = worker.statistics()
    assert await store.count() == 0
    assert relay.statistics.published == 900
    assert stats.succeeded == 900
    assert app.numbers == numbers
    assert set(app.runs) == job_ids
    assert all(runs == 1 for runs in app.runs.values())


async def test_job_id_and_results_through_the_outbox(
    engine: AsyncEngine, table: str, app: App
) -> None:
    """The handle the outbox enqueue returns is the job's: its id is the message's, a
    caller-given job_id is kept, and the result is read through the result backend."""
    async with AsyncSession(engine) as session, session.begin():
        given = await app.queue.outbox(session, table=table).enqueue(
            app.record.with_options(job_id="order-42"), 42
        )
        fresh = await app.queue.outbox(session, table=table).enqueue(app.record, 7)
    assert given.job_id == "order-42"
    store = SqlAlchemyOutboxStore(engine, table=table)
    async with app.queue, running_worker(app.queue):
        await OutboxRelay(app.queue, store).run_until_empty()
        with anyio.fail_after(30):
            assert await app.queue.job(given.job_id).result(timeout=30) == 42
            assert await app.queue.job(fresh.job_id).result(timeout=30) == 7
    assert set(app.runs) == {"order-42", fresh.job_id}


async def test_bad_input_fails_before_the_write(engine: AsyncEngine, table: str, app: App) -> None:
    """A non-JSON argument, a unique job and a non-session fail at the outbox enqueue, and
    write no row."""
    store = SqlAlchemyOutboxStore(engine, table=table)
    async with AsyncSession(engine) as session, session.begin():
        outbox = app.queue.outbox(session, table=table)
        with pytest.raises(EncodeError, match="argument"):
            await outbox.enqueue(app.record, object())  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="unique"):
            await outbox.enqueue(app.record.with_options(unique_for=60), 1)
    with pytest.raises(ConfigurationError, match="AsyncSession"):
        app.queue.outbox(object())
    with pytest.raises(ConfigurationError, match=r"schema\.table"):
        app.queue.outbox(AsyncSession(engine), table="a.b.c")
    assert await store.count() == 0


class _CrashAfterPublish:
    """A store whose first batch dies after the publish, before the delete (as a killed
    relay's does: its transaction rolls back)."""

    def __init__(self, store: SqlAlchemyOutboxStore) -> None:
        self.store = store
        self.published: list[str] = []

    async def relay_batch(self, limit: int, publish: object) -> int:
        async def crash(rows: Sequence[OutboxRow]) -> list[int]:
            await publish(rows)  # type: ignore[operator]
            self.published.extend(row.job_id for row in rows)
            raise RuntimeError("relay died between the publish and the delete")

        return await self.store.relay_batch(limit, crash)

    async def aclose(self) -> None:
        await self.store.aclose()


@pytest.mark.parametrize("dedup", [True, False], ids=["with-backend", "without-backend"])
async def test_republished_rows_keep_their_job_id(
    engine: AsyncEngine,
    table: str,
    amqp_url: str,
    redis_url: str,
    prefix: str,
    dedup: bool,
) -> None:
    """A relay that dies between publish and delete leaves its rows; the next relay publishes
    them again with the same job ids. With a result backend the worker runs each job once
    (the second copy is acked unrun, counted as a duplicate); without one, twice."""
    app = make_app(amqp_url, prefix, redis_url if dedup else None)
    try:
        async with AsyncSession(engine) as session, session.begin():
            for number in range(5):
                await app.queue.outbox(session, table=table).enqueue(app.record, number)
        store = SqlAlchemyOutboxStore(engine, table=table)
        crashing = _CrashAfterPublish(store)
        async with app.queue, running_worker(app.queue) as worker:
            with pytest.raises(RuntimeError, match="between the publish and the delete"):
                await OutboxRelay(app.queue, crashing).run_until_empty()
            assert await store.count() == 5  # the delete rolled back with the transaction
            assert await OutboxRelay(app.queue, store).run_until_empty() == 5
            if dedup:
                await wait_until(
                    worker, lambda stats: stats.succeeded + stats.duplicates >= 10, timeout=30
                )
                stats = worker.statistics()
                assert (stats.succeeded, stats.duplicates) == (5, 5)
            else:
                await wait_until(worker, lambda stats: stats.succeeded >= 10, timeout=30)
        assert set(app.runs) == set(crashing.published)
        assert set(app.runs.values()) == {1 if dedup else 2}
    finally:
        await delete_topology(amqp_url, prefix)
        if dedup:
            async with app.queue.session() as queue_session:
                client = getattr(queue_session.states.backend, "_client", None)
                keys = [key async for key in client.scan_iter(f"{prefix}:*")] if client else []
                if keys and client is not None:
                    await client.delete(*keys)


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """``aqueue outbox-relay`` subprocesses; any still running is SIGKILLed afterwards."""
    made: list[WorkerProcess] = []
    yield made
    for process in made:
        process.cleanup()


def _relay_process(
    env: dict[str, str], log: Path, pg_url: str, table: str, *args: str
) -> WorkerProcess:
    process = WorkerProcess(OUTBOX_APP, (), env=env, log=log)
    process.argv = aqueue_command(
        "outbox-relay", OUTBOX_APP, "--database", asyncpg_url(pg_url), "--table", table, *args
    )
    return process


async def test_relay_killed_mid_batch_loses_nothing(
    engine: AsyncEngine,
    table: str,
    app: App,
    pg_url: str,
    amqp_url: str,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    relays: list[WorkerProcess],
    record_property: Callable[[str, object], None],
) -> None:
    """``aqueue outbox-relay`` SIGKILLed mid-batch (some jobs published, rows still waiting),
    then restarted: every one of the 900 committed jobs runs; republished copies are counted
    (the worker's dedup acks them unrun) and reported."""
    numbers, job_ids = await _enqueue_in_transactions(engine, app.queue, app, table, 1000, every=10)
    store = SqlAlchemyOutboxStore(engine, table=table)
    env = {**apps_env(amqp_url, prefix), "AQUEUE_TEST_REDIS_URL": redis_url}
    log = tmp_path / "relay.log"
    async with app.queue.session() as session:  # declares the work queue
        work_queue = session.names.work_queue("default")

        async def ready() -> int:
            return await session.transport.message_count(work_queue)

        # Batches of 300 and no worker yet: once the queue holds more than 300 jobs, the
        # second batch is being published and is not deleted yet. The kill lands there
        # (most often: a batch may finish between the poll and the signal), and that
        # batch's rows are published again by the next relay.
        first = _relay_process(env, log, pg_url, table, "--batch", "300", "--interval", "0")
        relays.append(first)
        first.start()

        async def second_batch_publishing() -> bool:
            return await ready() > 300

        await wait_for(
            second_batch_publishing,
            timeout=60,
            what="the relay's second batch",
            details=first.output_tail,
            interval=0.001,
        )
        first.send_signal(signal.SIGKILL)  # by its PID
        assert await first.wait(timeout=30) == -signal.SIGKILL
        waiting = await store.count()
        assert waiting > 0, "the relay finished before it was killed: nothing was tested"
        second = _relay_process(env, log, pg_url, table, "--batch", "300")
        relays.append(second)
        second.start()
        await _wait_empty(store, second)
        second.send_signal(signal.SIGTERM)
        assert await second.wait(timeout=30) == 0, second.output_tail()
        published = await ready()
        async with running_worker(app.queue) as worker:
            await wait_until(
                worker,
                lambda stats: stats.succeeded + stats.duplicates >= published,
                timeout=120,
            )
            stats = worker.statistics()
    duplicates = stats.duplicates
    # reported at the end of the run (tests/conftest.py)
    record_property("figure:rows waiting when the relay was killed", waiting)
    record_property("figure:messages published", published)
    record_property("figure:jobs run", stats.succeeded)
    record_property("figure:republished copies acked unrun", duplicates)
    assert published == 900 + duplicates
    if waiting == 600:  # killed inside the second batch: what it published came again
        assert duplicates >= 1
    assert app.numbers == numbers
    assert set(app.runs) == job_ids  # none of the 900 is lost, and no rolled-back job ran
    assert all(runs == 1 for runs in app.runs.values())
    assert stats.succeeded == 900


async def _wait_empty(store: SqlAlchemyOutboxStore, relay: WorkerProcess) -> None:
    async def empty() -> bool:
        return await store.count() == 0

    await wait_for(empty, timeout=60, what="the outbox to empty", details=relay.output_tail)


async def test_migration_downgrade_drops_the_table(engine: AsyncEngine) -> None:
    """`drop_outbox` (the migration's downgrade) removes what `create_outbox` made."""
    schema = schema_name()
    name = f"{schema}.aqueue_outbox"
    async with engine.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: create_outbox(_operations(sync), name))
            assert await connection.scalar(text(f"SELECT to_regclass('{name}')")) is not None
            await connection.run_sync(lambda sync: drop_outbox(_operations(sync), name))
            assert await connection.scalar(text(f"SELECT to_regclass('{name}')")) is None
    finally:
        with contextlib.suppress(Exception):
            async with engine.begin() as connection:
                await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


async def test_worker_relays_the_outbox(
    engine: AsyncEngine,
    table: str,
    app: App,
    pg_url: str,
    amqp_url: str,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    relays: list[WorkerProcess],
) -> None:
    """``aqueue worker --outbox-database`` relays the outbox itself: committed rows written
    before and while it runs are published and run, their results readable."""
    async with AsyncSession(engine) as session, session.begin():
        before = [
            await app.queue.outbox(session, table=table).enqueue(app.record, n) for n in range(10)
        ]
    env = {**apps_env(amqp_url, prefix), "AQUEUE_TEST_REDIS_URL": redis_url}
    worker = WorkerProcess(
        OUTBOX_APP,
        ["--outbox-database", asyncpg_url(pg_url), "--outbox-table", table],
        env=env,
        log=tmp_path / "worker.log",
    )
    relays.append(worker)
    worker.start()
    await worker.wait_started()
    async with AsyncSession(engine) as session, session.begin():
        after = await app.queue.outbox(session, table=table).enqueue(app.record, 99)
    async with app.queue:
        for number, job in [*enumerate(before), (99, after)]:
            assert await job.result(timeout=30) == number, worker.output_tail()
    store = SqlAlchemyOutboxStore(engine, table=table)
    assert await store.count() == 0
    await worker.terminate()


async def test_the_request_trace_continues_through_the_outbox(
    engine: AsyncEngine, table: str, app: App, spans: InMemorySpanExporter
) -> None:
    """A row written inside a request's span keeps its trace context: the relay's publish
    span (outside any span of its own) is the request span's child, and the job's process
    span is the publish span's child: one trace."""
    async with AsyncSession(engine) as session, session.begin():
        with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER):
            await app.queue.outbox(session, table=table).enqueue(app.record, 5)
    store = SqlAlchemyOutboxStore(engine, table=table)
    async with app.queue, running_worker(app.queue) as worker:
        assert await OutboxRelay(app.queue, store).run_until_empty() == 1
        await wait_until(worker, lambda stats: stats.succeeded == 1, timeout=30)
    tree = Tree(spans.get_finished_spans())
    request = tree.one("POST /orders", SpanKind.SERVER)
    publish = tree.one("publish outbox.record", SpanKind.PRODUCER)
    process = tree.one("process outbox.record", SpanKind.CONSUMER)
    assert tree.parent(publish) is request, tree.describe()
    assert tree.parent(process) is publish, tree.describe()
    assert len(tree.trace_ids()) == 1, tree.describe()


async def test_two_relays_share_the_rows_without_publishing_one_twice(
    engine: AsyncEngine,
    table: str,
    app: App,
    pg_url: str,
    record_property: Callable[[str, object], None],
) -> None:
    """Two relays on one table at once (FOR UPDATE SKIP LOCKED): each publishes some of the
    900 rows, none is published by both, and every job runs once."""
    numbers, job_ids = await _enqueue_in_transactions(engine, app.queue, app, table, 1000, every=10)
    other_engine = create_async_engine(asyncpg_url(pg_url))
    relays = [
        OutboxRelay(app.queue, SqlAlchemyOutboxStore(engine, table=table), batch_size=50),
        OutboxRelay(app.queue, SqlAlchemyOutboxStore(other_engine, table=table), batch_size=50),
    ]
    try:
        async with app.queue, running_worker(app.queue) as worker:
            async with anyio.create_task_group() as tg:
                for relay in relays:
                    tg.start_soon(relay.run_until_empty)
            await wait_until(worker, lambda stats: stats.succeeded >= 900, timeout=60)
            stats = worker.statistics()
    finally:
        await other_engine.dispose()
    shares = [relay.statistics.published for relay in relays]
    record_property("figure:rows published by each relay", f"{shares[0]} and {shares[1]}")
    assert sum(shares) == 900
    assert all(share > 0 for share in shares)
    assert (stats.succeeded, stats.duplicates) == (900, 0)
    assert set(app.runs) == job_ids
    assert app.numbers == numbers
