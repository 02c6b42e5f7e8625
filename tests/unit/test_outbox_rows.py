"""The outbox's pure parts: the row of a job, its envelope when relayed, and bad input
(``aqueue outbox-relay`` and ``aqueue worker --outbox-database`` refuse it before connecting)."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from aqueue import TaskQueue
from aqueue._cli.common import app
from aqueue._core.wire import HEADER_COPY
from aqueue.contrib.outbox import OutboxRelay, make_row
from aqueue.contrib.sqlalchemy import SqlAlchemyOutboxStore, split_table_name
from aqueue.exceptions import ConfigurationError, EncodeError

WIDE_PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
JOBS = "tests.integration.apps.jobs:queue"


@pytest.fixture
def queue() -> TaskQueue:
    return TaskQueue("memory://", prefix="t", max_message_bytes=1000)


def test_a_row_holds_the_job_and_each_relay_of_it_is_a_new_copy(queue: TaskQueue) -> None:
    """The row keeps the job id, task, queue and encoded arguments; each envelope built from
    it has the same job id and a new copy token (so the worker can tell copies apart)."""

    @queue.task(queue="mail", retries=3)
    def send(to: str, *, urgent: bool = False) -> None: ...

    row = make_row(queue, send.with_options(job_id="mail-1", timeout=5), ("ada",), {"urgent": True})
    assert (row.job_id, row.task, row.queue) == ("mail-1", send.name, "mail")
    assert b"ada" in row.body
    first, delay = row.envelope(row.enqueued_at_ms)
    second, _ = row.envelope(row.enqueued_at_ms)
    assert delay == 0
    assert first.job_id == second.job_id == "mail-1"
    assert first.extra_headers[HEADER_COPY] != second.extra_headers[HEADER_COPY]
    assert first.options["timeout"] == 5


def test_a_delay_counts_from_the_write_not_from_the_relay(queue: TaskQueue) -> None:
    """A row written with a delay keeps its due time: relayed later, the delay left is less."""

    @queue.task()
    def later() -> None: ...

    row = make_row(queue, later, (), {}, delay=10)
    assert row.eta_ms is not None
    _, delay = row.envelope(row.enqueued_at_ms + 4000)
    assert delay == 6000
    envelope, delay = row.envelope(row.enqueued_at_ms + 20_000)  # overdue: at once
    assert (delay, envelope.eta_ms) == (0, None)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    assert make_row(queue, later, (), {}, eta=eta).eta_ms == pytest.approx(
        eta.timestamp() * 1000, abs=5
    )


def test_bad_input_fails_before_any_write(queue: TaskQueue) -> None:
    """Not a task, a non-JSON argument, a job over the size limit, a unique job, a naive eta."""

    @queue.task()
    def job(value: object) -> None: ...

    with pytest.raises(ConfigurationError, match=r"@queue\.task"):
        make_row(queue, print, (), {})  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="argument"):
        make_row(queue, job, (object(),), {})
    with pytest.raises(EncodeError, match="max_message_bytes"):
        make_row(queue, job, ("x" * 2000,), {})
    with pytest.raises(ConfigurationError, match="unique"):
        make_row(queue, job.with_options(unique_for=10), (1,), {})
    with pytest.raises(ConfigurationError, match="naive"):
        make_row(queue, job, (1,), {}, eta=dt.datetime(2030, 1, 1))  # noqa: DTZ001


@pytest.mark.parametrize("name", ["", "a.b.c", ".t", "s."])
def test_malformed_table_names_are_refused(name: str) -> None:
    """A table is 'table' or 'schema.table'."""
    with pytest.raises(ConfigurationError, match=r"schema\.table"):
        split_table_name(name)


def test_relay_settings_are_checked(queue: TaskQueue) -> None:
    """A batch size below 1 or a negative interval fails when the relay is made."""
    store = SqlAlchemyOutboxStore("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigurationError, match="batch_size"):
        OutboxRelay(queue, store, batch_size=0)
    with pytest.raises(ConfigurationError, match="interval"):
        OutboxRelay(queue, store, interval=-1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["outbox-relay", JOBS], "database URL"),
        (["outbox-relay", JOBS, "--database", "postgresql://h/d", "--table", "a.b.c"], "table"),
        (["outbox-relay", "nowhere:queue", "--database", "postgresql://h/d"], "cannot import"),
        (["worker", JOBS, "--outbox-database", "not a url"], "not a database URL"),
        (["worker", JOBS, "--outbox-database", "postgresql://h/d", "--outbox-table", "."], "table"),
    ],
)
def test_relay_mistakes_exit_2_before_connecting(args: list[str], message: str) -> None:
    """Bad relay options exit 2, naming the mistake, before any connection."""
    result = CliRunner().invoke(app, args, env={**WIDE_PLAIN, "AQUEUE_OUTBOX_DATABASE_URL": ""})
    assert result.exit_code == 2, result.output
    assert message in result.output
