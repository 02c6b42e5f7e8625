"""`TaskQueue`: the application's object: its tasks, its settings and the enqueue verbs.

What exists only while it is open (connections, the producer, declarations, job states) is
its `Session`; the worker and the tools take the session, never the `TaskQueue`.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

import anyio
from typing_extensions import Unpack

from aqueue._client.cancel import cancel_job
from aqueue._client.deadletters import DeadLetterQueue
from aqueue._client.fair import is_fair, tenant_of
from aqueue._client.producer import BatchResult
from aqueue._client.session import Session
from aqueue._client.unique import unique_key, unique_store
from aqueue._core.checks import is_number
from aqueue._core.config import (
    DEFAULT_PREFIX,
    DEFAULT_QUEUE,
    DEFAULT_URL,
    ConnectionSettings,
    ProducerSettings,
    QueueSettings,
    TaskOptionsDict,
    expiry_ms,
)
from aqueue._core.delays import delay_to_ms, eta_to_delay_ms
from aqueue._core.flow import fair_destination
from aqueue._core.schedules import Misfire, Schedule, ScheduleBook
from aqueue._core.topology import QueueType, TopologyNames, validate_name
from aqueue._core.wire import Envelope
from aqueue._observability.hooks import Instrumentation, Instruments
from aqueue._results import JobState, JobStatus, ResultBackend
from aqueue._results.handles import GroupJob, Job
from aqueue._tasks.middleware import Middleware
from aqueue._tasks.periodic import make_schedule
from aqueue._tasks.redact import stored_arguments
from aqueue._tasks.task import Call, Task, TaskRegistry, make_task
from aqueue._transport import check_urls, connector, redact_url
from aqueue._workflows import (
    Chain,
    Chord,
    Group,
    Node,
    Signature,
    assign_ids,
    final_ids,
    needs_backend,
)
from aqueue.exceptions import ConfigurationError, EncodeError

if TYPE_CHECKING:  # imported on first use: SQLAlchemy is an optional dependency
    from aqueue.contrib.sqlalchemy import SqlAlchemyOutbox

P = ParamSpec("P")
R = TypeVar("R")

_QUEUE = QueueSettings()
_CONNECTION = ConnectionSettings()
_PRODUCER = ProducerSettings()


class TaskQueue:
    """Tasks, their queues and a connection to the broker.

    Use it as an async context manager (``async with queue:``, or in a FastAPI lifespan) to
    enqueue jobs; pass it to ``aqueue worker module:queue`` to run them.

    Args:
        url: an AMQP URL, or a list of them for a cluster (tried in turn, on connect and on
            every reconnect); ``"memory://"`` for an in-process broker (tests). ``amqps://``
            is AMQP over TLS, configured by URL parameters (``?cafile=...&certfile=...``) or
            by `ssl`; the certificate and the host name are verified.
        ssl: the TLS context of every connection, for ``amqps://`` URLs only; it wins over
            the URLs' TLS parameters. None: aio-pika builds one from them.
        prefix: the prefix of every exchange and queue name.
        queue_type: ``"quorum"`` (default: replicated, delivery limit) or ``"classic"``.
        delivery_limit: quorum queues dead-letter a message after this many unacked deliveries.
        publish_timeout: seconds to wait for one publisher confirm.
        publish_deadline: seconds a publish keeps retrying across reconnects.
        connect_timeout: seconds to wait for the broker when a connection opens.
        max_message_bytes: larger encoded jobs are refused at enqueue.
        max_in_flight: unconfirmed publishes `enqueue_many` keeps in flight.
        publish_batch: messages `enqueue_many` writes at once (one socket write, confirms
            awaited together); 1: one at a time.
        middleware: run around every job in workers, outermost first.
        instrumentation: hooks that observe every publish and every job (`Instrumentation`),
            after the OpenTelemetry one; more can be added with `instrument`.
        telemetry: install `aqueue.telemetry.Telemetry` first: spans and trace context for
            every publish and job, and job metrics, through the OpenTelemetry API (no-ops
            until the application sets up an SDK).
        name: names the connections (visible in the RabbitMQ management UI).
        results: where job states and results are kept (`RedisResultBackend`); None:
            fire-and-forget, and asking for a result raises `ConfigurationError`.
        result_ttl: seconds job states and results are kept.

    Raises:
        ConfigurationError: a bad setting; `ssl` that is not an `ssl.SSLContext`, or comes
            with a URL that is not ``amqps://``.
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        ssl: SSLContext | None = None,
        prefix: str = DEFAULT_PREFIX,
        queue_type: QueueType = _QUEUE.queue_type,
        delivery_limit: int = _QUEUE.delivery_limit,
        publish_timeout: float = _PRODUCER.publish_timeout,
        publish_deadline: float = _PRODUCER.publish_deadline,
        connect_timeout: float = _CONNECTION.connect_timeout,
        max_message_bytes: int = _PRODUCER.max_message_bytes,
        max_in_flight: int = _PRODUCER.max_in_flight,
        publish_batch: int = _PRODUCER.publish_batch,
        middleware: Sequence[Middleware] = (),
        instrumentation: Sequence[Instrumentation] = (),
        telemetry: bool = True,
        name: str = "aqueue",
        results: ResultBackend | None = None,
        result_ttl: float = 86400.0,
    ) -> None:
        urls = check_urls(url)
        self._names = TopologyNames(prefix)
        self._queue_settings = QueueSettings(queue_type, delivery_limit)
        self._connection = ConnectionSettings(connect_timeout=connect_timeout)
        self._producer_settings = ProducerSettings(
            publish_timeout=publish_timeout,
            publish_deadline=publish_deadline,
            max_message_bytes=max_message_bytes,
            max_in_flight=max_in_flight,
            publish_batch=publish_batch,
        )
        if results is not None and not isinstance(results, ResultBackend):
            raise ConfigurationError(f"results must be a ResultBackend, not {results!r}")
        if not is_number(result_ttl, above=0):
            raise ConfigurationError(f"result_ttl must be a positive number, not {result_ttl!r}")
        self._backend = results
        self._result_ttl = float(result_ttl)
        self.name = name
        # the URLs, credentials and all, live only in the connector; `urls` shows them masked
        self._connect = connector(urls, name=name, ssl_context=ssl)
        self._urls = tuple(map(redact_url, urls))
        self._middleware: tuple[Middleware, ...] = tuple(middleware)
        self._registry = TaskRegistry()
        self._schedules = ScheduleBook()
        self._instruments = Instruments()
        if telemetry:
            # imported here: a TaskQueue(telemetry=False) never loads OpenTelemetry
            from aqueue._observability.otel import Telemetry

            self._instruments.add(Telemetry())
        for instrument in instrumentation:
            self._instruments.add(instrument)
        self._stack: AsyncExitStack | None = None
        self._session: Session | None = None
        self._users = 0  # open() calls not yet matched by aclose()
        # open() and aclose() one at a time: two opens at once would otherwise both connect,
        # and the second's session would replace the first's, its connection never closed
        self._lifecycle = anyio.Lock()

    def __repr__(self) -> str:
        return f"<TaskQueue prefix={self._names.prefix!r} tasks={len(self._registry)}>"

    @property
    def urls(self) -> tuple[str, ...]:
        """The broker URLs, passwords masked as ``***`` (fit for logs; not for connecting)."""
        return self._urls

    @property
    def _max_message_bytes(self) -> int:
        """Larger encoded jobs are refused at enqueue (the outbox checks it too)."""
        return self._producer_settings.max_message_bytes

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]:
        """The registered tasks, by name."""
        return self._registry

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """The schedules (`periodic`, `schedule`), by name."""
        return self._schedules

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware run around every job, outermost first."""
        return self._middleware

    @property
    def instrumentation(self) -> tuple[Instrumentation, ...]:
        """The instrumentations observing every publish and job, in order."""
        return self._instruments.all

    # -- tasks -----------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: None = None, /, **options: Unpack[TaskOptionsDict]) -> _TaskDecorator: ...

    def task(
        self, fn: Callable[..., Any] | None = None, /, **options: Unpack[TaskOptionsDict]
    ) -> Task[Any, Any] | _TaskDecorator:
        """Register a function as a task: ``@queue.task`` or ``@queue.task(queue=..., ...)``.

        Async functions run on the worker's event loop; plain functions run in its thread pool.

        Raises:
            ConfigurationError: an unknown option (the message suggests the closest known one),
                a bad value, or a name already taken by another function.
        """
        decorator = _TaskDecorator(self._registry, options)
        if fn is None:
            # validate now, so a typo fails where the decorator is written
            decorator.check()
            return decorator
        return decorator(fn)

    # -- schedules -------------------------------------------------------------------------

    def periodic(
        self,
        cron: str | None = None,
        /,
        *,
        every: float | dt.timedelta | None = None,
        timezone: str | None = None,
        name: str | None = None,
        misfire: Misfire = "once",
        overlap: bool = True,
    ) -> Callable[[Task[P, R]], Task[P, R]]:
        """Run a task without required arguments on a schedule: ``@queue.periodic("0 3 * * *")``.

        Put it above ``@queue.task(...)``. The schedule is named after the task unless
        `name` says otherwise; see `schedule` for the other arguments.

        Raises:
            ConfigurationError: as for `schedule`, or the task has required arguments.
        """

        def decorate(task: Task[P, R]) -> Task[P, R]:
            self.schedule(
                task,
                cron=cron,
                every=every,
                timezone=timezone,
                name=name,
                misfire=misfire,
                overlap=overlap,
            )
            return task

        return decorate

    def schedule(
        self,
        task: Task[Any, Any],
        /,
        *,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        timezone: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        misfire: Misfire = "once",
        overlap: bool = True,
    ) -> Schedule:
        """Enqueue a job of `task` on a schedule, from whichever scheduler leads.

        Args:
            task: a registered task.
            cron: a cron expression (5 fields, or 6 with seconds first), parsed by cronsim.
            every: an interval in seconds or a timedelta, aligned to the Unix epoch.
            timezone: the IANA time zone of `cron` (default UTC).
            args: positional arguments of every job.
            kwargs: keyword arguments of every job.
            name: unique among the schedules (default: the task's name); with the tick time
                it makes each job's id, so a tick published twice runs once.
            misfire: ticks missed while no scheduler ran: ``"once"`` runs the latest of them
                once, ``"skip"`` none.
            overlap: False skips a tick while the previous run has not finished (needs a
                result backend).

        Raises:
            ConfigurationError: both or neither of `cron` and `every`; a bad expression,
                interval, time zone or name; arguments that do not fit the task or are not
                JSON; a name already taken; ``overlap=False`` without a result backend.
        """
        schedule = make_schedule(
            task,
            cron=cron,
            every=every,
            timezone=timezone,
            args=args,
            kwargs=kwargs,
            name=name,
            misfire=misfire,
            overlap=overlap,
        )
        if not overlap and self._backend is None:
            raise ConfigurationError(
                "overlap=False needs a result backend (it reads the previous run's state): "
                "pass results=RedisResultBackend(...) to TaskQueue"
            )
        if task.name not in self._registry:
            raise ConfigurationError(f"{task.name} is not a task of this TaskQueue")
        self._schedules.add(schedule)
        return schedule

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect the publishing transport and declare every known queue.

        Counted: each `open` (``async with queue:``, `session`) is matched by an `aclose`,
        and the connection closes with the last one, so a worker and the application can
        share one queue object.

        Raises:
            ConnectionFailed: no broker answered within ``connect_timeout``; or, at once,
                the TLS handshake failed on every URL (a certificate that does not verify,
                a host name it is not for), the message naming the cause.
        """
        async with self._lifecycle:
            if self._stack is not None:
                self._users += 1
                return
            await self._connect_session()

    async def _connect_session(self) -> None:
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(
                Session.open(
                    connect=self._connect,
                    names=self._names,
                    queue_settings=self._queue_settings,
                    connection=self._connection,
                    producer_settings=self._producer_settings,
                    instruments=self._instruments,
                    backend=self._backend,
                    result_ttl=self._result_ttl,
                )
            )
            for queue in sorted(self._registry.queues()):
                await session.producer.declare_queue(queue)
            self._session = session
            self._stack = stack.pop_all()
            self._users = 1

    async def aclose(self) -> None:
        """Close the connection once every `open` has been matched; extra calls do nothing."""
        async with self._lifecycle:
            if self._users > 1:
                self._users -= 1
                return
            stack, self._stack, self._session, self._users = self._stack, None, None, 0
            if stack is not None:
                await stack.aclose()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """The open queue's `Session` for the block; opens the queue first if it is closed.

        Closes only what it opened: inside ``async with queue:`` it yields the open session,
        and a later ``async with queue:`` elsewhere does not close it under the block.
        The worker, the dead-letter tools and tests use it; applications rarely need it.

        Raises:
            ConnectionFailed: the queue was closed and no broker answered.
        """
        await self.open()
        try:
            yield self._require_session()
        finally:
            await self.aclose()

    def _require_session(self) -> Session:
        if self._session is None:
            raise ConfigurationError(
                "the TaskQueue is not open: use 'async with queue:' (or await queue.open())"
            )
        return self._session

    def instrument(self, instrumentation: Instrumentation) -> None:
        """Add an instrumentation: it observes every later publish and job.

        Raises:
            ConfigurationError: not an `Instrumentation`.
        """
        self._instruments.add(instrumentation)

    def job(self, job_id: str) -> Job[Any]:
        """A handle on any job by its id, e.g. in another process (``GET /jobs/{id}``)."""
        return self._handle(job_id)

    def _handle(
        self, job_id: str, task: str = "", queue: str = "", *, root: str | None = None
    ) -> Job[Any]:
        return Job(job_id, task, queue, self._backend, canceller=self.cancel, root=root)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job by its id, or a whole workflow by its root id.

        Every worker hears of it through the broker (the control exchange). A queued or
        delayed job never starts; a running async job gets ``CancelledError`` and is settled
        as ``cancelled``; a sync job sees ``current_job().cancelled`` become true; a job in a
        process pool has its process killed. With a result backend the cancellation is stored
        (the state reads ``cancelled``), so a worker that starts later honours it too;
        without one, only the workers running now know it (see the cancellation page).

        Returns:
            False when the result backend knows the job finished already; True otherwise.

        Raises:
            ConfigurationError: the queue is not open, or `job_id` is not a non-empty string.
            ConnectionLost, TransportError: the notice or the stored state could not be written.
        """
        given: object = job_id  # run-time input: not every caller runs mypy
        if not isinstance(given, str) or not given:
            raise ConfigurationError(f"cancel() needs a job id, not {job_id!r}")
        return await cancel_job(self._require_session(), job_id)

    def dead_letters(self, queue: str = DEFAULT_QUEUE) -> DeadLetterQueue:
        """The dead-letter queue of a logical queue: list, find, replay and purge its jobs.

        Raises:
            ConfigurationError: the TaskQueue is not open (``async with queue:``), or `queue`
                is not a valid queue name.
        """
        validate_name(queue)
        return DeadLetterQueue(self._require_session(), queue)

    def outbox(self, session: Any, *, table: str = "aqueue_outbox") -> SqlAlchemyOutbox:
        """Enqueue in the caller's database transaction: the transactional outbox.

        ``await queue.outbox(session).enqueue(task, ...)`` writes the job into the outbox
        table through `session` (an SQLAlchemy ``AsyncSession`` or ``AsyncConnection``); the
        job is published by ``aqueue outbox-relay`` once the transaction commits, and never
        if it rolls back. The queue need not be open. For the Django ORM, see
        ``aqueue.contrib.django.outbox``. The guarantees are on the outbox page.

        Raises:
            ConfigurationError: `session` is not an SQLAlchemy async session or connection;
                a malformed table name.
            ImportError: SQLAlchemy is not installed (the ``sqlalchemy`` extra).
        """
        from aqueue.contrib.sqlalchemy import SqlAlchemyOutbox

        return SqlAlchemyOutbox(self, session, table=table)

    # -- enqueue ---------------------------------------------------------------------------

    @overload
    async def enqueue(self, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    async def enqueue(self, task: Group, /) -> GroupJob: ...
    @overload
    async def enqueue(self, task: Signature | Chain | Chord, /) -> Job[Any]: ...

    async def enqueue(
        self, task: Task[Any, Any] | Node, /, *args: Any, **kwargs: Any
    ) -> Job[Any] | GroupJob:
        """Send one job, or start a workflow, and return once the broker confirmed it.

        A workflow (``task.s(...)``, `chain`, `group`, `chord`) returns the handle of its
        result: the last step of a chain, a chord's callback, every member of a group.

        Raises:
            EncodeError: an argument is not JSON (the message names it), or the job is too big;
                nothing was published.
            PublishError: the broker refused it, it was unroutable, or no confirm came in time.
            ConnectionLost: no connection within ``publish_deadline``.
            ConfigurationError: the queue is not open; a workflow with a group or an error
                callback, and no result backend.
        """
        if isinstance(task, Signature | Chain | Group | Chord):
            if args or kwargs:
                raise ConfigurationError("a workflow takes no further arguments at enqueue")
            return await self._enqueue_workflow(task)
        return await self._enqueue(task, args, kwargs, delay=0, eta=None)

    async def enqueue_in(
        self, delay: float | dt.timedelta, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        """Send one job that becomes due after `delay` (seconds or a timedelta).

        The delay waits in the broker (fixed-TTL delay queues), never in a worker: it survives
        restarts of every worker and of the broker. Precision: never early; see the retries
        page for how late.

        Raises:
            ConfigurationError: a negative delay, or one over the longest (about 31 days).
            EncodeError, PublishError, ConnectionLost: as for `enqueue`.
        """
        return await self._enqueue(task, args, kwargs, delay=delay, eta=None)

    async def enqueue_at(
        self, eta: dt.datetime, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        """Send one job that becomes due at `eta`, a timezone-aware datetime (past: now).

        Raises:
            ConfigurationError: a naive datetime, or one further than the longest delay.
            EncodeError, PublishError, ConnectionLost: as for `enqueue`.
        """
        return await self._enqueue(task, args, kwargs, delay=None, eta=eta)

    async def _enqueue(
        self,
        task: Task[Any, R],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        delay: object,
        eta: object,
    ) -> Job[R]:
        _check_task(task, "enqueue()")
        delay_ms = _delay_ms(delay, eta)  # bad delays raise here
        session = self._require_session()
        producer = session.producer
        body = producer.encode_body(task.name, args, kwargs)  # bad input raises here
        options = task.enqueue_options
        job_id = options.job_id or uuid.uuid4().hex
        if options.unique_for is not None:
            store = unique_store(session.states)  # no backend: raises before anything is sent
            key = unique_key(task.name, options, args, kwargs)
            held = await store.reserve_unique(key, job_id, ttl=options.unique_for)
            if held != job_id:
                for instrument in session.instruments.all:
                    instrument.deduplicated(task.name, task.options.queue, held)
                return Job(held, task.name, task.options.queue, self._backend)
            try:
                return await self._publish_job(task, args, kwargs, body, job_id, delay_ms, eta)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await store.release_unique(key, job_id)
                raise
        return await self._publish_job(task, args, kwargs, body, job_id, delay_ms, eta)

    async def _publish_job(
        self,
        task: Task[Any, R],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        body: bytes,
        job_id: str,
        delay_ms: int,
        eta: object,
    ) -> Job[R]:
        session = self._require_session()
        producer = session.producer
        if await producer.ensure_route(task.options.queue, delay_ms) and eta is not None:
            # a first-time declaration took a while: an eta is not missed by its time
            delay_ms = _delay_ms(None, eta)
        destination = None
        if is_fair(task):
            queue = task.options.queue
            (shard,) = await session.fair.shards(queue, [tenant_of(task, args, kwargs)])
            destination = fair_destination(queue, shard)
        # stamped after any declaration, so the delay counts from the publish
        envelope = _envelope(task, args, kwargs, delay_ms, job_id=job_id)
        await producer.publish(
            producer.message(envelope, body, delay_ms=delay_ms, destination=destination)
        )
        if task.options.store_result:
            status = JobStatus.SCHEDULED if envelope.eta_ms is not None else JobStatus.QUEUED
            state = JobState(
                envelope.job_id,
                status,
                task=envelope.task,
                arguments=stored_arguments(task, args, kwargs, body),  # redacted here
                enqueued_at=envelope.enqueued_at_ms / 1000,
            )
            await session.states.record(state, ttl=task.options.result_ttl)
        return self._handle(envelope.job_id, envelope.task, envelope.queue)

    async def _enqueue_workflow(self, flow: Node) -> Job[Any] | GroupJob:
        session = self._require_session()
        if needs_backend(flow):
            session.states.require_backend("a workflow with a group, a chord or an error callback")
        root = uuid.uuid4().hex
        flow = assign_ids(flow, root)
        await session.flows.start(flow, root=root)
        handles: list[Job[Any]] = [self._handle(job_id, root=root) for job_id in final_ids(flow)]
        if isinstance(flow, Group) or len(handles) != 1:
            return GroupJob(handles)
        return handles[0]

    async def enqueue_many(
        self,
        task: Task[P, R],
        calls: Iterable[Call[P] | Sequence[Any] | Mapping[str, Any]],
        /,
        *,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        expires: float | dt.datetime | None = None,
    ) -> BatchResult[R]:
        """Send many jobs of one task with pipelined confirms; return when all are settled.

        Each item of `calls` is ``task.call(...)`` (its arguments checked by a type checker,
        as `enqueue`'s are), a sequence of positional arguments, or a mapping of keyword
        arguments. Every job is encoded before the first is published, so bad input publishes
        nothing. `delay` or `eta` delay them all, as in `enqueue_in` / `enqueue_at`;
        `expires` gives them all a deadline, as ``task.with_options(expires=...)`` does.

        Returns:
            Every job's handle and the jobs the broker did not confirm (``result.failures``).

        Raises:
            EncodeError: an argument is not JSON (naming the call and the argument).
            ConfigurationError: a bad delay or eta, or both given; a bad or past `expires`;
                the queue is not open.
        """
        _check_task(task, "enqueue_many()")
        if task.enqueue_options.job_id is not None or task.enqueue_options.unique_for is not None:
            raise ConfigurationError(
                "enqueue_many() gives every job a fresh id: a task with_options(job_id=...) "
                "or with_options(unique_for=...) is for one enqueue() at a time"
            )
        if expires is not None:
            task = task.with_options(expires=expires)
        if delay is not None and eta is not None:
            raise ConfigurationError("give delay or eta, not both")
        delay_ms = _delay_ms(delay or 0, eta)
        session = self._require_session()
        producer = session.producer
        encoded = _encode_calls(producer.encode_body, task, calls)  # bad input raises here
        if await producer.ensure_route(task.options.queue, delay_ms) and eta is not None:
            delay_ms = _delay_ms(None, eta)  # as in `_enqueue`: an eta is not missed
        destinations: list[str | None] = [None] * len(encoded)
        if is_fair(task):
            queue = task.options.queue
            tenants = [tenant_of(task, args, kwargs) for args, kwargs, _ in encoded]
            shards = await session.fair.shards(queue, tenants)
            destinations = [fair_destination(queue, shard) for shard in shards]
        envelopes = [_envelope(task, args, kwargs, delay_ms) for args, kwargs, _ in encoded]
        messages = [
            producer.message(envelope, body, delay_ms=delay_ms, destination=destination)
            for envelope, (_, _, body), destination in zip(
                envelopes, encoded, destinations, strict=True
            )
        ]
        failures = await producer.publish_many(messages)
        if session.states.active and task.options.store_result:
            # as `enqueue` does, for the confirmed jobs, in one round trip
            lost = {failure.job_id for failure in failures}
            status = JobStatus.SCHEDULED if delay_ms > 0 else JobStatus.QUEUED
            await session.states.record_many(
                [
                    JobState(
                        e.job_id,
                        status,
                        task=e.task,
                        arguments=stored_arguments(task, args, kwargs, body),  # redacted here
                        enqueued_at=e.enqueued_at_ms / 1000,
                    )
                    for e, (args, kwargs, body) in zip(envelopes, encoded, strict=True)
                    if e.job_id not in lost
                ],
                ttl=task.options.result_ttl,
            )
        jobs: list[Job[R]] = [self._handle(e.job_id, e.task, e.queue) for e in envelopes]
        return BatchResult(jobs, failures)


_Encoded = tuple[tuple[Any, ...], Mapping[str, Any], bytes]


def _encode_calls(
    encode: Callable[[str, Sequence[Any], Mapping[str, Any]], bytes],
    task: Task[Any, Any],
    calls: Iterable[Call[Any] | Sequence[Any] | Mapping[str, Any]],
) -> list[_Encoded]:
    """Encode every call (raising on the first bad one, naming it), reading `calls` once."""
    encoded: list[_Encoded] = []
    for index, call in enumerate(calls):
        args: tuple[Any, ...]
        kwargs: Mapping[str, Any]
        if isinstance(call, Call):
            args, kwargs = call.args, call.kwargs
        elif isinstance(call, Mapping):
            args, kwargs = (), call
        else:
            args, kwargs = tuple(call), {}
        try:
            encoded.append((args, kwargs, encode(task.name, args, kwargs)))
        except EncodeError as exc:
            raise EncodeError(f"call {index}: {exc}") from exc
    return encoded


def _check_task(task: object, where: str) -> None:
    if not isinstance(task, Task):
        raise ConfigurationError(
            f"{where} needs a function registered with @queue.task, not {task!r}"
        )


def _delay_ms(delay: object, eta: object) -> int:
    """The delay in milliseconds from a delay or an eta (the other being None).

    Raises:
        ConfigurationError: a bad delay or eta.
    """
    if eta is not None:
        return eta_to_delay_ms(eta, time.time())
    return delay_to_ms(delay)


def _envelope(
    task: Task[Any, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    delay_ms: int,
    *,
    job_id: str | None = None,
) -> Envelope:
    """A new job of `task`, stamped now (with a fresh id unless `job_id` is given).

    Raises:
        ConfigurationError: its ``expires`` deadline is in the past, or not after it is due.
    """
    now_ms = time.time_ns() // 1_000_000
    expires_at_ms = expiry_ms(task.options.expires, now_ms)
    if expires_at_ms is not None and delay_ms > 0 and expires_at_ms <= now_ms + delay_ms:
        raise ConfigurationError(
            f"job of {task.name} would expire before it is due (expires={task.options.expires!r}, "
            f"due in {delay_ms / 1000:g}s): it could never run"
        )
    return Envelope(
        job_id=job_id or uuid.uuid4().hex,
        task=task.name,
        queue=task.options.queue,
        args=tuple(args),
        kwargs=kwargs,
        enqueued_at_ms=now_ms,
        eta_ms=now_ms + delay_ms if delay_ms > 0 else None,
        options=task.overrides,
        expires_at_ms=expires_at_ms,
    )


class _TaskDecorator:
    """What ``@queue.task(...)`` returns before it sees the function."""

    def __init__(self, registry: TaskRegistry, options: TaskOptionsDict) -> None:
        self._registry = registry
        self._options = options

    def check(self) -> None:
        make_task(_probe, self._options)

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Task[Any, Any]:
        task = make_task(fn, self._options)
        self._registry.add(task)
        return task


def _probe(**_: Any) -> None:
    """A stand-in function to validate decorator options before the real one arrives.

    It takes any keyword, so key options (``rate_limit_key=...``) are checked against the
    real function's parameters when it arrives.
    """
