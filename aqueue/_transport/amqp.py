"""The AMQP transport: aio-pika's robust connection, publisher confirms, manual acks.

The only module that imports aio-pika, aiormq and pamqp (docs/rabbitmq-behaviour.md has the
measurements).

- **Connection**: one aio-pika `RobustConnection` (its reconnect loop), named in
  ``client_properties``; `_RotatingConnection` adds failover over several URLs.
- **Channels are plain aiormq channels, managed here**: aio-pika's robust channels restore
  themselves *before* its reconnect callbacks run, so a consumer would come back before its
  queue. Here a reconnect re-declares the remembered topology, *then* resumes consumers on new
  channels, *then* lets `wait_connected` return. Declarations and lookups use throwaway
  channels: a 404 or 406 closes the channel it happens on.
- **Publishing** hands frames to aiormq's ``basic_publish`` on one confirming channel: confirms
  are pipelined across concurrent calls, with no lock or round trip of ours on the hot path.
- **Stale deliveries**: a delivery keeps the aiormq channel that delivered it, and aiormq never
  reopens a channel object, so settling it after its channel died raises `ConnectionLost`; it
  never reaches a newer channel, where its tag would name another message (or cause a 406).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import math
import struct
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import aiormq
import aiormq.abc
import anyio
import anyio.lowlevel
from aio_pika import RobustConnection
from aiormq import exceptions as amqp
from pamqp import commands as spec
from pamqp import encode as pamqp_encode
from pamqp.common import FieldTable
from yarl import URL

from aqueue._core.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology
from aqueue._core.types import HeaderValue
from aqueue._transport.base import Consumer, Delivery, DeliveryCallback, OutgoingMessage, Transport
from aqueue.exceptions import (
    BrokerBlocked,
    ConfigurationError,
    ConnectionFailed,
    ConnectionLost,
    EncodeError,
    PublishNacked,
    PublishTimeout,
    QueueNotFound,
    TransportError,
    Unroutable,
)

__all__ = ["AmqpDelivery", "AmqpTransport"]

log = logging.getLogger(__name__)

#: Bound on every broker round trip but publish (which has its own timeout): a silently dead
#: link is noticed only after three missed heartbeats.
OPERATION_TIMEOUT = 30.0
#: `aclose` never takes longer than this, even when the broker does not answer.
CLOSE_TIMEOUT = 5.0
#: "The channel or the connection is gone", in aiormq's and asyncio's words.
_LOST = (amqp.AMQPError, amqp.ChannelInvalidStateError, ConnectionError)
_Channel = aiormq.abc.AbstractChannel


def _cancelled_by_caller() -> bool:
    # aiormq fails the futures of a dying channel with CancelledError too (a BaseException):
    # only a cancellation requested on *this* task may propagate as one.
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn "the channel or the connection went away" into `ConnectionLost`."""
    try:
        yield
    except asyncio.CancelledError as exc:
        if _cancelled_by_caller():
            raise
        raise ConnectionLost(f"{what}: the channel closed") from exc
    except TimeoutError as exc:
        raise ConnectionLost(f"{what}: no answer from the broker in time") from exc
    except _LOST as exc:
        raise ConnectionLost(f"{what}: {exc!r}") from exc


@contextlib.contextmanager
def _refused(what: str) -> Iterator[None]:
    """Turn a declaration the broker refused (406, 403, 404) into `ConfigurationError`."""
    try:
        yield
    except amqp.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"{what} already exists with different arguments ({_reason(exc)}); delete it "
            "or declare it with the same settings"
        ) from exc
    except (amqp.ChannelAccessRefused, amqp.ChannelNotFoundEntity) as exc:
        raise ConfigurationError(f"{what} was refused: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else repr(exc)


def _missing(queue: str, exc: amqp.ChannelNotFoundEntity) -> QueueNotFound:
    return QueueNotFound(f"queue {queue!r} does not exist ({_reason(exc)})")


def _is_consumer_timeout(reason: BaseException | None) -> bool:
    """Whether a channel was closed for RabbitMQ's consumer_timeout (406, measured text)."""
    return isinstance(reason, amqp.ChannelPreconditionFailed) and (
        "delivery acknowledgement" in _reason(reason) and "timed out" in _reason(reason)
    )


def _safe_url(url: URL) -> str:
    return str(url.with_password("******") if url.password else url)


async def _close_quietly(channel: _Channel | None) -> None:
    if channel is None or channel.is_closed:
        return
    # Shielded and bounded: this runs in `finally` blocks of cancelled operations.
    with anyio.move_on_after(CLOSE_TIMEOUT, shield=True), contextlib.suppress(*_LOST):
        await channel.close()


_PLAIN = frozenset({str, int, bool, float, type(None)})


def _header_value(value: object) -> HeaderValue:
    """A header value as a `HeaderValue`: pamqp decodes more types than aqueue writes."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):  # byte arrays, non-UTF-8 strings
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):  # a naive one is UTC in AMQP
        return calendar.timegm(value.utctimetuple())
    if isinstance(value, Mapping):
        return {str(key): _header_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_header_value(item) for item in value]
    return str(value)


def _table(value: Mapping[str, Any]) -> bytes:
    """A field table, or `EncodeError` for what RabbitMQ cannot take (nothing is sent then)."""
    parts = []
    for key, item in sorted(value.items()):
        try:
            parts.append(pamqp_encode.short_string(key))
            parts.append(_table_value(item))
        except (TypeError, ValueError, OverflowError, struct.error) as exc:
            raise EncodeError(f"header {key!r} cannot be sent: {exc}") from exc
    data = b"".join(parts)
    return struct.pack(">I", len(data)) + data


def _table_value(value: object) -> bytes:
    if isinstance(value, float):
        if not math.isfinite(value):
            # RabbitMQ cannot hold one: it would close the whole connection (541)
            raise ValueError(f"{value!r} is not a finite number")
        return b"d" + struct.pack(">d", value)  # pamqp would send a 32-bit float ('f')
    if isinstance(value, Mapping):
        return b"F" + _table(value)
    if isinstance(value, list | tuple):
        data = b"".join(_table_value(item) for item in value)
        return b"A" + struct.pack(">I", len(data)) + data
    return pamqp_encode.encode_table_value(value)  # type: ignore[arg-type]


class _Properties(spec.Basic.Properties):
    """Basic properties whose header floats travel as 64-bit doubles.

    pamqp encodes every float in a field table as a 32-bit ``f``: ``timeout=0.1`` arrived as
    0.10000000149 and a value over 3.4e38 could not be sent at all. No ``__slots__`` here:
    pamqp's ``marshal`` walks the parent's.
    """

    def encode_property(self, name: str, value: Any) -> bytes:
        if name == "headers" and value:
            return _table(value)
        return super().encode_property(name, value)


class AmqpDelivery(Delivery):
    """A message received from RabbitMQ, bound to the aiormq channel that delivered it."""

    def __init__(
        self,
        message: aiormq.abc.DeliveredMessage,
        queue: str,
        unsettled: dict[AmqpDelivery, None] | None = None,
    ) -> None:
        delivery = message.delivery
        if not isinstance(delivery, spec.Basic.Deliver | spec.Basic.GetOk) or (
            delivery.delivery_tag is None
        ):
            raise TypeError(f"not a delivery: {delivery!r}")
        properties = message.header.properties
        self._channel = message.channel
        self._delivery_tag = delivery.delivery_tag
        self._settled = False
        # the consumer's unsettled deliveries on this channel: told when the channel dies
        self._unsettled = unsettled
        if unsettled is not None:
            unsettled[self] = None
        self.body = message.body
        # most values are plain already: convert only the others (this runs once per job);
        # mypy cannot narrow on `type(v) in _PLAIN`, which is exactly the HeaderValue scalars
        self.headers: Mapping[str, HeaderValue] = {
            k if type(k) is str else str(k): v if type(v) in _PLAIN else _header_value(v)  # type: ignore[misc]
            for k, v in (properties.headers or {}).items()
        }
        self.message_id = properties.message_id
        self.content_type = properties.content_type or ""
        self.routing_key = delivery.routing_key or ""
        self.exchange = delivery.exchange or ""
        self.queue = queue
        self.redelivered = bool(delivery.redelivered)

    def __repr__(self) -> str:
        return f"<AmqpDelivery {self.message_id!r} from {self.queue!r}>"

    async def ack(self) -> None:
        await self._settle(ack=True, requeue=False)

    async def reject(self, *, requeue: bool) -> None:
        await self._settle(ack=False, requeue=requeue)

    async def _settle(self, *, ack: bool, requeue: bool) -> None:
        if self._settled:  # never sent: a second ack of a tag closes the channel (406)
            raise ConnectionLost(f"{self!r} was already settled")
        self._settled = True
        if self._unsettled is not None:
            self._unsettled.pop(self, None)
        if self._channel.is_closed:
            raise ConnectionLost(f"the channel of {self!r} is gone; the broker redelivers it")
        try:  # not `with _translated(...)`: no message string and generator on each ack
            if ack:
                await self._channel.basic_ack(self._delivery_tag)
            else:
                await self._channel.basic_reject(self._delivery_tag, requeue=requeue)
        except (asyncio.CancelledError, TimeoutError, *_LOST):
            with _translated(f"settle {self!r}"):
                raise


class _RotatingConnection(RobustConnection):
    """A robust connection over several broker URLs (the nodes of a cluster).

    aio-pika's reconnect loop reads ``self.url`` on each attempt, calls ``_on_connection_close``
    after every failed attempt and when a live connection closes, and then sleeps
    ``reconnect_interval`` (read after the attempt). Moving to the next URL there gives failover
    without copying aio-pika's private loop; the pause is zero while the round has untried URLs.
    """

    def __init__(self, urls: Sequence[URL], *, reconnect_interval: float, **kwargs: Any) -> None:
        # fail_fast=False: the first connect retries like a reconnect; `connect` bounds it.
        super().__init__(urls[0], reconnect_interval=reconnect_interval, fail_fast=False, **kwargs)
        self._urls = tuple(urls)
        self._index = self._failures = 0
        self._interval = reconnect_interval
        self.last_error: BaseException | None = None

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not closing.cancelled():
            self.last_error = closing.exception() or self.last_error
        self._failures += 1
        self._index = (self._index + 1) % len(self._urls)
        self.url = self._urls[self._index]
        self.reconnect_interval = 0 if self._failures % len(self._urls) else self._interval
        await super()._on_connection_close(closing)

    def __str__(self) -> str:  # aio-pika logs attempts with it, after we moved to the next URL
        return ", ".join(map(_safe_url, self._urls))

    async def _on_connected(self) -> None:
        self._failures = 0
        self.reconnect_interval = self._interval
        await super()._on_connected()


class _AmqpConsumer(Consumer):
    """One subscription on a channel of its own, re-subscribed on a new one when that dies."""

    def __init__(
        self, transport: AmqpTransport, queue: str, prefetch: int, on_delivery: DeliveryCallback
    ) -> None:
        self._transport, self._queue = transport, queue
        self._prefetch, self._on_delivery = prefetch, on_delivery
        self._channel: _Channel | None = None
        self._tag: str | None = None
        self._lock = asyncio.Lock()
        self._cancelled = self._restarting = False
        self._unsettled: dict[AmqpDelivery, None] = {}  # on the current channel

    async def _subscribe(self) -> None:
        """Open a channel and subscribe, unless subscribed on a live channel already."""
        async with self._lock:
            if self._cancelled or (self._channel is not None and not self._channel.is_closed):
                return
            what = f"consume from {self._queue!r}"
            with _translated(what), anyio.fail_after(OPERATION_TIMEOUT):
                channel = await self._transport._open_channel(what)
                try:  # per-consumer prefetch: quorum queues refuse global QoS
                    await channel.basic_qos(prefetch_count=self._prefetch, global_=False)
                    ok = await channel.basic_consume(self._queue, self._on_message, no_ack=False)
                except BaseException as exc:
                    await _close_quietly(channel)
                    if isinstance(exc, amqp.ChannelNotFoundEntity):
                        raise _missing(self._queue, exc) from exc
                    raise
            self._channel, self._tag = channel, ok.consumer_tag
            unsettled = self._unsettled = {}
            channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
            channel.closing.add_done_callback(partial(self._on_channel_closed, channel, unsettled))

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        self._on_delivery(AmqpDelivery(message, self._queue, self._unsettled))

    def _on_channel_closed(
        self, channel: _Channel, unsettled: dict[AmqpDelivery, None], closing: asyncio.Future[Any]
    ) -> None:
        # The broker requeues what the channel held: runs of those jobs here must stop.
        lost = list(unsettled)
        unsettled.clear()
        reason = None if closing.cancelled() else closing.exception()
        if lost and _is_consumer_timeout(reason):
            log.error(
                "RabbitMQ closed the consumer channel of %r because a delivery was not acked "
                "within its consumer_timeout (%s): %d job(s) on it are cancelled here and will "
                "be delivered again. Jobs that run longer than consumer_timeout need a result "
                "backend (they are then acked early, under a lease) or a higher broker limit.",
                self._queue,
                _reason(reason) if reason is not None else "",
                len(lost),
            )
        for delivery in lost:
            delivery.mark_lost()
        if channel is self._channel and not self._cancelled:
            self._schedule_restart()

    def _on_broker_cancel(self, frame: spec.Basic.Cancel) -> None:
        # The broker ended the subscription (the queue was deleted, ...): closing the channel
        # takes the "channel died" path to a new subscription.
        if frame.consumer_tag == self._tag and not self._cancelled:
            log.warning("the broker cancelled the consumer of %r; re-subscribing", self._queue)
            self._transport._spawn(_close_quietly(self._channel))

    def _schedule_restart(self) -> None:
        if not self._restarting:
            self._restarting = True
            self._transport._spawn(self._restart())

    async def _restart(self) -> None:
        try:
            while not self._cancelled:
                await anyio.sleep(self._transport._reconnect_interval)
                if not self._transport._ready.is_set():
                    return  # a reconnect is under way: it resubscribes every consumer
                try:
                    await self._subscribe()
                except (TransportError, ConfigurationError) as exc:
                    log.warning("consumer of %r could not resubscribe: %s", self._queue, exc)
                else:
                    return
        finally:
            self._restarting = False

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._transport._consumers.pop(self, None)
        async with self._lock:  # a subscription under way finishes first: cancel that one
            channel, tag = self._channel, self._tag
        if channel is None or tag is None or channel.is_closed:
            return  # the subscription died with its channel
        # The channel stays open, so deliveries handed over stay settleable until `aclose`.
        what = f"cancel consumer of {self._queue!r}"
        with contextlib.suppress(ConnectionLost), _translated(what):
            await channel.basic_cancel(tag, timeout=OPERATION_TIMEOUT)


class AmqpTransport(Transport):
    """A `Transport` on RabbitMQ through aio-pika: one robust connection, named.

    Args:
        urls: broker URLs (``amqp://user:password@host:port/vhost``), tried in rotation on
            connect and on every reconnect; several URLs are the nodes of one cluster.
        connection_name: shown by RabbitMQ (management UI, ``rabbitmqctl``).
        reconnect_interval: the pause, in seconds, once every URL failed.
        heartbeat: AMQP heartbeat in seconds, unless a URL sets ``?heartbeat=``; a dead link
            is noticed after about three of them.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        connection_name: str,
        reconnect_interval: float = 1.0,
        heartbeat: int = 30,
    ) -> None:
        urls = [urls] if isinstance(urls, str) else urls  # a str is a Sequence[str] too
        if not urls:
            raise ConfigurationError("AmqpTransport needs at least one broker URL")
        self._urls = tuple(
            url if "heartbeat" in url.query else url.update_query(heartbeat=heartbeat)
            for url in map(URL, urls)
        )
        self._name = connection_name
        self._reconnect_interval = reconnect_interval
        self._connection: _RotatingConnection | None = None
        self._channel: _Channel | None = None  # publishing, with confirms
        self._get_channel: _Channel | None = None
        self._channel_lock, self._get_lock = asyncio.Lock(), asyncio.Lock()
        # What was declared, re-declared after each reconnect; by name, the latest wins.
        self._exchanges: dict[str, ExchangeSpec] = {}
        self._queues: dict[str, QueueSpec] = {}
        self._bindings: dict[BindingSpec, None] = {}
        self._consumers: dict[_AmqpConsumer, None] = {}  # an ordered set
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()  # connected *and* restored after a reconnect
        self._closed = False
        self._last_timestamp: tuple[int | None, datetime | None] = (None, None)

    def __repr__(self) -> str:
        return f"<AmqpTransport {self._name!r} {', '.join(map(_safe_url, self._urls))}>"

    # -- connection -------------------------------------------------------------------------

    async def connect(self, *, timeout: float) -> None:
        if self._closed or self._connection is not None:
            raise RuntimeError(f"{self!r} is already connected or closed")
        connection = self._connection = _RotatingConnection(
            self._urls,
            reconnect_interval=self._reconnect_interval,
            client_properties={"connection_name": self._name},
        )
        connection.close_callbacks.add(self._on_connection_closed)
        connection.reconnect_callbacks.add(self._on_reconnected)
        # One attempt must not eat the whole deadline when a host drops packets silently.
        attempt_timeout = max(1.0, min(timeout, 10.0) / len(self._urls))
        try:
            with anyio.fail_after(timeout):
                await connection.connect(timeout=attempt_timeout)
                await self._publishing_channel("connect")
        except (TimeoutError, ConnectionLost, *_LOST) as exc:
            await self._close_connection()
            urls = ", ".join(map(_safe_url, self._urls))
            raise ConnectionFailed(
                f"no RabbitMQ answered at {urls} within {timeout:g} s "
                f"(last error: {connection.last_error or exc!r})"
            ) from exc
        except BaseException:
            await self._close_connection()
            raise
        if self._amqp_connection() is not None:  # else a reconnect sets it once restored
            self._ready.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        tasks = tuple(self._tasks)
        for task in tasks:
            task.cancel()
        with anyio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
            await self._close_connection()
            await asyncio.gather(*tasks, return_exceptions=True)
        if scope.cancelled_caught:
            log.warning("%r did not close within %g s", self, CLOSE_TIMEOUT)

    async def _close_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:  # close() is what stops aio-pika's reconnect task
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await connection.close()

    async def wait_connected(self) -> None:
        if self._closed:
            raise ConnectionLost(f"{self!r} is closed")
        # Always yield: a `publish`, ConnectionLost, `wait_connected` retry loop must let the
        # event loop run the callbacks that notice the drop and reconnect.
        await anyio.lowlevel.checkpoint()
        await self._ready.wait()

    def _on_connection_closed(self, _sender: object, exc: BaseException | None) -> None:
        if self._ready.is_set():
            log.warning("%r lost its connection: %r", self, exc)
        self._ready.clear()

    async def _on_reconnected(self, _sender: object) -> None:
        # Called by aio-pika once reconnected; restore in dependency order.
        topology = Topology(
            tuple(self._exchanges.values()), tuple(self._queues.values()), tuple(self._bindings)
        )
        try:
            await self._declare(topology)
        except (TransportError, ConfigurationError) as exc:
            log.error("%r could not re-declare its topology: %s", self, exc)
        for consumer in tuple(self._consumers):
            try:
                await consumer._subscribe()
            except (TransportError, ConfigurationError) as exc:
                log.warning("%r could not resume a consumer: %s; retrying", self, exc)
                consumer._schedule_restart()
        if self._amqp_connection() is not None:  # else the next reconnect runs this again
            log.info("%r reconnected", self)
            self._ready.set()

    def _amqp_connection(self) -> aiormq.abc.AbstractConnection | None:
        transport = self._connection.transport if self._connection is not None else None
        if transport is None or transport.connection.is_closed:
            return None
        return transport.connection

    async def _open_channel(self, what: str, **options: Any) -> _Channel:
        connection = self._amqp_connection()
        if connection is None or self._closed:
            # aio-pika's close callbacks (which clear it) may not have run yet: not ready now.
            self._ready.clear()
            raise ConnectionLost(f"{what}: not connected to the broker")
        try:
            return await connection.channel(**{"publisher_confirms": False, **options})
        except RuntimeError as exc:  # aiormq: "connection closed"
            raise ConnectionLost(f"{what}: {exc}") from exc

    async def _publishing_channel(self, what: str, timeout: float = OPERATION_TIMEOUT) -> _Channel:
        """The publishing channel, reopened first if the broker or a drop closed it."""
        with _translated(what), anyio.fail_after(timeout):
            async with self._channel_lock:
                channel = self._channel
                if channel is None or channel.is_closed:
                    channel = self._channel = await self._open_channel(
                        what, publisher_confirms=True, on_return_raises=True
                    )
                return channel

    @contextlib.asynccontextmanager
    async def _throwaway(self, what: str, queue: str = "") -> AsyncIterator[_Channel]:
        """A channel for one operation: a 404 or 406 closes it and nothing else.

        With `queue`, a 404 means that queue does not exist: `QueueNotFound`.
        """
        with _translated(what), anyio.fail_after(OPERATION_TIMEOUT):
            channel = await self._open_channel(what)
            try:
                yield channel
            except amqp.ChannelNotFoundEntity as exc:
                if queue:
                    raise _missing(queue, exc) from exc
                raise
            finally:
                await _close_quietly(channel)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            coroutine.close()
            return
        task = asyncio.create_task(coroutine)  # owned here: aclose cancels and awaits it
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _timestamp(self, seconds: int | None) -> datetime | None:
        # whole seconds: consecutive publishes mostly share one, so reuse its datetime
        if seconds is None:
            return None
        if seconds != self._last_timestamp[0]:
            self._last_timestamp = (seconds, datetime.fromtimestamp(seconds, UTC))
        return self._last_timestamp[1]

    def _blocked(self) -> bool:
        # aiormq tracks connection.blocked only in a private Event: read it defensively, so
        # that a rename in aiormq degrades BrokerBlocked to PublishTimeout, not to a crash.
        unblocked = getattr(self._amqp_connection(), "_Connection__connection_unblocked", None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, message: OutgoingMessage, *, timeout: float) -> None:
        # The hot path: one frame to the writer, one future for the confirm; no lock of ours.
        if not self._ready.is_set():
            raise ConnectionLost("not connected to the broker" + " (closed)" * self._closed)
        channel = self._channel
        if channel is None or channel.is_closed:  # aiormq would write to a closed channel
            channel = await self._publishing_channel("reopen the publishing channel", timeout)
        headers: FieldTable = message.headers  # type: ignore[assignment]
        properties = _Properties(
            content_type=message.content_type or None,  # "": none, as received
            headers=headers,
            delivery_mode=2,
            message_id=message.message_id,
            timestamp=self._timestamp(message.timestamp),
        )
        try:
            await channel.basic_publish(
                message.body,
                exchange=message.exchange,
                routing_key=message.routing_key,
                properties=properties,
                mandatory=True,
                timeout=timeout,
            )
        except (amqp.DeliveryError, TimeoutError, asyncio.CancelledError, *_LOST) as exc:
            error = self._publish_error(exc, message, timeout)
            if error is None:
                raise
            raise error from exc

    def _publish_error(
        self, exc: BaseException, message: OutgoingMessage, timeout: float
    ) -> BaseException | None:
        """What a failed publish raises; None for the caller's own cancellation."""
        what = f"message {message.message_id!r} to {message.exchange!r}/{message.routing_key!r}"
        if isinstance(exc, amqp.PublishError):  # a Basic.Return; a DeliveryError too
            return Unroutable(f"{what} was returned: {_reason(exc)}")
        if isinstance(exc, amqp.DeliveryError):
            return PublishNacked(f"{what} was refused by the broker (basic.nack)")
        if isinstance(exc, amqp.ChannelNotFoundEntity) and (
            f"no exchange '{message.exchange}'" in _reason(exc)
        ):  # The broker closes the channel (404): every publish under way on it fails.
            return Unroutable(f"{what}: the exchange does not exist")
        if isinstance(exc, TimeoutError) and self._blocked():
            return BrokerBlocked(f"{what}: the broker blocked the connection for {timeout:g} s")
        if isinstance(exc, TimeoutError):
            return PublishTimeout(f"{what}: no confirm within {timeout:g} s")
        if isinstance(exc, asyncio.CancelledError) and _cancelled_by_caller():
            return None
        return ConnectionLost(f"{what}: the channel closed before the confirm ({exc!r})")

    # -- topology and queues ----------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        await self._declare(topology)
        self._exchanges.update((exchange.name, exchange) for exchange in topology.exchanges)
        self._queues.update((queue.name, queue) for queue in topology.queues)
        self._bindings.update(dict.fromkeys(topology.bindings))

    async def _declare(self, topology: Topology) -> None:
        if not (topology.exchanges or topology.queues or topology.bindings):
            return
        async with self._throwaway("declare topology") as channel:
            for exchange in topology.exchanges:
                if exchange.name:  # the default exchange exists and may not be declared
                    with _refused(f"exchange {exchange.name!r}"):
                        await channel.exchange_declare(
                            exchange.name, exchange_type=exchange.type, durable=exchange.durable
                        )
            for queue in topology.queues:
                arguments: FieldTable = dict(queue.arguments)
                with _refused(f"queue {queue.name!r}"):
                    await channel.queue_declare(
                        queue.name, durable=queue.durable, arguments=arguments
                    )
            for binding in topology.bindings:
                with _refused(f"binding of {binding.queue!r} to {binding.exchange!r}"):
                    if binding.to_exchange:  # messages flow from `exchange` into `queue`
                        await channel.exchange_bind(
                            binding.queue, binding.exchange, binding.routing_key
                        )
                    else:
                        await channel.queue_bind(
                            binding.queue, binding.exchange, routing_key=binding.routing_key
                        )

    async def delete_queue(self, queue: str) -> None:
        async with self._throwaway(f"delete queue {queue!r}") as channel:
            with contextlib.suppress(amqp.ChannelNotFoundEntity):
                await channel.queue_delete(queue)
        # Deleted on purpose: a reconnect must not bring it back.
        self._queues.pop(queue, None)
        for binding in [b for b in self._bindings if b.queue == queue and not b.to_exchange]:
            del self._bindings[binding]

    async def consume(
        self, queue: str, *, prefetch: int, on_delivery: DeliveryCallback
    ) -> Consumer:
        consumer = _AmqpConsumer(self, queue, prefetch, on_delivery)
        self._consumers[consumer] = None  # a reconnect meanwhile subscribes it too
        try:
            await consumer._subscribe()
        except BaseException:
            await consumer.cancel()
            raise
        return consumer

    async def get(self, queue: str) -> Delivery | None:
        what = f"get from {queue!r}"
        with _translated(what), anyio.fail_after(OPERATION_TIMEOUT):
            async with self._get_lock:
                # A long-lived channel: a delivery is settled on the channel it came from.
                channel = self._get_channel
                if channel is None or channel.is_closed:
                    channel = self._get_channel = await self._open_channel(what)
                try:
                    message = await channel.basic_get(queue, no_ack=False)
                except amqp.ChannelNotFoundEntity as exc:
                    raise _missing(queue, exc) from exc
        if isinstance(message.delivery, spec.Basic.GetEmpty):
            return None
        return AmqpDelivery(message, queue)

    async def message_count(self, queue: str) -> int:
        async with self._throwaway(f"count messages in {queue!r}", queue) as channel:
            ok = await channel.queue_declare(queue, passive=True)
        return ok.message_count or 0

    async def purge(self, queue: str) -> int:
        async with self._throwaway(f"purge {queue!r}", queue) as channel:
            ok = await channel.queue_purge(queue)
        return ok.message_count or 0
