"""Publishing: envelope → message → confirmed publish, retried across reconnects to a deadline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from aqueue._core.config import ProducerSettings
from aqueue._core.topology import Topology, TopologyNames, job_route
from aqueue._core.wire import Envelope
from aqueue._observability.hooks import Instrumentation, publish_hooks
from aqueue._serialization import CONTENT_TYPE, encode_arguments
from aqueue._transport import OutgoingMessage, Transport
from aqueue.exceptions import ConnectionLost, EncodeError, PublishError, TransportError

logger = logging.getLogger("aqueue.producer")

#: Pause before the first retry of a publish that lost its connection; it doubles on each
#: further retry up to `RETRY_PAUSE_MAX` (the deadline still bounds the whole publish).
RETRY_PAUSE_MIN = 0.05
RETRY_PAUSE_MAX = 1.0


@dataclass(frozen=True, slots=True)
class PublishFailure:
    """One message of a batch that was not confirmed."""

    index: int
    job_id: str
    error: TransportError


class Producer:
    """Publishes messages on one transport with confirms, retrying only on lost connections.

    A retried publish keeps its ``message_id`` (the job id): a confirm lost with the
    connection may hide a message that was stored, so a duplicate is possible and recognisable.
    """

    def __init__(
        self,
        transport: Transport,
        names: TopologyNames,
        settings: ProducerSettings,
        instrumentation: Sequence[Instrumentation] = (),
    ) -> None:
        self._transport = transport
        self._names = names
        self._settings = settings
        #: Hooks around every publish (tracing adds the trace context to the headers).
        self.instrumentation: tuple[Instrumentation, ...] = tuple(instrumentation)

    def job_message(self, envelope: Envelope, *, delay_ms: int = 0) -> OutgoingMessage:
        """Encode a job for its work queue, through the delay levels when `delay_ms` > 0.

        Raises:
            EncodeError: an argument is not JSON, or the body is over the size limit.
        """
        body = encode_arguments(envelope.args, envelope.kwargs)
        if len(body) > self._settings.max_message_bytes:
            raise EncodeError(
                f"job {envelope.task} encodes to {len(body)} bytes, over the limit of "
                f"{self._settings.max_message_bytes} (max_message_bytes); store large data "
                "elsewhere and pass a reference"
            )
        exchange, routing_key = job_route(self._names, envelope.queue, delay_ms)
        return OutgoingMessage(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            message_id=envelope.job_id,
            headers=envelope.headers(),
            content_type=CONTENT_TYPE,
            timestamp=envelope.enqueued_at_ms // 1000,
        )

    async def publish(self, message: OutgoingMessage) -> None:
        """Publish and wait for the confirm; on a lost connection wait for the reconnect and retry.

        Every publish, whoever makes it, goes through the instrumentation's hooks here.

        Raises:
            PublishError: nacked, unroutable, blocked or timed out (not retried: the broker
                answered, or may have stored it).
            ConnectionLost: still no connection at the deadline (``publish_deadline``).
        """
        instrumentation = self.instrumentation
        if not instrumentation:
            await self._publish(message)
        elif len(instrumentation) == 1:
            with instrumentation[0].publish(message) as sent:
                await self._publish(sent)
        else:
            stack, sent = publish_hooks(instrumentation, message)
            with stack:
                await self._publish(sent)

    async def _publish(self, message: OutgoingMessage) -> None:
        settings = self._settings
        # one clock read per publish on the happy path: this is `enqueue_many`'s inner loop
        deadline = anyio.current_time() + settings.publish_deadline
        timeout = min(settings.publish_timeout, settings.publish_deadline)
        pause = RETRY_PAUSE_MIN
        while True:
            try:
                await self._transport.publish(message, timeout=timeout)
            except ConnectionLost as exc:
                await self._wait_for_reconnect(deadline, exc, pause)
                pause = min(pause * 2, RETRY_PAUSE_MAX)
                logger.info("retrying publish of %s after reconnect", message.message_id)
                remaining = deadline - anyio.current_time()
                timeout = min(settings.publish_timeout, max(remaining, 0.001))
            else:
                return

    async def declare(self, topology: Topology) -> None:
        """Declare on the publishing transport, retried across reconnects like a publish.

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

        Returns:
            The messages that were not confirmed, in index order; empty when all were.
        """
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
