"""The AMQP transport: aio-pika's robust connection, publisher confirms, manual acks.

With ``amqp_frames`` (frame encoding and the guard against undecodable properties), the only
module that imports aio-pika, aiormq and pamqp (docs/rabbitmq-behaviour.md has the
measurements).

- **Connection**: one aio-pika `RobustConnection` (its reconnect loop), named in
  ``client_properties``; `_RotatingConnection` adds failover over several URLs.
- **Channels are plain aiormq channels, managed here**: aio-pika's robust channels restore
  themselves *before* its reconnect callbacks run, so a consumer would come back before its
  queue. Here a reconnect re-declares the remembered topology, *then* resumes consumers on new
  channels, *then* lets `wait_connected` return. Declarations and lookups use throwaway
  channels: a 404 or 406 closes the channel it happens on.
- **Publishing** hands frames to aiormq's ``basic_publish`` on one confirming channel: confirms
  are pipelined across concurrent calls, with no lock or round trip of ours on the hot path. A
  nack or a lost confirm retires that channel (the next publish opens a fresh one, shared by
  every publish after it): a channel can stay nacked for good after a quorum leader's failure.
- **Stale deliveries**: a delivery keeps the aiormq channel that delivered it, and aiormq never
  reopens a channel object, so settling it after its channel died raises `ConnectionLost`; it
  never reaches a newer channel, where its tag would name another message (or cause a 406).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiormq
import aiormq.abc
import anyio
import anyio.lowlevel
from aio_pika import RobustConnection
from aiormq import exceptions as amqp
from pamqp import commands as spec
from pamqp.common import FieldTable
from yarl import URL

from aqueue._core.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology
from aqueue._core.types import HeaderValue
from aqueue._transport import amqp_batch
from aqueue._transport.amqp_frames import (
    MARKER,
    Properties,
    SanitizingTransportFactory,
    header_value,
    is_plain,
)
from aqueue._transport.base import (
    Consumer,
    Delivery,
    DeliveryCallback,
    NoticeCallback,
    OutgoingMessage,
    QueueInfo,
    Transport,
)
from aqueue._transport.settling import ChannelAcks
from aqueue._transport.urls import check_tls, redact_url
from aqueue.exceptions import (
    BrokerBlocked,
    ConfigurationError,
    ConnectionFailed,
    ConnectionLost,
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
#: A retired publishing channel is closed once the confirms still pending on it are settled, or
#: after this many seconds (each of those publishes has its own, shorter, timeout).
RETIRE_GRACE = OPERATION_TIMEOUT


class _AttemptsAtDebug(logging.Filter):
    """Logs aio-pika's and aiormq's lines about each connection attempt at DEBUG.

    They log every failed attempt as a WARNING or an ERROR ("Connection attempt to ... failed
    ... Reconnecting after 1.0 seconds", "error when creating transport"): 20 or 30 lines a
    failed connect, before aqueue's own one line (`ConnectionFailed`, or the transport's
    warning that it lost its connection). They stay available at DEBUG.
    """

    PREFIXES = (
        "Connection attempt to",
        "Connection to %s closed. Reconnecting",
        "Reconnect attempt failed",
        "error when creating transport",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not str(record.msg).startswith(self.PREFIXES):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


for _name in ("aio_pika.robust_connection", "aiormq.connection"):
    logging.getLogger(_name).addFilter(_AttemptsAtDebug())

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
    return redact_url(str(url))


#: TLS failures that are the peer closing or the network, not a verdict: retried like any drop.
_TRANSIENT_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
#: Seconds every URL must have refused TCP connections before the first connect gives up: a
#: broker that is restarting refuses for a moment, a port where nothing listens for good.
REFUSED_GRACE = 1.0


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then its causes and contexts (exception chains can loop)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _tls_refusal(error: BaseException | None) -> ssl.SSLError | None:
    """The TLS verdict behind a failed connection attempt, if that is what failed it.

    aiormq wraps the handshake's `ssl.SSLError` in an ``AMQPConnectionError``. A certificate
    that does not verify, a name it is not for, or a plain port answering a TLS hello fail
    every attempt the same way: retrying until the deadline would only hide the cause.
    """
    for cause in _chain(error):
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, _TRANSIENT_TLS):
            return cause
    return None


def _is_refused(error: BaseException | None) -> bool:
    """Whether a connection attempt failed because nothing listens there (ECONNREFUSED)."""
    return any(isinstance(cause, ConnectionRefusedError) for cause in _chain(error))


def _verdict(url: URL, error: BaseException | None) -> str | None:
    """What to tell the user when `error` failed an attempt the same way every retry would.

    A TLS handshake the broker refuses, a login it refuses (`ProbableAuthenticationError`:
    RabbitMQ's 403 ACCESS_REFUSED to Connection.StartOk) and a vhost it will not open (its
    Connection.Close, 530, in answer to Connection.Open: aiormq reports that as an
    ``InvalidFrameError`` naming the frame) are verdicts. Anything else may pass: None.
    """
    refusal = _tls_refusal(error)
    if refusal is not None:
        return _describe_tls(refusal)
    user = url.user or "guest"
    vhost = url.path[1:] or "/"
    for cause in _chain(error):
        if isinstance(cause, amqp.ProbableAuthenticationError | amqp.AuthenticationError):
            return (
                f"authentication failed for user {user!r} (check the user name and the "
                "password in the URL; the broker's log says why)"
            )
        if isinstance(cause, amqp.InvalidFrameError) and "Connection.Close" in str(cause):
            return (
                f"the broker refused to open vhost {vhost!r} for user {user!r}: it does not "
                f"exist, or the user has no permissions on it (rabbitmqctl list_vhosts; "
                f"rabbitmqctl list_permissions -p {vhost})"
            )
    return None


def _describe_failure(error: BaseException | None) -> str:
    """A failed connection attempt in one phrase: what failed and what to check."""
    if _is_refused(error):
        return (
            "connection refused (nothing listens there: is RabbitMQ running, and is this its "
            "AMQP port, 5672 by default?)"
        )
    refusal = _tls_refusal(error)
    if refusal is not None:
        return _describe_tls(refusal)
    for cause in _chain(error):
        if isinstance(cause, socket.gaierror):
            return f"the host name does not resolve ({cause.strerror or cause})"
        if isinstance(cause, TimeoutError):
            return "no answer in time (is the host right, or is a firewall dropping packets?)"
    return repr(error)


def _describe_tls(error: ssl.SSLError) -> str:
    """What went wrong in a TLS handshake, in OpenSSL's words plus what to check."""
    if isinstance(error, ssl.SSLCertVerificationError):
        why = error.verify_message or error.reason or str(error)
        if "mismatch" in why:
            hint = "connect by a host name (or IP address) that the server's certificate lists"
        else:
            hint = (
                "does the client trust the CA that signed the server's certificate? "
                "?cafile= in the URL or ssl=SSLContext"
            )
        return f"certificate verify failed: {why} ({hint})"
    if error.reason == "WRONG_VERSION_NUMBER":
        return (
            f"TLS handshake failed: {error} (is this a TLS port? RabbitMQ listens for "
            "amqps:// on 5671 by default)"
        )
    return f"TLS handshake failed: {error}"


async def _close_quietly(channel: _Channel | None) -> None:
    if channel is None or channel.is_closed:
        return
    # Shielded and bounded: this runs in `finally` blocks of cancelled operations.
    with anyio.move_on_after(CLOSE_TIMEOUT, shield=True), contextlib.suppress(*_LOST):
        await channel.close()


class AmqpDelivery(Delivery):
    """A message received from RabbitMQ, bound to the aiormq channel that delivered it."""

    def __init__(
        self,
        message: aiormq.abc.DeliveredMessage,
        queue: str,
        acks: ChannelAcks | None = None,
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
        # the consumer's unsettled deliveries on this channel (told when the channel dies),
        # and its acks, sent together (see `settling`)
        self._acks = acks
        if acks is not None:
            acks.delivered(self._delivery_tag, self)
        self.body = message.body
        # most values are plain already: convert only the others (this runs once per job);
        # mypy cannot narrow on `is_plain(v)`, which is exactly the HeaderValue scalars
        headers: dict[str, HeaderValue] = {
            k if type(k) is str else str(k): v if is_plain(v) else header_value(v)  # type: ignore[misc]
            for k, v in (properties.headers or {}).items()
        }
        # set by the frame guard (amqp_frames) on properties it had to replace
        undecodable = headers.pop(MARKER, None)
        if undecodable is not None:
            self.undecodable = str(undecodable)
        self.headers: Mapping[str, HeaderValue] = headers
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
        acks = self._acks
        if self._channel.is_closed:
            if acks is not None:
                acks.forget(self._delivery_tag)
            raise ConnectionLost(f"the channel of {self!r} is gone; the broker redelivers it")
        try:  # not `with _translated(...)`: no message string and generator on each ack
            if ack and acks is not None:
                await acks.ack(self._delivery_tag)
            elif ack:
                await self._channel.basic_ack(self._delivery_tag)
            else:
                try:
                    await self._channel.basic_reject(self._delivery_tag, requeue=requeue)
                finally:
                    # only once its frame is written: until then no multiple ack covers it
                    # (aiormq's bounded write queue does not keep waiting writers in order)
                    if acks is not None:
                        acks.forget(self._delivery_tag)
        except (asyncio.CancelledError, TimeoutError, *_LOST):
            with _translated(f"settle {self!r}"):
                raise


class _Refused(Exception):
    """Every URL refused to connect for good (the first connect only): URL -> why."""

    def __init__(self, verdicts: dict[URL, str]) -> None:
        super().__init__(verdicts)
        self.verdicts = verdicts


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
        # aio-pika passes only the parameters it knows from its kwargs, but all of `self.kwargs`
        # to aiormq on every (re)connect: the frame guard goes in there (see amqp_frames).
        self.kwargs["transport_factory"] = SanitizingTransportFactory()
        self._urls = tuple(urls)
        self._index = self._failures = 0
        self._interval = reconnect_interval
        self.last_error: BaseException | None = None
        self.verdicts: dict[URL, str] = {}
        """The URLs whose latest attempt failed as every retry would (see `_verdict`), and why."""
        self._verdict_error: BaseException | None = None
        self._refused_since: dict[URL, float] = {}
        self._all_refused = asyncio.Event()

    async def connect(self, timeout: float | None = None) -> None:
        """Connect as aio-pika does, but give up once every URL refused for good.

        aio-pika (with ``fail_fast=False``) would retry a certificate that cannot verify, a
        wrong password or a missing vhost until the caller's deadline, logging each attempt.
        With one URL down and another refusing, this keeps retrying: the one that is down may
        come back.

        Raises:
            _Refused: every URL's latest attempt was a verdict (`_verdict`), or a port that
                refused connections for `REFUSED_GRACE` seconds.
        """
        connected = False
        async with anyio.create_task_group() as group:

            async def stop_when_all_refused() -> None:
                await self._all_refused.wait()
                group.cancel_scope.cancel()

            group.start_soon(stop_when_all_refused)
            await super().connect(timeout)
            connected = True
            group.cancel_scope.cancel()
        if not connected:  # only `stop_when_all_refused` cancels the group itself
            raise _Refused(dict(self.verdicts)) from self._verdict_error

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not closing.cancelled():
            self._judge(closing.exception())
        self._failures += 1
        self._index = (self._index + 1) % len(self._urls)
        self.url = self._urls[self._index]
        self.reconnect_interval = 0 if self._failures % len(self._urls) else self._interval
        await super()._on_connection_close(closing)

    def _judge(self, error: BaseException | None) -> None:
        """Record the outcome of an attempt on `self.url`; set `_all_refused` once all failed."""
        self.last_error = error or self.last_error
        verdict = _verdict(self.url, error)
        if verdict is None and _is_refused(error):
            now = asyncio.get_running_loop().time()
            if now - self._refused_since.setdefault(self.url, now) >= REFUSED_GRACE:
                verdict = f"{_describe_failure(error)}; refused for {REFUSED_GRACE:g} s"
        else:
            self._refused_since.pop(self.url, None)
        if verdict is None:
            self.verdicts.pop(self.url, None)
        else:
            # the TLS exception itself, if that was it (what callers catch), else aiormq's
            self.verdicts[self.url] = verdict
            self._verdict_error = _tls_refusal(error) or error
        if len(self.verdicts) == len(self._urls):
            self._all_refused.set()

    def __str__(self) -> str:  # aio-pika logs attempts with it, after we moved to the next URL
        return ", ".join(map(_safe_url, self._urls))

    async def _on_connected(self) -> None:
        self._failures = 0
        self.verdicts.clear()
        self._refused_since.clear()
        self._all_refused.clear()
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
        self._subscribed = prefetch  # the prefetch of the subscription `_tag`
        self._extra: dict[str, int] = {}  # tags of the subscriptions a growth added: prefetch
        self._lock = asyncio.Lock()
        self._cancelled = self._restarting = False
        self._acks: ChannelAcks | None = None  # of the current channel

    async def _subscribe(self) -> None:
        """Open a channel and subscribe, unless subscribed on a live channel already."""
        async with self._lock:
            if self._cancelled or (self._channel is not None and not self._channel.is_closed):
                return
            what = f"consume from {self._queue!r}"
            with _translated(what), anyio.fail_after(OPERATION_TIMEOUT):
                channel = await self._transport._open_channel(what)
                # bound to the callback: deliveries can run before basic_consume returns
                acks = ChannelAcks(channel)
                try:  # per-consumer prefetch: quorum queues refuse global QoS
                    await channel.basic_qos(prefetch_count=self._prefetch, global_=False)
                    ok = await channel.basic_consume(
                        self._queue, partial(self._on_message, acks), no_ack=False
                    )
                except BaseException as exc:
                    await _close_quietly(channel)
                    if isinstance(exc, amqp.ChannelNotFoundEntity):
                        raise _missing(self._queue, exc) from exc
                    raise
            self._channel, self._tag, self._acks = channel, ok.consumer_tag, acks
            self._subscribed, self._extra = self._prefetch, {}
            channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
            channel.closing.add_done_callback(partial(self._on_channel_closed, channel, acks))

    async def _on_message(self, acks: ChannelAcks, message: aiormq.abc.DeliveredMessage) -> None:
        self._on_delivery(AmqpDelivery(message, self._queue, acks))

    def _on_channel_closed(
        self, channel: _Channel, acks: ChannelAcks, closing: asyncio.Future[Any]
    ) -> None:
        # The broker requeues what the channel held: runs of those jobs here must stop.
        lost = [d for d in acks.unsettled() if isinstance(d, AmqpDelivery)]
        acks.clear()
        reason = None if closing.cancelled() else closing.exception()
        if lost and _is_consumer_timeout(reason):
            log.error(
                "RabbitMQ closed the consumer channel of %r because a delivery was not acked "
                "within its consumer_timeout (%s): %d job(s) on it (%s) are cancelled here and "
                "will be delivered again. Jobs that run longer than consumer_timeout need a "
                "result backend (they are then acked early, under a lease: --lease-after) or a "
                "higher broker limit.",
                self._queue,
                _reason(reason) if reason is not None else "",
                len(lost),
                ", ".join(str(delivery.message_id) for delivery in lost[:10])
                + (", ..." if len(lost) > 10 else ""),
            )
        for delivery in lost:
            delivery.mark_lost()
        if channel is self._channel and not self._cancelled:
            self._schedule_restart()

    def _on_broker_cancel(self, frame: spec.Basic.Cancel) -> None:
        # The broker ended the subscription (the queue was deleted, ...): closing the channel
        # takes the "channel died" path to a new subscription.
        ours = frame.consumer_tag == self._tag or frame.consumer_tag in self._extra
        if ours and not self._cancelled:
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

    async def set_prefetch(self, prefetch: int) -> None:
        # A per-consumer basic.qos applies only to the consumers started after it on the
        # channel. Cancelling the subscription to start one with the new prefetch is not safe
        # on a quorum queue: it returns the messages it had assigned to the cancelled consumer
        # but not yet sent, marked redelivered (measured on RabbitMQ 3.10: a couple per
        # cancel under load), and the worker that gets them quarantines them as the
        # neighbours of a crash. So a growth adds a subscription for the difference on the
        # same channel, and a shrink replaces the subscriptions only when the queue has
        # nothing to assign: no delivery unsettled here and none ready (a passive declare),
        # tried again each time the last unsettled one is settled. Until then the worker runs
        # fewer runners and the deliveries beyond them wait in its intake (counted in the
        # exact oldest wait; given back as fresh copies at a stop).
        async with self._lock:
            self._prefetch = prefetch
            await self._apply_prefetch()

    async def _apply_prefetch(self) -> None:
        """Bring the channel's subscriptions to `_prefetch` in all (under `_lock`).

        A growth adds a subscription at once. A shrink, and folding the subscriptions a
        growth added back into one (the broker counts each as a consumer), wait for an idle
        queue: tried again whenever the last unsettled delivery is settled.
        """
        channel, tag, acks = self._channel, self._tag, self._acks
        if self._cancelled or channel is None or tag is None or acks is None or (channel.is_closed):
            return  # the next subscription takes the new prefetch
        subscribed = self._subscribed + sum(self._extra.values())
        if self._prefetch == subscribed and not self._extra:
            return
        what = f"set the prefetch of the consumer of {self._queue!r}"
        with _translated(what), anyio.fail_after(OPERATION_TIMEOUT):
            if self._prefetch > subscribed:
                await channel.basic_qos(prefetch_count=self._prefetch - subscribed, global_=False)
                # the same channel, so the same delivery tags and acks
                ok = await channel.basic_consume(
                    self._queue, partial(self._on_message, acks), no_ack=False
                )
                if ok.consumer_tag is not None:  # always set: the broker names the consumer
                    self._extra[ok.consumer_tag] = self._prefetch - subscribed
                acks.on_empty = self._tidy_when_settled
                return
            if not await self._idle(channel, acks):
                acks.on_empty = self._tidy_when_settled
                return
            for old in (tag, *self._extra):
                await channel.basic_cancel(old)
            self._tag, self._extra = None, {}
            await channel.basic_qos(prefetch_count=self._prefetch, global_=False)
            ok = await channel.basic_consume(
                self._queue, partial(self._on_message, acks), no_ack=False
            )
            self._tag, self._subscribed = ok.consumer_tag, self._prefetch

    async def _idle(self, channel: _Channel, acks: ChannelAcks) -> bool:
        """Nothing delivered here is unsettled and the queue has no ready message."""
        if len(acks):
            return False
        declared = await channel.queue_declare(self._queue, passive=True)
        return not declared.message_count

    def _tidy_when_settled(self) -> None:
        self._transport._spawn(self._tidy())

    async def _tidy(self) -> None:
        try:
            async with self._lock:
                await self._apply_prefetch()
        except TransportError as exc:
            log.warning("could not lower the prefetch of the consumer of %r: %s", self._queue, exc)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._transport._consumers.pop(self, None)
        async with self._lock:  # a subscription under way finishes first: cancel that one
            channel, tags = self._channel, [t for t in (self._tag, *self._extra) if t is not None]
        if channel is None or not tags or channel.is_closed:
            return  # the subscription died with its channel
        # The channel stays open, so deliveries handed over stay settleable until `aclose`.
        what = f"cancel consumer of {self._queue!r}"
        with contextlib.suppress(ConnectionLost), _translated(what):
            for tag in tags:
                await channel.basic_cancel(tag, timeout=OPERATION_TIMEOUT)


class _AmqpListener(_AmqpConsumer):
    """`Transport.listen`: a server-named exclusive queue bound to an exchange, no acks.

    Each subscription (the first, and one after every reconnect or channel loss) declares a
    new queue: an exclusive queue dies with the connection (or channel use) that made it.
    """

    def __init__(
        self, transport: AmqpTransport, exchange: str, routing_key: str, on_notice: NoticeCallback
    ) -> None:
        super().__init__(transport, "", 0, lambda _delivery: None)
        self._exchange, self._routing_key, self._on_notice = exchange, routing_key, on_notice

    async def _subscribe(self) -> None:
        async with self._lock:
            if self._cancelled or (self._channel is not None and not self._channel.is_closed):
                return
            what = f"listen to {self._exchange!r}"
            with _translated(what), anyio.fail_after(OPERATION_TIMEOUT):
                channel = await self._transport._open_channel(what)
                try:
                    declared = await channel.queue_declare(
                        "", exclusive=True, auto_delete=True, durable=False
                    )
                    queue = declared.queue or ""
                    await channel.queue_bind(queue, self._exchange, routing_key=self._routing_key)
                    ok = await channel.basic_consume(queue, self._on_notice_message, no_ack=True)
                except BaseException as exc:
                    await _close_quietly(channel)
                    if isinstance(exc, amqp.ChannelNotFoundEntity):
                        raise ConfigurationError(f"{what}: {_reason(exc)}") from exc
                    raise
            self._queue = queue
            self._channel, self._tag = channel, ok.consumer_tag
            acks = self._acks = ChannelAcks(channel)  # no acks (no_ack=True): stays empty
            self._subscribed, self._extra = self._prefetch, {}
            channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
            channel.closing.add_done_callback(partial(self._on_channel_closed, channel, acks))

    async def _on_notice_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        delivery = message.delivery
        routing_key = getattr(delivery, "routing_key", None) or ""
        try:
            self._on_notice(routing_key, message.body)
        except Exception:  # like a consumer's callback: logged, the subscription lives on
            log.exception("a notice callback failed for %r", self._exchange)


class AmqpTransport(Transport):
    """A `Transport` on RabbitMQ through aio-pika: one robust connection, named.

    Args:
        urls: broker URLs (``amqp://user:password@host:port/vhost``), tried in rotation on
            connect and on every reconnect; several URLs are the nodes of one cluster.
        connection_name: shown by RabbitMQ (management UI, ``rabbitmqctl``).
        reconnect_interval: the pause, in seconds, once every URL failed.
        heartbeat: AMQP heartbeat in seconds, unless a URL sets ``?heartbeat=``; a dead link
            is noticed after about three of them.
        ssl_context: the TLS context of every connection (``amqps://`` URLs only); it wins
            over the URLs' ``cafile``, ``certfile``, ... parameters. Without it, aio-pika
            builds one from them, which verifies the certificate and the host name.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        connection_name: str,
        reconnect_interval: float = 1.0,
        heartbeat: int = 30,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        urls = [urls] if isinstance(urls, str) else urls  # a str is a Sequence[str] too
        if not urls:
            raise ConfigurationError("AmqpTransport needs at least one broker URL")
        self._ssl_context = check_tls(urls, ssl_context)
        self._urls = tuple(
            url if "heartbeat" in url.query else url.update_query(heartbeat=heartbeat)
            for url in map(URL, urls)
        )
        self._name = connection_name
        self._reconnect_interval = reconnect_interval
        self._connection: _RotatingConnection | None = None
        self._channel: _Channel | None = None  # publishing, with confirms
        self._get_channel: _Channel | None = None
        self._notice_channel: _Channel | None = None  # notices: no confirms
        self._channel_lock, self._get_lock = asyncio.Lock(), asyncio.Lock()
        self._notice_lock = asyncio.Lock()
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
            ssl_context=self._ssl_context,
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
        except _Refused as exc:  # every URL refused for good: fail now, not at the deadline
            await self._close_connection()
            refusals = "; ".join(f"{_safe_url(url)}: {why}" for url, why in exc.verdicts.items())
            raise ConnectionFailed(f"could not connect to {refusals}") from exc.__cause__
        except (TimeoutError, ConnectionLost, *_LOST) as exc:
            await self._close_connection()
            urls = ", ".join(map(_safe_url, self._urls))
            last = connection.last_error or exc
            # a URL that refused for good while others were down: its cause is the news
            causes = [_verdict(connection.url, last) or _describe_failure(last)] + [
                f"{_safe_url(url)}: {why}"
                for url, why in connection.verdicts.items()
                if why != _verdict(url, last)
            ]
            raise ConnectionFailed(
                f"no RabbitMQ answered at {urls} within {timeout:g} s "
                f"(last error: {'; '.join(causes)})"
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

    def _properties(self, message: OutgoingMessage) -> Properties:
        headers: FieldTable = message.headers  # type: ignore[assignment]
        return Properties(
            content_type=message.content_type or None,  # "": none, as received
            headers=headers,
            delivery_mode=2,
            message_id=message.message_id,
            timestamp=self._timestamp(message.timestamp),
        )

    async def _publish_channel(self, timeout: float) -> _Channel:
        if not self._ready.is_set():
            raise ConnectionLost("not connected to the broker" + " (closed)" * self._closed)
        channel = self._channel
        if channel is None or channel.is_closed:  # aiormq would write to a closed channel
            channel = await self._publishing_channel("reopen the publishing channel", timeout)
        return channel

    async def publish(self, message: OutgoingMessage, *, timeout: float) -> None:
        # The hot path: one frame to the writer, one future for the confirm; no lock of ours.
        channel = await self._publish_channel(timeout)
        properties = self._properties(message)
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
            if isinstance(error, PublishNacked) or type(error) is PublishTimeout:
                self._retire_publishing_channel(channel, error)
            raise error from exc

    batches_publishes = amqp_batch.supported_version()

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, timeout: float
    ) -> list[BaseException | None]:
        """Every message's frames in one write, their confirms awaited together (`amqp_batch`).

        On an aiormq `amqp_batch` was not checked against, one `publish` after another.
        """
        channel = await self._publish_channel(timeout)
        if not messages:
            return []
        if not amqp_batch.supported(channel):
            return await super().publish_batch(messages, timeout=timeout)
        items = [(m.body, m.exchange, m.routing_key, self._properties(m)) for m in messages]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                futures = await amqp_batch.write_batch(channel, items)
            if futures:
                await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0.0))
        except (TimeoutError, asyncio.CancelledError, *_LOST) as exc:
            error = self._publish_error(exc, messages[0], timeout)
            if error is None:
                raise
            if type(error) is PublishTimeout:
                self._retire_publishing_channel(channel, error)
            raise error from exc
        pairs = zip(messages, futures, strict=True)
        results = [self._confirm_outcome(message, future, timeout) for message, future in pairs]
        retire = [e for e in results if isinstance(e, PublishNacked) or type(e) is PublishTimeout]
        if retire:
            self._retire_publishing_channel(channel, retire[0])
        return results

    def _confirm_outcome(
        self, message: OutgoingMessage, future: asyncio.Future[Any], timeout: float
    ) -> BaseException | None:
        """What one confirmation future of a batch says: None (confirmed) or the error."""
        if not future.done():
            future.cancel()  # aiormq ignores a confirm that comes later
            outcome: BaseException | None = TimeoutError()
        elif future.cancelled():  # the channel closed under it
            outcome = asyncio.CancelledError()
        else:
            outcome = future.exception()
        if outcome is None:
            return None
        return self._publish_error(outcome, message, timeout) or ConnectionLost(
            f"message {message.message_id!r}: the channel closed before the confirm"
        )

    def _retire_publishing_channel(self, channel: _Channel, error: BaseException) -> None:
        """Stop publishing on `channel`: the next publish opens a fresh one.

        Measured on RabbitMQ 3.10 with the leader of a quorum queue killed: a channel whose
        first publish to the queue came while it had no leader was nacked *for good* (until
        the dead node returned), while fresh channels were acked from ~0.27 s after a new
        leader existed. A nack cannot say which case it is (a full reject-publish queue nacks
        too), and a lost confirm may be the same stuck state, so either retires the channel.

        Only the first failure on the current channel replaces it: publishes that fail on an
        already retired one find the replacement (opened once, under `_channel_lock`, by the
        next publish) and the hot path stays lock-free.
        """
        if self._channel is not channel:
            return
        self._channel = None
        log.info("%r replaces its publishing channel after: %s", self, error)
        self._spawn(self._close_when_settled(channel))

    async def _close_when_settled(self, channel: _Channel) -> None:
        # Closing at once would fail the publishes still under way on it with ConnectionLost
        # (aiormq fails every pending confirm as the channel closes) and have them published
        # again, though their confirms, acks even, may be on the way.
        with anyio.move_on_after(RETIRE_GRACE), contextlib.suppress(*_LOST):
            # Publishes that took this channel before it was retired queue on aiormq's channel
            # lock, which is FIFO: once we hold it, each of them has sent its frames and
            # registered its confirm. (aiormq's, not in its abc: read defensively.)
            lock = getattr(channel, "lock", None)
            if isinstance(lock, contextlib.AbstractAsyncContextManager):
                async with lock:
                    pass
            confirmations = getattr(channel, "confirmations", {})
            pending = [c for c in confirmations.values() if isinstance(c, asyncio.Future)]
            if pending := [c for c in pending if not c.done()]:
                await asyncio.wait(pending)
        await _close_quietly(channel)

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

    async def queue_info(self, queue: str) -> QueueInfo:
        async with self._throwaway(f"look up {queue!r}", queue) as channel:
            ok = await channel.queue_declare(queue, passive=True)
        return QueueInfo(ready=ok.message_count or 0, consumers=ok.consumer_count or 0)

    # -- notices ----------------------------------------------------------------------------

    async def notify(self, exchange: str, routing_key: str, body: bytes, *, timeout: float) -> None:
        what = f"notice to {exchange!r}/{routing_key!r}"
        if not self._ready.is_set():
            raise ConnectionLost(f"{what}: not connected to the broker")
        try:
            with _translated(what), anyio.fail_after(timeout):
                async with self._notice_lock:
                    channel = self._notice_channel
                    if channel is None or channel.is_closed:
                        channel = self._notice_channel = await self._open_channel(what)
                # without confirms aiormq returns once the frames are written
                await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=Properties(content_type="application/json", delivery_mode=1),
                )
        except ConnectionLost as exc:
            if isinstance(exc.__cause__, TimeoutError):
                raise PublishTimeout(f"{what}: not written within {timeout:g} s") from exc
            raise

    async def listen(self, exchange: str, routing_key: str, on_notice: NoticeCallback) -> Consumer:
        listener = _AmqpListener(self, exchange, routing_key, on_notice)
        self._consumers[listener] = None  # a reconnect re-declares its queue and resubscribes
        try:
            await listener._subscribe()
        except BaseException:
            await listener.cancel()
            raise
        return listener

    async def purge(self, queue: str) -> int:
        async with self._throwaway(f"purge {queue!r}", queue) as channel:
            ok = await channel.queue_purge(queue)
        return ok.message_count or 0
