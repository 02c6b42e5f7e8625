"""The transactional outbox, whatever the database library: the row, and the relay.

``await queue.outbox(session).enqueue(task, ...)`` writes an `OutboxRow` into the outbox
table inside the caller's transaction (the database library's module does the write:
`aqueue.contrib.sqlalchemy`, `aqueue.contrib.django`). Nothing reaches RabbitMQ then: a
rolled-back transaction leaves no row, so no job. `OutboxRelay` publishes committed rows
with publisher confirms and deletes them, a batch per database transaction whose rows it
locks with ``FOR UPDATE SKIP LOCKED`` (so several relays share the rows, none publishes a row
another holds). A relay that dies between the publish and the delete (its transaction rolls
back) leaves the rows, which the next relay publishes again with the same job id and a new
copy token (``aqueue-copy``): a worker with a result backend runs one copy and acks the
other unrun; without one, both run (the task's idempotency on ``current_job().job_id`` must
handle it). See the outbox page.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from aqueue._client.queue import TaskQueue
from aqueue._client.session import Session
from aqueue._core.checks import is_number
from aqueue._core.config import expiry_ms
from aqueue._core.delays import delay_to_ms, eta_to_delay_ms
from aqueue._core.types import JSONScalar
from aqueue._core.wire import HEADER_COPY, Envelope
from aqueue._observability.otel import inject_context
from aqueue._results import JobState, JobStatus
from aqueue._results.handles import Job
from aqueue._serialization import dumps, encode_arguments, loads
from aqueue._tasks.task import Task
from aqueue.exceptions import ConfigurationError, EncodeError

logger = logging.getLogger("aqueue.outbox")

#: The outbox table's name unless told otherwise.
DEFAULT_TABLE = "aqueue_outbox"
#: Rows one relay transaction publishes at most.
DEFAULT_BATCH = 100
#: Seconds an idle relay waits before it looks for rows again.
DEFAULT_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One job waiting in the outbox table: everything its message needs, encoded already.

    Attributes:
        job_id: the job's id (the AMQP ``message_id``), known at enqueue.
        task: the registered task name.
        queue: the logical queue.
        body: the encoded arguments (the message body).
        options: the run-time options changed at enqueue (JSON).
        enqueued_at_ms: when the row was written, ms since the Unix epoch.
        eta_ms: when the job is due (ms since the Unix epoch); None: as soon as published.
        expires_at_ms: the job's deadline, or None.
        headers: the trace context of the code that wrote the row (W3C ``traceparent`` and
            ``tracestate``, JSON), so the job's trace continues the request's.
        id: the row's id (its order), once it is read back from the table.
    """

    job_id: str
    task: str
    queue: str
    body: bytes
    options: bytes = b"{}"
    enqueued_at_ms: int = 0
    eta_ms: int | None = None
    expires_at_ms: int | None = None
    headers: bytes = b"{}"
    id: int | None = field(default=None, compare=False)

    def columns(self) -> dict[str, Any]:
        """The row as the table's column values (without `id`, which the database gives)."""
        return {
            "job_id": self.job_id,
            "task": self.task,
            "queue": self.queue,
            "body": self.body,
            "options": self.options.decode(),
            "enqueued_at_ms": self.enqueued_at_ms,
            "eta_ms": self.eta_ms,
            "expires_at_ms": self.expires_at_ms,
            "headers": self.headers.decode(),
        }

    def envelope(self, now_ms: int) -> tuple[Envelope, int]:
        """The job's envelope as published at `now_ms` (a new copy token), and its delay."""
        delay_ms = max(0, self.eta_ms - now_ms) if self.eta_ms is not None else 0
        options: dict[str, JSONScalar] = loads(self.options) if self.options else {}
        carried: dict[str, Any] = loads(self.headers) if self.headers else {}
        trace = {key: value for key, value in carried.items() if isinstance(value, str)}
        envelope = Envelope(
            job_id=self.job_id,
            task=self.task,
            queue=self.queue,
            enqueued_at_ms=self.enqueued_at_ms,
            eta_ms=now_ms + delay_ms if delay_ms > 0 else None,
            # each publish of a row is told apart from another publish of the same row
            extra_headers={**trace, HEADER_COPY: uuid.uuid4().hex},
            options=options,
            expires_at_ms=self.expires_at_ms,
        )
        return envelope, delay_ms


def make_row(
    queue: TaskQueue,
    task: Task[Any, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    delay: object = 0,
    eta: object = None,
) -> OutboxRow:
    """The outbox row of one job; every check `enqueue` makes is made here, before the write.

    Raises:
        ConfigurationError: `task` is not a registered task; a bad delay or eta; a unique job
            (``unique_for``: the outbox cannot reserve the key in the caller's transaction).
        EncodeError: an argument is not JSON (naming it), or the job is too big.
    """
    if not isinstance(task, Task):
        raise ConfigurationError(
            f"outbox enqueue() needs a function registered with @queue.task, not {task!r}"
        )
    if task.enqueue_options.unique_for is not None:
        raise ConfigurationError(
            "a unique job (with_options(unique_for=...)) cannot go through the outbox: its key "
            "is reserved in the result backend, outside the database transaction; give it a "
            "job_id and make the task idempotent on it instead"
        )
    now_ms = time.time_ns() // 1_000_000
    delay_ms = eta_to_delay_ms(eta, now_ms / 1000) if eta is not None else delay_to_ms(delay)
    body = encode_arguments(args, kwargs)
    limit = queue._max_message_bytes  # the same limit as enqueue's
    if len(body) > limit:
        raise EncodeError(
            f"job {task.name} encodes to {len(body)} bytes, over the limit of {limit} "
            "(max_message_bytes); store large data elsewhere and pass a reference"
        )
    return OutboxRow(
        job_id=task.enqueue_options.job_id or uuid.uuid4().hex,
        task=task.name,
        queue=task.options.queue,
        body=body,
        options=dumps(dict(task.overrides)),
        enqueued_at_ms=now_ms,
        eta_ms=now_ms + delay_ms if delay_ms > 0 else None,
        expires_at_ms=expiry_ms(task.options.expires, now_ms),
        headers=dumps(trace_headers()),
    )


def trace_headers() -> dict[str, str]:
    """The current trace context as headers (empty outside a span, or with no SDK).

    The relay publishes outside any span, so its publish span continues this context: the
    job's trace is the request's that wrote the row.
    """
    return {key: value for key, value in inject_context({}).items() if isinstance(value, str)}


class OutboxStore(Protocol):
    """Where a relay reads and deletes rows: one database library's side of the outbox."""

    async def relay_batch(self, limit: int, publish: PublishRows) -> int:
        """Publish up to `limit` committed rows and delete them, in one database transaction.

        It locks the oldest rows first (``FOR UPDATE SKIP LOCKED``), calls `publish`,
        deletes the rows whose ids `publish` returns, and commits.

        Returns:
            How many rows were locked (0: none waiting).
        """
        ...

    async def aclose(self) -> None:
        """Release the store's connections."""
        ...


class PublishRows(Protocol):
    """Publishes rows with confirms; returns the ids of the rows that were confirmed."""

    async def __call__(self, rows: Sequence[OutboxRow]) -> list[int]: ...


@dataclass(slots=True)
class RelayStatistics:
    """What a relay did since it started."""

    #: rows published and confirmed (then deleted)
    published: int = 0
    #: rows the broker did not confirm (left in the table, published again later)
    failed: int = 0
    #: database transactions that published a batch
    batches: int = 0


class OutboxRelay:
    """Publishes the outbox table's committed rows, in id order, and deletes them.

    Args:
        queue: the TaskQueue to publish through (its broker, prefix and result backend).
        store: the outbox table (`aqueue.contrib.sqlalchemy.SqlAlchemyOutboxStore`).
        batch_size: rows per database transaction.
        interval: seconds to wait when no row is waiting.

    Raises:
        ConfigurationError: a batch size below 1 or a negative interval.
    """

    def __init__(
        self,
        queue: TaskQueue,
        store: OutboxStore,
        *,
        batch_size: int = DEFAULT_BATCH,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        size: object = batch_size  # run-time input: not every caller runs mypy
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
        if not is_number(interval, at_least=0):
            raise ConfigurationError(f"interval must be seconds >= 0, not {interval!r}")
        self._queue = queue
        self._store = store
        self._batch_size = batch_size
        self._interval = float(interval)
        self.statistics = RelayStatistics()

    async def run(self) -> None:
        """Relay until cancelled; a failed batch is logged and its rows tried again."""
        async with self._queue.session() as session:
            while True:
                try:
                    locked = await self._batch(session)
                except Exception:
                    # The database or the broker failed mid-batch: its transaction rolled
                    # back, so its rows wait for the next try. A relay inside a worker must
                    # not take the worker down with it.
                    logger.exception("outbox relay: a batch failed; its rows are kept")
                    locked = 0
                if locked < self._batch_size:
                    await anyio.sleep(self._interval)

    async def run_until_empty(self) -> int:
        """Relay until no row is waiting; return how many rows were published."""
        before = self.statistics.published
        async with self._queue.session() as session:
            while await self._batch(session) > 0:
                pass
        return self.statistics.published - before

    async def _batch(self, session: Session) -> int:
        async def publish(rows: Sequence[OutboxRow]) -> list[int]:
            return await self._publish(session, rows)

        locked = await self._store.relay_batch(self._batch_size, publish)
        if locked:
            self.statistics.batches += 1
            logger.debug("outbox relay: batch of %d rows committed", locked)
        return locked

    async def _publish(self, session: Session, rows: Sequence[OutboxRow]) -> list[int]:
        producer = session.producer
        logger.debug(
            "outbox relay: publishing %d rows (ids %s to %s)", len(rows), rows[0].id, rows[-1].id
        )
        now_ms = time.time_ns() // 1_000_000
        built = [row.envelope(now_ms) for row in rows]
        for envelope, delay_ms in built:
            await producer.ensure_route(envelope.queue, delay_ms)
        messages = [
            producer.message(envelope, row.body, delay_ms=delay_ms)
            for row, (envelope, delay_ms) in zip(rows, built, strict=True)
        ]
        failures = await producer.publish_many(messages)
        lost = {failure.index for failure in failures}
        for failure in failures:
            logger.warning("outbox job %s not confirmed (%s): kept", failure.job_id, failure.error)
        confirmed = [
            (row, env)
            for index, (row, (env, _)) in enumerate(zip(rows, built, strict=False))
            if index not in lost
        ]
        await self._record(session, [env for _, env in confirmed])
        self.statistics.published += len(confirmed)
        self.statistics.failed += len(lost)
        return [row.id for row, _ in confirmed if row.id is not None]

    async def _record(self, session: Session, envelopes: Sequence[Envelope]) -> None:
        """Record the published jobs queued (or scheduled), as `enqueue` does."""
        if not session.states.active:
            return
        tasks = self._queue.tasks
        states = [
            JobState(
                e.job_id,
                JobStatus.SCHEDULED if e.eta_ms is not None else JobStatus.QUEUED,
                task=e.task,
            )
            for e in envelopes
            if e.task not in tasks or tasks[e.task].options.store_result
        ]
        if states:
            await session.states.record_many(states)


def job_handle(queue: TaskQueue, row: OutboxRow) -> Job[Any]:
    """The handle of the job a row will become (its state is unknown until it is relayed)."""
    return queue.job(row.job_id)
