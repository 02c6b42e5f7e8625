"""Publishing: declare on first use, encode, publish confirmed, retried until a deadline.

The `Producer` of an open `TaskQueue` (one per `Session`) is the only way jobs reach the
broker: enqueues, workflow steps, a worker's retry copies and dead letters, dead-letter
replays. Every publish goes through the instrumentation hooks here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from aqueue._core.config import ProducerSettings, QueueSettings
from aqueue._core.delays import delay_topology, delay_units
from aqueue._core.queues import queue_topology
from aqueue._core.topology import Topology, TopologyNames
from aqueue._core.wire import Envelope, OutgoingMessage, job_message
from aqueue._observability.hooks import Instrumentation, Instruments, publish_hooks
from aqueue._results.handles import Job
from aqueue._serialization import encode_arguments
from aqueue._transport import Transport
from aqueue.exceptions import (
    BrokerBlocked,
    ConnectionLost,
    EncodeError,
    PublishError,
    PublishNacked,
    PublishTimeout,
    TransportError,
    Unroutable,
)

R = TypeVar("R")

logger = logging.getLogger("aqueue.producer")

#: Pause before the first retry of a publish that lost its connection; it doubles on each
#: further retry up to `RETRY_PAUSE_MAX` (the deadline still bounds the whole publish).
RETRY_PAUSE_MIN = 0.05
RETRY_PAUSE_MAX = 1.0
#: The longest pause between two publishes of a message the broker nacked or did not confirm.
#: Shorter than after a lost connection: the broker is there and a new quorum leader takes
#: over within seconds, after which the next attempt (on a fresh channel) is confirmed.
REFUSED_PAUSE_MAX = 0.25
#: How long a patient publish (a worker settling a job) waits for its confirm while the
#: connection lives: in effect, for as long as a resource alarm blocks the connection.
PATIENT_CONFIRM_TIMEOUT = 86400.0


@dataclass(frozen=True, slots=True)
class PublishFailure:
    """One message of a batch that was not confirmed."""

    index: int
    job_id: str
    error: TransportError


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[R]):
    """What `enqueue_many` returns.

    Attributes:
        jobs: a handle for every job, in input order (failed ones included).
        failures: the jobs that were not confirmed, with their error, in input order.
    """

    jobs: Sequence[Job[R]]
    failures: Sequence[PublishFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every job was confirmed."""
        return not self.failures

    @property
    def confirmed(self) -> int:
        """How many jobs the broker confirmed."""
        return len(self.jobs) - len(self.failures)


class Producer:
    """Publishes on one transport with confirms, retrying until ``publish_deadline``.

    Retried: a lost connection (after the reconnect), a nack and a confirm that did not come
    in time (on a fresh channel: the transport retires the one that failed); not retried: an
    unroutable message and a connection blocked by a resource alarm. A retried publish keeps
    its ``message_id`` (the job id): a nacked copy, or one whose confirm was lost, may have
    been stored anyway, so a duplicate is possible and recognisable.
    It also declares what a job needs on its way, once per open: its queue's topology, and the
    delay levels on the first delayed publish (most applications never delay).
    """

    def __init__(
        self,
        transport: Transport,
        names: TopologyNames,
        queue_settings: QueueSettings,
        settings: ProducerSettings,
        instruments: Instruments,
    ) -> None:
        self._transport = transport
        self._names = names
        self._queue_settings = queue_settings
        self._settings = settings
        self._instruments = instruments
        self._declared: set[str] = set()
        self._delays_declared = False
        # Concurrent first enqueues wait for one declaration instead of each declaring
        # everything again (1,000 concurrent delayed enqueues made 1,000 declarations).
        self._declare_lock = anyio.Lock()

    def encode_body(self, task: str, args: Sequence[object], kwargs: Mapping[str, object]) -> bytes:
        """The body of a job of `task`: its arguments as JSON.

        Raises:
            EncodeError: an argument is not JSON, or the body is over the size limit.
        """
        body = encode_arguments(args, kwargs)
        if len(body) > self._settings.max_message_bytes:
            raise EncodeError(
                f"job {task} encodes to {len(body)} bytes, over the limit of "
                f"{self._settings.max_message_bytes} (max_message_bytes); store large data "
                "elsewhere and pass a reference"
            )
        return body

    def message(
        self, envelope: Envelope, body: bytes, *, delay_ms: int = 0, destination: str | None = None
    ) -> OutgoingMessage:
        """The message of a job for its work queue, through the delay levels if `delay_ms` > 0.

        `destination`: a fair-share shard of its queue instead (see `aqueue._client.fair`).
        """
        return job_message(self._names, envelope, body, delay_ms=delay_ms, destination=destination)

    def encode(self, envelope: Envelope, *, delay_ms: int = 0) -> OutgoingMessage:
        """`encode_body` and `message` in one.

        Raises:
            EncodeError: an argument is not JSON, or the body is over the size limit.
        """
        body = self.encode_body(envelope.task, envelope.args, envelope.kwargs)
        return self.message(envelope, body, delay_ms=delay_ms)

    # -- declarations ----------------------------------------------------------------------

    def delays_declared(self) -> bool:
        """Whether the delay levels were declared since the queue opened."""
        return self._delays_declared

    def route_ready(self, queue: str, delay_ms: int) -> bool:
        """Whether everything a job to `queue` after `delay_ms` needs is declared already."""
        return queue in self._declared and (self._delays_declared or delay_units(delay_ms) == 0)

    async def ensure_route(self, queue: str, delay_ms: int) -> bool:
        """Declare what a job needs on its way (its queue; the delay levels if delayed).

        Returns:
            True if it had to wait for a declaration (its own or a concurrent caller's): a
            job's times stamped before that wait should be stamped again.
        """
        if self.route_ready(queue, delay_ms):
            return False
        await self.declare_queue(queue)
        if delay_units(delay_ms) > 0:
            await self.declare_delays()
        return True

    async def declare_queue(self, queue: str) -> bool:
        """Declare a logical queue's topology (once per open).

        Returns:
            True if it was declared by this call.
        """
        if queue in self._declared:
            return False
        async with self._declare_lock:
            if queue in self._declared:  # a concurrent call declared it meanwhile
                return False
            await self.declare(queue_topology(self._names, queue, self._queue_settings))
            self._declared.add(queue)
        return True

    async def declare_delays(self) -> bool:
        """Declare the delay levels (once per open).

        Returns:
            True if they were declared by this call.
        """
        if self.delays_declared():
            return False
        async with self._declare_lock:
            if self.delays_declared():  # a concurrent call declared them meanwhile
                return False
            await self.declare(delay_topology(self._names, self._queue_settings))
            self._delays_declared = True
        return True

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, message: OutgoingMessage, *, patient: bool = False) -> None:
        """Publish and wait for the confirm, retrying until ``publish_deadline``.

        On a lost connection it waits for the reconnect; after a nack or a confirm timeout it
        pauses briefly; then it publishes the same message again. Every publish, whoever makes
        it, goes through the instrumentation's hooks here (once, around all its attempts).

        `patient` is for a worker settling a job with a copy (retry, dead letter): it waits
        for the confirm as long as the connection lives instead of ``publish_timeout``. A
        broker under a memory or disk alarm blocks the connection: the copy is written and
        will be stored when the alarm clears, so giving up (and running the job again) would
        make a duplicate of it, once per timeout.

        Raises:
            PublishNacked: still nacked at the deadline (the last copy was probably not stored;
                an earlier one may have been).
            PublishTimeout: no confirm for the last attempt before the deadline (it may be
                stored).
            BrokerBlocked: a resource alarm blocked the connection past ``publish_timeout``
                (not retried: a fresh channel is blocked too).
            Unroutable: no queue is bound for the message (not retried).
            ConnectionLost: still no connection at the deadline.
        """
        instrumentation = self._instruments.all
        if not instrumentation:
            await self._publish(message, patient)
        elif len(instrumentation) == 1:
            with instrumentation[0].publish(message) as sent:
                await self._publish(sent, patient)
        else:
            stack, sent = publish_hooks(instrumentation, message)
            with stack:
                await self._publish(sent, patient)

    async def _publish(
        self, message: OutgoingMessage, patient: bool = False, deadline: float | None = None
    ) -> None:
        settings = self._settings
        # one clock read per publish on the happy path: this is `enqueue_many`'s inner loop
        if deadline is None:
            deadline = anyio.current_time() + settings.publish_deadline
            timeout = (
                PATIENT_CONFIRM_TIMEOUT
                if patient
                else min(settings.publish_timeout, settings.publish_deadline)
            )
        else:  # a message of a batch, published again on its own: the batch's deadline
            timeout = min(settings.publish_timeout, max(deadline - anyio.current_time(), 0.001))
        pause = RETRY_PAUSE_MIN
        while True:
            try:
                await self._transport.publish(message, timeout=timeout)
            except ConnectionLost as exc:
                await self._wait_for_reconnect(deadline, exc, pause)
                pause = min(pause * 2, RETRY_PAUSE_MAX)
                logger.info("retrying publish of %s after reconnect", message.message_id)
            except (PublishNacked, PublishTimeout) as exc:
                if isinstance(exc, BrokerBlocked) or not await _pause_before(deadline, pause):
                    raise
                pause = min(pause * 2, REFUSED_PAUSE_MAX)
                logger.debug("retrying publish of %s after %r", message.message_id, exc)
            else:
                return
            if not patient:
                remaining = deadline - anyio.current_time()
                timeout = min(settings.publish_timeout, max(remaining, 0.001))

    async def declare(self, topology: Topology) -> None:
        """Declare on the publishing transport (no cache), retried across reconnects.

        Raises:
            ConnectionLost: still no connection at the deadline (``publish_deadline``).
        """
        deadline = anyio.current_time() + self._settings.publish_deadline
        pause = RETRY_PAUSE_MIN
        while True:
            try:
                await self._transport.declare(topology)
            except ConnectionLost as exc:
                await self._wait_for_reconnect(deadline, exc, pause)
                pause = min(pause * 2, RETRY_PAUSE_MAX)
            else:
                return

    async def _wait_for_reconnect(
        self, deadline: float, cause: ConnectionLost, pause: float
    ) -> None:
        # The pause comes first: a transport may raise ConnectionLost before it has noticed the
        # loss itself, and then `wait_connected` returns at once, without yielding to the event
        # loop; retrying straight away would spin and starve the very reconnect it waits for
        # (and, never reaching a checkpoint, would never see the deadline either).
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0)) as scope:
            await anyio.sleep(pause)
            await self._transport.wait_connected()
        if scope.cancelled_caught:
            raise ConnectionLost(
                f"no connection to the broker within publish_deadline="
                f"{self._settings.publish_deadline}s: {cause}"
            ) from cause

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[PublishFailure]:
        """Publish with pipelined confirms, at most ``max_in_flight`` unconfirmed at once.

        On a transport that batches (AMQP), in batches of ``publish_batch`` messages, each
        written at once (see `Transport.publish_batch`), ``max_in_flight // publish_batch``
        batches in flight; a message of a batch that failed in a way `publish` retries is
        published again on its own, within the same ``publish_deadline``.

        Returns:
            The messages that were not confirmed, in index order; empty when all were.
        """
        size = self._settings.publish_batch
        if self._transport.batches_publishes and size > 1 and len(messages) > 1:
            return await self._publish_batches(messages, size)
        failures: list[PublishFailure] = []
        # A fixed pool of senders, each taking the next message once its previous one is
        # settled: at most `max_in_flight` unconfirmed, started in index order, without a task
        # and a semaphore round per message (an anyio task costs more than the publish itself).
        pending = iter(enumerate(messages))

        async def sender() -> None:
            for index, message in pending:
                try:
                    await self.publish(message)
                except (PublishError, ConnectionLost) as exc:
                    failures.append(PublishFailure(index, message.message_id, exc))

        async with anyio.create_task_group() as tg:
            for _ in range(min(self._settings.max_in_flight, len(messages))):
                tg.start_soon(sender)
        failures.sort(key=lambda failure: failure.index)
        return failures

    async def _publish_batches(
        self, messages: Sequence[OutgoingMessage], size: int
    ) -> list[PublishFailure]:
        failures: list[PublishFailure] = []
        batches = iter(range(0, len(messages), size))

        async def sender() -> None:
            for start in batches:
                await self._publish_batch(messages[start : start + size], start, failures)

        senders = max(1, self._settings.max_in_flight // size)
        async with anyio.create_task_group() as tg:
            for _ in range(min(senders, -(-len(messages) // size))):
                tg.start_soon(sender)
        failures.sort(key=lambda failure: failure.index)
        return failures

    async def _publish_batch(
        self, batch: Sequence[OutgoingMessage], start: int, failures: list[PublishFailure]
    ) -> None:
        """One batch through the hooks and the transport, retried as `publish` retries.

        What a lost connection, a nack or a lost confirm failed goes again (as a smaller
        batch) after the reconnect or a pause, until ``publish_deadline``; an unroutable or
        blocked message fails at once, as with `publish`.
        """
        hooks = [_Hooks(self._instruments.all, message) for message in batch]
        try:
            errors = await self._send_batch([hook.message for hook in hooks])
        except BaseException as exc:
            for hook in hooks:
                hook.close(exc)
            raise
        for offset, (hook, error) in enumerate(zip(hooks, errors, strict=True)):
            hook.close(error)
            if error is not None:
                failures.append(PublishFailure(start + offset, hook.message.message_id, error))

    async def _send_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[PublishError | ConnectionLost | None]:
        settings = self._settings
        deadline = anyio.current_time() + settings.publish_deadline
        errors: list[PublishError | ConnectionLost | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        pause = RETRY_PAUSE_MIN
        while todo:
            remaining = deadline - anyio.current_time()
            timeout = min(settings.publish_timeout, max(remaining, 0.001))
            try:
                results = await self._transport.publish_batch(
                    [messages[i] for i in todo], timeout=timeout
                )
            except EncodeError:  # one by one, so that the error names its message
                for i in todo:
                    errors[i] = await self._publish_alone(messages[i], deadline)
                return errors
            except (ConnectionLost, PublishTimeout) as exc:
                results = [exc] * len(todo)
            todo = _record(todo, results, errors)
            if not todo:
                break
            lost = next((e for i in todo if isinstance(e := errors[i], ConnectionLost)), None)
            try:
                next_pause = await self._before_retry(deadline, pause, lost)
            except ConnectionLost as exc:  # no reconnect within the deadline
                for i in todo:
                    errors[i] = exc
                break
            if next_pause is None:
                break
            pause = next_pause
            logger.info("retrying %d publishes of a batch after %r", len(todo), errors[todo[0]])
            for i in todo:
                errors[i] = None
        return errors

    async def _publish_alone(
        self, message: OutgoingMessage, deadline: float
    ) -> PublishError | ConnectionLost | None:
        try:
            await self._publish(message, deadline=deadline)
        except (PublishError, ConnectionLost) as exc:
            return exc
        return None

    async def _before_retry(
        self, deadline: float, pause: float, lost: ConnectionLost | None
    ) -> float | None:
        """Wait for the reconnect (`lost`) or pause; the next pause, None: past the deadline."""
        if lost is not None:
            await self._wait_for_reconnect(deadline, lost, pause)
            return min(pause * 2, RETRY_PAUSE_MAX)
        if await _pause_before(deadline, pause):
            return min(pause * 2, REFUSED_PAUSE_MAX)
        return None


def _record(
    todo: Sequence[int],
    results: Sequence[BaseException | None],
    errors: list[PublishError | ConnectionLost | None],
) -> list[int]:
    """Note each failure of a batch attempt in `errors`; the indexes worth another attempt."""
    retry = []
    for i, result in zip(todo, results, strict=True):
        if isinstance(result, PublishError | ConnectionLost):
            errors[i] = result
            if not isinstance(result, Unroutable | BrokerBlocked):  # `publish` gives up too
                retry.append(i)
    return retry


class _Hooks:
    """The publish hooks of one message of a batch, entered now and closed with its outcome."""

    __slots__ = ("_stack", "message")

    def __init__(
        self, instrumentation: Sequence[Instrumentation], message: OutgoingMessage
    ) -> None:
        self._stack: contextlib.ExitStack | None = None
        if instrumentation:
            self._stack, message = publish_hooks(instrumentation, message)
        self.message = message

    def close(self, error: BaseException | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            if error is None:
                stack.__exit__(None, None, None)
            else:
                stack.__exit__(type(error), error, error.__traceback__)


async def _pause_before(deadline: float, pause: float) -> bool:
    """Sleep `pause` seconds before another attempt; False if that would pass `deadline`.

    The caller then raises the error it has rather than one more attempt cut short by the
    deadline: a failing publish raises within ``publish_deadline``, never after it.
    """
    if anyio.current_time() + pause >= deadline:
        return False
    await anyio.sleep(pause)
    return True
