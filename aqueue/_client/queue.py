"""`TaskQueue`: the composition root (transports, registry, producer) and the enqueue API."""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeVar, overload

import anyio
from typing_extensions import Unpack

from aqueue._client.deadletters import DeadLetterQueue
from aqueue._client.flows import Flows
from aqueue._client.producer import Producer
from aqueue._core.checks import is_number
from aqueue._core.config import DEFAULT_QUEUE, ProducerSettings, TaskOptionsDict
from aqueue._core.topology import (
    MAX_DELAY_MS,
    QueueSettings,
    QueueType,
    TopologyNames,
    delay_topology,
    delay_units,
    queue_topology,
)
from aqueue._core.wire import Envelope
from aqueue._observability.hooks import Instrumentation
from aqueue._results import JobState, JobStatus, ResultBackend
from aqueue._results.handles import BatchResult, GroupJob, Job
from aqueue._tasks.middleware import Middleware
from aqueue._tasks.task import Task, TaskRegistry, make_task
from aqueue._transport import OutgoingMessage, Transport
from aqueue._transport.amqp import AmqpTransport
from aqueue._transport.memory import MemoryBroker, MemoryTransport
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

P = ParamSpec("P")
R = TypeVar("R")

TransportRole = Literal["publisher", "consumer", "dead-letters"]

#: Marks the delay levels as declared in `TaskQueue._declared` (no queue name has a space).
_DELAY_LEVELS = "delay levels"


class TaskQueue:
    """Tasks, their queues and a connection to the broker.

    Use it as an async context manager (``async with queue:``, or in a FastAPI lifespan) to
    enqueue jobs; pass it to ``aqueue worker module:queue`` to run them.

    Args:
        url: an AMQP URL, or a list of them for a cluster (tried in turn, on connect and on
            every reconnect); ``"memory://"`` for an in-process broker (tests).
        prefix: the prefix of every exchange and queue name.
        queue_type: ``"quorum"`` (default: replicated, delivery limit) or ``"classic"``.
        delivery_limit: quorum queues dead-letter a message after this many unacked deliveries.
        publish_timeout: seconds to wait for one publisher confirm.
        publish_deadline: seconds a publish keeps retrying across reconnects.
        connect_timeout: seconds to wait for the broker when the queue opens.
        max_message_bytes: larger encoded jobs are refused at enqueue.
        max_in_flight: unconfirmed publishes `enqueue_many` keeps in flight.
        middleware: run around every job in workers, outermost first.
        instrumentation: hooks that observe every publish and every job (`Instrumentation`),
            after the OpenTelemetry one; more can be added with `instrument`.
        telemetry: install `aqueue._observability.otel.Telemetry` first: spans and trace context for
            every publish and job, and job metrics, through the OpenTelemetry API (no-ops
            until the application sets up an SDK).
        name: names the connections (visible in the RabbitMQ management UI).
        results: where job states and results are kept (`RedisResultBackend`); None:
            fire-and-forget, and asking for a result raises `ConfigurationError`.
        result_ttl: seconds job states and results are kept.
    """

    def __init__(
        self,
        url: str | Sequence[str] = "amqp://guest:guest@localhost/",
        *,
        prefix: str = "aqueue",
        queue_type: QueueType = "quorum",
        delivery_limit: int = 10,
        publish_timeout: float = 10.0,
        publish_deadline: float = 30.0,
        connect_timeout: float = 10.0,
        max_message_bytes: int = 1024 * 1024,
        max_in_flight: int = 1000,
        middleware: Sequence[Middleware] = (),
        instrumentation: Sequence[Instrumentation] = (),
        telemetry: bool = True,
        name: str = "aqueue",
        results: ResultBackend | None = None,
        result_ttl: float = 86400.0,
    ) -> None:
        self.urls = _check_urls(url)
        self.names = TopologyNames(prefix)
        self.queue_settings = QueueSettings(queue_type, delivery_limit)
        self.producer_settings = ProducerSettings(
            publish_timeout=publish_timeout,
            publish_deadline=publish_deadline,
            max_message_bytes=max_message_bytes,
            max_in_flight=max_in_flight,
            connect_timeout=connect_timeout,
        )
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        self.name = name
        if results is not None and not isinstance(results, ResultBackend):
            raise ConfigurationError(f"results must be a ResultBackend, not {results!r}")
        if not is_number(result_ttl, above=0):
            raise ConfigurationError(f"result_ttl must be a positive number, not {result_ttl!r}")
        self.results = results
        self.flows = Flows(self, results, float(result_ttl))
        self.registry = TaskRegistry()
        self._memory_broker = _memory_broker(self.urls[0])
        self._stack: AsyncExitStack | None = None
        self._transport: Transport | None = None
        self._producer: Producer | None = None
        # the logical queues declared since the queue opened, and _DELAY_LEVELS once the delay
        # levels are
        self._declared: set[str] = set()
        # Concurrent first enqueues wait for one declaration instead of each declaring
        # everything again (1,000 concurrent delayed enqueues made 1,000 declarations).
        self._declare_lock = anyio.Lock()
        self.instrumentation: tuple[Instrumentation, ...] = ()
        if telemetry:
            # imported here: a TaskQueue(telemetry=False) never loads OpenTelemetry
            from aqueue._observability.otel import Telemetry

            self.instrument(Telemetry())
        for instrument in instrumentation:
            self.instrument(instrument)

    def __repr__(self) -> str:
        return f"<TaskQueue prefix={self.names.prefix!r} tasks={len(list(self.registry))}>"

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
        decorator = _TaskDecorator(self, options)
        if fn is None:
            # validate now, so a typo fails where the decorator is written
            decorator.check()
            return decorator
        return decorator(fn)

    # -- lifecycle -------------------------------------------------------------------------

    def make_transport(self, role: TransportRole) -> Transport:
        """A new, unconnected transport; producers and workers each get their own connection."""
        if self._memory_broker is not None:
            return MemoryTransport(self._memory_broker, connection_name=f"{self.name}-{role}")
        return AmqpTransport(self.urls, connection_name=f"{self.name}-{role}")

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

        Raises:
            ConnectionFailed: no broker answered within ``connect_timeout``.
        """
        if self._stack is not None:
            return
        async with AsyncExitStack() as stack:
            transport = self.make_transport("publisher")
            await transport.connect(timeout=self.producer_settings.connect_timeout)
            stack.push_async_callback(transport.aclose)
            if self.results is not None:
                await self.results.open()
                stack.push_async_callback(self.results.aclose)
            self._transport = transport
            self._producer = Producer(
                transport, self.names, self.producer_settings, self.instrumentation
            )
            self._declared.clear()
            self._declare_lock = anyio.Lock()  # bound to this open's event loop
            for queue in sorted(self.registry.queues()):
                await self.declare_queue(queue)
            self._stack = stack.pop_all()

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        stack, self._stack = self._stack, None
        self._transport = None
        self._producer = None
        if stack is not None:
            await stack.aclose()

    def instrument(self, instrumentation: Instrumentation) -> None:
        """Add an instrumentation: it observes every later publish and job.

        Workers read the list when each delivery arrives.

        Raises:
            ConfigurationError: not an `Instrumentation`.
        """
        if not isinstance(instrumentation, Instrumentation):
            raise ConfigurationError(
                f"instrumentation must be an aqueue.Instrumentation, not {instrumentation!r}"
            )
        self.instrumentation = (*self.instrumentation, instrumentation)
        if self._producer is not None:
            self._producer.instrumentation = self.instrumentation

    @property
    def producer(self) -> Producer:
        """The producer of an open queue.

        Raises:
            ConfigurationError: the queue is not open (use ``async with queue:``).
        """
        if self._producer is None:
            raise ConfigurationError(
                "the TaskQueue is not open: use 'async with queue:' (or await queue.open())"
            )
        return self._producer

    @property
    def transport(self) -> Transport:
        """The publishing transport of an open queue."""
        if self._transport is None:
            raise ConfigurationError("the TaskQueue is not open: use 'async with queue:'")
        return self._transport

    async def declare_queue(self, queue: str) -> bool:
        """Declare a logical queue's topology on the publishing connection (once per open).

        Returns:
            True if it was declared by this call.
        """
        if queue in self._declared:
            return False
        async with self._declare_lock:
            if queue in self._declared:  # a concurrent call declared it meanwhile
                return False
            await self.producer.declare(queue_topology(self.names, queue, self.queue_settings))
            self._declared.add(queue)
        return True

    def job(self, job_id: str) -> Job[Any]:
        """A handle on any job by its id, e.g. in another process (``GET /jobs/{id}``)."""
        return Job(job_id, "", "", self.results)

    def dead_letters(self, queue: str = DEFAULT_QUEUE) -> DeadLetterQueue:
        """The dead-letter queue of a logical queue: list, find, replay and purge its jobs.

        Use it while the TaskQueue is open (``async with queue:``).

        Raises:
            ConfigurationError: `queue` is not a valid queue name.
        """
        return DeadLetterQueue(self, queue)

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
            ConfigurationError: a workflow with a group or an error callback, and no result
                backend.
        """
        if isinstance(task, Signature | Chain | Group | Chord):
            if args or kwargs:
                raise ConfigurationError("a workflow takes no further arguments at enqueue")
            return await self._enqueue_workflow(task)
        return await self._enqueue(task, args, kwargs, delay_ms=0, eta=None)

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
        return await self._enqueue(task, args, kwargs, delay_ms=delay_to_ms(delay), eta=None)

    async def enqueue_at(
        self, eta: dt.datetime, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        """Send one job that becomes due at `eta`, a timezone-aware datetime (past: now).

        Raises:
            ConfigurationError: a naive datetime, or one further than the longest delay.
            EncodeError, PublishError, ConnectionLost: as for `enqueue`.
        """
        delay_ms = eta_to_delay_ms(eta, time.time())
        return await self._enqueue(task, args, kwargs, delay_ms=delay_ms, eta=eta)

    async def _enqueue(
        self,
        task: Task[Any, R],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        delay_ms: int,
        eta: dt.datetime | None,
    ) -> Job[R]:
        producer = self.producer
        envelope = self._envelope(task, args, kwargs, delay_ms)
        message = producer.job_message(envelope, delay_ms=delay_ms)  # bad input raises here
        if await self._declare_route(envelope.queue, delay_ms):
            # a first-time declaration took a while: stamp the times again so the delay
            # counts from the publish, and an eta is not missed by the declaration's time
            if eta is not None:
                delay_ms = eta_to_delay_ms(eta, time.time())
            envelope = self._envelope(task, args, kwargs, delay_ms)
            message = producer.job_message(envelope, delay_ms=delay_ms)
        await producer.publish(message)
        status = JobStatus.SCHEDULED if envelope.eta_ms is not None else JobStatus.QUEUED
        if task.options.store_result:
            await self.flows.record(JobState(envelope.job_id, status, task=envelope.task))
        return Job(envelope.job_id, envelope.task, envelope.queue, self.results)

    async def _enqueue_workflow(self, flow: Node) -> Job[Any] | GroupJob:
        if needs_backend(flow):
            self.flows.require_backend("a workflow with a group, a chord or an error callback")
        root = uuid.uuid4().hex
        flow = assign_ids(flow, root)
        await self.flows.start(flow, root=root)
        handles: list[Job[Any]] = [Job(job_id, "", "", self.results) for job_id in final_ids(flow)]
        if isinstance(flow, Group) or len(handles) != 1:
            return GroupJob(handles)
        return handles[0]

    async def enqueue_many(
        self,
        task: Task[Any, R],
        calls: Iterable[Sequence[Any] | Mapping[str, Any]],
        /,
        *,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
    ) -> BatchResult[R]:
        """Send many jobs of one task with pipelined confirms; return when all are settled.

        Each item of `calls` is a sequence of positional arguments or a mapping of keyword
        arguments. Every job is encoded before the first is published, so bad input publishes
        nothing. `delay` or `eta` delay them all, as in `enqueue_in` / `enqueue_at`.

        Returns:
            Every job's handle and the jobs the broker did not confirm (``result.failures``).

        Raises:
            EncodeError: an argument is not JSON (naming the call and the argument).
            ConfigurationError: a bad delay or eta, or both given.
        """
        if not isinstance(task, Task):
            raise ConfigurationError(f"enqueue_many() needs a task, not {task!r}")
        if delay is not None and eta is not None:
            raise ConfigurationError("give delay or eta, not both")
        delay_ms = eta_to_delay_ms(eta, time.time()) if eta is not None else delay_to_ms(delay or 0)
        calls = list(calls)  # read twice when the times are stamped again
        envelopes, messages = self._batch(task, calls, delay_ms)  # bad input raises here
        if await self._declare_route(task.options.queue, delay_ms):
            # as in `_enqueue`: the delay counts from the publish, an eta is not missed
            if eta is not None:
                delay_ms = eta_to_delay_ms(eta, time.time())
            envelopes, messages = self._batch(task, calls, delay_ms)
        failures = await self.producer.publish_many(messages)
        if self.results is not None and task.options.store_result:
            # as `enqueue` does, for the confirmed jobs, in one round trip
            lost = {failure.job_id for failure in failures}
            status = JobStatus.SCHEDULED if delay_ms > 0 else JobStatus.QUEUED
            await self.flows.record_many(
                [JobState(e.job_id, status, task=e.task) for e in envelopes if e.job_id not in lost]
            )
        jobs: list[Job[R]] = [Job(e.job_id, e.task, e.queue, self.results) for e in envelopes]
        return BatchResult(jobs, failures)

    def _batch(
        self,
        task: Task[Any, Any],
        calls: Sequence[Sequence[Any] | Mapping[str, Any]],
        delay_ms: int,
    ) -> tuple[list[Envelope], list[OutgoingMessage]]:
        """Encode every call (raising on the first bad one) with times stamped now."""
        producer = self.producer
        envelopes = []
        messages = []
        for index, call in enumerate(calls):
            args, kwargs = ((), call) if isinstance(call, Mapping) else (tuple(call), {})
            try:
                envelope = self._envelope(task, args, kwargs, delay_ms)
                messages.append(producer.job_message(envelope, delay_ms=delay_ms))
            except EncodeError as exc:
                raise EncodeError(f"call {index}: {exc}") from exc
            envelopes.append(envelope)
        return envelopes, messages

    async def _declare_route(self, queue: str, delay_ms: int) -> bool:
        """Declare what a job needs on its way.

        Returns:
            True if it had to wait for a declaration (its own or a concurrent caller's): the
            job's times were stamped before that wait and must be stamped again.
        """
        delayed = delay_units(delay_ms) > 0
        if queue in self._declared and (_DELAY_LEVELS in self._declared or not delayed):
            return False
        await self.declare_queue(queue)
        if delayed:
            await self.declare_delays()
        return True

    async def declare_delays(self) -> bool:
        """Declare the delay levels once per open (on first use: most apps never delay).

        Returns:
            True if they were declared by this call.
        """
        if _DELAY_LEVELS in self._declared:
            return False
        async with self._declare_lock:
            if _DELAY_LEVELS in self._declared:  # a concurrent call declared them meanwhile
                return False
            await self.producer.declare(delay_topology(self.names, self.queue_settings))
            self._declared.add(_DELAY_LEVELS)
        return True

    def _envelope(
        self, task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any], delay_ms: int
    ) -> Envelope:
        if not isinstance(task, Task):
            raise ConfigurationError(
                f"enqueue() needs a function registered with @queue.task, not {task!r}"
            )
        now_ms = time.time_ns() // 1_000_000
        return Envelope(
            job_id=uuid.uuid4().hex,
            task=task.name,
            queue=task.options.queue,
            args=tuple(args),
            kwargs=kwargs,
            enqueued_at_ms=now_ms,
            eta_ms=now_ms + delay_ms if delay_ms > 0 else None,
            options=task.overrides,
        )


def delay_to_ms(delay: object) -> int:
    """Milliseconds of a delay given as seconds or a timedelta.

    Raises:
        ConfigurationError: not a number or timedelta, negative, or over the longest delay.
    """
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if is_number(seconds, at_least=0):
        milliseconds = math.ceil(seconds * 1000)
    else:
        raise ConfigurationError(
            f"delay must be a number of seconds >= 0 or a timedelta, not {delay!r}"
        )
    if milliseconds > MAX_DELAY_MS:
        raise ConfigurationError(
            f"delay of {seconds}s is over the longest delay, {MAX_DELAY_MS // 1000}s (~31 days)"
        )
    return milliseconds


def eta_to_delay_ms(eta: object, now: float) -> int:
    """Milliseconds from `now` (Unix seconds) to a timezone-aware datetime; 0 if it is past.

    Raises:
        ConfigurationError: not a datetime, naive, or further than the longest delay.
    """
    if not isinstance(eta, dt.datetime):
        raise ConfigurationError(f"eta must be a datetime, not {eta!r}")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise ConfigurationError(
            f"eta {eta.isoformat()} is naive: give a timezone-aware datetime "
            "(e.g. datetime.now(timezone.utc) + timedelta(...))"
        )
    return delay_to_ms(max(0.0, eta.timestamp() - now))


#: Named in-memory brokers: every TaskQueue("memory://name") in a process shares one, as two
#: applications share a vhost; "memory://" alone is private to its TaskQueue.
_NAMED_BROKERS: weakref.WeakValueDictionary[str, MemoryBroker] = weakref.WeakValueDictionary()


def _memory_broker(url: str) -> MemoryBroker | None:
    if not url.startswith("memory://"):
        return None
    name = url.removeprefix("memory://").strip("/")
    if not name:
        return MemoryBroker()
    broker = _NAMED_BROKERS.get(name)
    if broker is None:
        broker = _NAMED_BROKERS[name] = MemoryBroker()
    return broker


def _check_urls(url: object) -> tuple[str, ...]:
    # run-time input: not every caller runs mypy
    urls = (url,) if isinstance(url, str) else tuple(url) if isinstance(url, Sequence) else ()
    if not urls or not all(isinstance(u, str) and "://" in u for u in urls):
        raise ConfigurationError(f"url must be an AMQP URL or a list of them, not {url!r}")
    return tuple(str(u) for u in urls)


class _TaskDecorator:
    """What ``@queue.task(...)`` returns before it sees the function."""

    def __init__(self, queue: TaskQueue, options: TaskOptionsDict) -> None:
        self._queue = queue
        self._options = options

    def check(self) -> None:
        make_task(_probe, self._options)

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Task[Any, Any]:
        task = make_task(fn, self._options)
        self._queue.registry.add(task)
        return task


def _probe() -> None:
    """A stand-in function to validate decorator options before the real one arrives."""
