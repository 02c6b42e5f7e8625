"""The wire format: header names, the envelope, and every message aqueue publishes (pure).

One module for what the wire-format page documents. The body carries only the arguments
(``{"args": [...], "kwargs": {...}}``, encoded by `aqueue._serialization`); everything a worker
needs *before* decoding the body lives in headers, so that a message naming an unknown task
can be dead-lettered without touching its body.

Four builders make every message aqueue sends: `job_message` (enqueue, workflow steps),
`retry_message` (the next attempt), `dead_letter_message` (a job that will not run again) and
`replay_message` (a dead letter sent back). The three copies share one header filter,
`carried_headers`: RabbitMQ's ``x-death`` and ``x-delivery-count`` headers are never copied
(copied ``x-death`` headers make the broker's dead-letter cycle detection drop messages in the
delay levels), and routing keys are built from scratch, so nothing grows across retries.
No I/O and no clock: the caller passes ``now_ms``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aqueue._core.delays import job_route
from aqueue._core.topology import TopologyNames
from aqueue._core.types import Headers, HeaderValue, JSONScalar, JSONValue
from aqueue.exceptions import DecodeError, EncodeError

FORMAT_VERSION = 1
CONTENT_TYPE = "application/json"

# -- header names -------------------------------------------------------------------------

HEADER_TASK = "aqueue-task"
HEADER_ATTEMPT = "aqueue-attempt"
HEADER_ENQUEUED_AT = "aqueue-enqueued-at"  # integer milliseconds since the Unix epoch
HEADER_ETA = "aqueue-eta"  # integer milliseconds since the Unix epoch, absent when not delayed
HEADER_VERSION = "aqueue-version"
HEADER_QUEUE = "aqueue-queue"  # the logical queue the job was sent to
HEADER_OPTIONS = "aqueue-options"  # run-time options changed at enqueue (timeout, retries, ...)
HEADER_HISTORY = "aqueue-history"  # earlier failed attempts: [{attempt, type, message, at}]
HEADER_WORKFLOW = "aqueue-workflow"  # a workflow step's links (JSON text)
HEADER_CRASHES = "aqueue-crashes"  # deliveries of this job that came back unacked
HEADER_LEASE = "aqueue-lease"  # on a lease copy: the run whose lease it checks
HEADER_DEFERRED = "aqueue-deferred"  # deferrals of this attempt by reason: {"rate": 1, ...}
HEADER_RATE_RESERVED = "aqueue-rate-reserved"  # this attempt's start is reserved (rate limit)
HEADER_EXPIRES = "aqueue-expires"  # integer ms since the Unix epoch: not run after this
HEADER_TICK = "aqueue-tick"  # on a scheduled job: this publish of the tick (text, unique)
HEADER_COPY = "aqueue-copy"  # on an outbox job: this publish of the outbox row (text, unique)
# Dead-letter headers, written by the worker on the copy it sends to the dead-letter queue.
DEAD_HEADER_PREFIX = "aqueue-dead-"
HEADER_DEAD_REASON = "aqueue-dead-reason"
HEADER_DEAD_EXC_TYPE = "aqueue-dead-exception-type"
HEADER_DEAD_EXC_MESSAGE = "aqueue-dead-exception-message"
HEADER_DEAD_TRACEBACK = "aqueue-dead-traceback"
HEADER_DEAD_ATTEMPTS = "aqueue-dead-attempts"
HEADER_DEAD_FIRST_FAILED_AT = "aqueue-dead-first-failed-at"
HEADER_DEAD_LAST_FAILED_AT = "aqueue-dead-last-failed-at"
HEADER_DEAD_QUEUE = "aqueue-dead-queue"

#: Headers RabbitMQ adds on dead-lettering and redelivery. They must never be copied into a
#: message aqueue publishes again: copied ``x-death`` headers make RabbitMQ's dead-letter
#: cycle detection drop messages (see the retries page).
BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)

_OWN_HEADERS = frozenset(
    {
        HEADER_OPTIONS,
        HEADER_HISTORY,
        HEADER_TASK,
        HEADER_QUEUE,
        HEADER_ATTEMPT,
        HEADER_ENQUEUED_AT,
        HEADER_ETA,
        HEADER_VERSION,
        HEADER_CRASHES,
        HEADER_LEASE,
        HEADER_DEFERRED,
        HEADER_RATE_RESERVED,
        HEADER_EXPIRES,
    }
)

#: How many failed attempts a job carries in its history header (the newest ones).
MAX_HISTORY = 20
#: Bytes a copy's header table may take. RabbitMQ's frame_max is 131072 and the whole content
#: header must fit in one frame, or the broker closes the publishing *connection* (501); the
#: rest is room for the other properties and for what the broker adds (``x-death``,
#: ``x-delivery-count``).
HEADER_BUDGET = 120 * 1024
#: Set on a copy that had to drop or shorten headers to fit: what went.
HEADER_TRUNCATED = "aqueue-truncated"
#: What a dead letter keeps when it has to shrink: why it died and what the job is.
_DEAD_ESSENTIAL = frozenset(
    {
        HEADER_TASK,
        HEADER_QUEUE,
        HEADER_ATTEMPT,
        HEADER_ENQUEUED_AT,
        HEADER_VERSION,
        HEADER_HISTORY,
        HEADER_DEAD_REASON,
        HEADER_DEAD_EXC_TYPE,
        HEADER_DEAD_EXC_MESSAGE,
        HEADER_DEAD_TRACEBACK,
        HEADER_DEAD_ATTEMPTS,
        HEADER_DEAD_FIRST_FAILED_AT,
        HEADER_DEAD_LAST_FAILED_AT,
        HEADER_DEAD_QUEUE,
    }
)
#: What a dead letter keeps when even that is too big: only what this worker writes, each
#: part bounded, so it always fits.
_DEAD_WRITTEN = frozenset(
    {
        HEADER_HISTORY,
        HEADER_DEAD_REASON,
        HEADER_DEAD_EXC_TYPE,
        HEADER_DEAD_EXC_MESSAGE,
        HEADER_DEAD_TRACEBACK,
        HEADER_DEAD_ATTEMPTS,
        HEADER_DEAD_FIRST_FAILED_AT,
        HEADER_DEAD_LAST_FAILED_AT,
        HEADER_DEAD_QUEUE,
    }
)
_MAX_MESSAGE_CHARS = 500
#: Characters of the texts a dead letter writes (exception type and message, traceback tail).
_MAX_DEAD_CHARS = 1000
#: Bytes of the `HEADER_TRUNCATED` value, and the room kept for it with its name.
_MAX_MARK_BYTES = 1000
_MARK_ROOM = 5 + 2 + len(HEADER_TRUNCATED) + _MAX_MARK_BYTES


# -- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish: always persistent, always mandatory, always confirmed.

    Attributes:
        exchange: the exchange name (``""`` is the default exchange).
        routing_key: the routing key.
        body: the encoded body.
        message_id: the AMQP ``message_id`` (aqueue's job id).
        headers: the AMQP header table.
        content_type: the AMQP ``content_type``.
        timestamp: the AMQP ``timestamp``, whole seconds since the Unix epoch.
    """

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    content_type: str = CONTENT_TYPE
    timestamp: int | None = None


class Received(Protocol):
    """What the copy builders read of a received message (a transport's `Delivery`)."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def content_type(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, as kept in the job's history."""

    attempt: int
    type: str
    message: str
    at_ms: int

    @property
    def failed_at(self) -> dt.datetime | None:
        """When it failed (aware, UTC); None for a time no datetime can hold."""
        try:
            return dt.datetime.fromtimestamp(self.at_ms / 1000, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None

    def as_header(self) -> dict[str, HeaderValue]:
        """The header-table form."""
        return {
            "attempt": self.attempt,
            "type": self.type[:_MAX_MESSAGE_CHARS],
            "message": self.message[:_MAX_MESSAGE_CHARS],
            "at": self.at_ms,
        }

    @classmethod
    def from_header(cls, value: HeaderValue) -> Failure:
        """Parse the header-table form.

        Raises:
            DecodeError: not a table with the expected fields.
        """
        if not isinstance(value, dict):
            raise DecodeError(f"history entry must be a table, not {value!r}")
        attempt, kind, message, at = (value.get(k) for k in ("attempt", "type", "message", "at"))
        if not (isinstance(attempt, int) and isinstance(at, int)):
            raise DecodeError(f"history entry has no integer attempt/at: {value!r}")
        return cls(attempt, str(kind), str(message), at)


def with_failure(history: tuple[Failure, ...], failure: Failure) -> tuple[Failure, ...]:
    """The history with one more failure, keeping the newest `MAX_HISTORY`."""
    return (*history, failure)[-MAX_HISTORY:]


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a job is dead-lettered, as text (see `aqueue._core.errors` for making it safely).

    Attributes:
        reason: ``failed``, ``timeout``, ``decode-error``, ``unknown-task``,
            ``undecodable-properties``, ...
        type: the qualified name of the exception.
        message: its message.
        traceback: the tail of its traceback.
    """

    reason: str
    type: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """One job on the wire.

    Attributes:
        job_id: stable across attempts (the AMQP ``message_id``), so tasks can be idempotent.
        task: the registered task name.
        queue: the logical queue the job is sent to.
        args: positional arguments, JSON values.
        kwargs: keyword arguments, JSON values.
        attempt: 1 for the first run, +1 for every retry.
        enqueued_at_ms: when the job was first enqueued, ms since the Unix epoch.
        eta_ms: when the job is due, ms since the Unix epoch; ``None`` means now.
        extra_headers: propagated headers (W3C trace context, workflow links).
        options: run-time options changed at enqueue (``timeout``, ``retries``, ...).
        history: the earlier failed attempts, oldest first (at most `MAX_HISTORY`).
        expires_at_ms: the job is not run when delivered after this (ms since the Unix
            epoch); ``None``: never expires.
    """

    job_id: str
    task: str
    queue: str
    args: tuple[JSONValue, ...] = ()
    kwargs: Mapping[str, JSONValue] = field(default_factory=dict)
    attempt: int = 1
    enqueued_at_ms: int = 0
    eta_ms: int | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, JSONScalar] = field(default_factory=dict)
    history: tuple[Failure, ...] = ()
    expires_at_ms: int | None = None

    def headers(self) -> dict[str, HeaderValue]:
        """The AMQP headers of this envelope."""
        headers: dict[str, HeaderValue] = dict(self.extra_headers)
        headers[HEADER_TASK] = self.task
        headers[HEADER_QUEUE] = self.queue
        headers[HEADER_ATTEMPT] = self.attempt
        headers[HEADER_ENQUEUED_AT] = self.enqueued_at_ms
        headers[HEADER_VERSION] = FORMAT_VERSION
        if self.eta_ms is not None:
            headers[HEADER_ETA] = self.eta_ms
        if self.options:
            headers[HEADER_OPTIONS] = dict(self.options)
        if self.history:
            headers[HEADER_HISTORY] = [failure.as_header() for failure in self.history]
        if self.expires_at_ms is not None:
            headers[HEADER_EXPIRES] = self.expires_at_ms
        return headers

    def due_at_ms(self) -> int:
        """When the job became due: its ETA, or its enqueue time."""
        return self.eta_ms if self.eta_ms is not None else self.enqueued_at_ms


def encoded_size(value: HeaderValue) -> int:
    """An upper bound of the bytes `value` takes in an AMQP field table (with its type octet)."""
    if isinstance(value, str):
        return 5 + len(value.encode(errors="replace"))
    if isinstance(value, dict):
        return 5 + sum(
            2 + len(key.encode(errors="replace")) + encoded_size(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return 5 + sum(encoded_size(item) for item in value)
    return 9  # a number, a bool or None


def _fit(
    headers: dict[str, HeaderValue], keep: frozenset[str], *fallbacks: frozenset[str]
) -> dict[str, HeaderValue]:
    """`headers` made to fit `HEADER_BUDGET`, marked with `HEADER_TRUNCATED` if it had to.

    History and traceback are shortened first, then the largest headers not in `keep` go;
    if what is kept is still too big, the largest not in the first of `fallbacks` go, and so
    on.

    Raises:
        EncodeError: what the last set keeps does not fit on its own.
    """
    if encoded_size(headers) <= HEADER_BUDGET:
        return headers
    cut: list[str] = []
    history = headers.get(HEADER_HISTORY)
    if isinstance(history, list) and len(history) > 3:
        headers[HEADER_HISTORY] = history[-3:]
        cut.append(f"{HEADER_HISTORY} (oldest {len(history) - 3})")
    trace = headers.get(HEADER_DEAD_TRACEBACK)
    if isinstance(trace, str) and len(trace) > _MAX_DEAD_CHARS:
        headers[HEADER_DEAD_TRACEBACK] = trace[-_MAX_DEAD_CHARS:]
        cut.append(f"{HEADER_DEAD_TRACEBACK} (shortened)")
    headers.pop(HEADER_TRUNCATED, None)  # an older copy's: this one names what it cut
    for kept in (keep, *fallbacks):
        droppable = sorted(
            (key for key in headers if key not in kept), key=lambda k: -encoded_size(headers[k])
        )
        for key in droppable:
            if encoded_size(headers) + _MARK_ROOM <= HEADER_BUDGET:
                break
            del headers[key]
            cut.append(key)
        if encoded_size(headers) + _MARK_ROOM <= HEADER_BUDGET:
            break
    else:
        raise EncodeError(
            f"the headers kept ({', '.join(sorted(kept & set(headers)))}) are "
            f"over {HEADER_BUDGET} bytes"
        )
    mark = ", ".join(cut).encode()[:_MAX_MARK_BYTES]
    headers[HEADER_TRUNCATED] = mark.decode(errors="ignore")
    return headers


def job_message(
    names: TopologyNames,
    envelope: Envelope,
    body: bytes,
    *,
    delay_ms: int = 0,
    destination: str | None = None,
) -> OutgoingMessage:
    """A job for its work queue, through the delay levels when `delay_ms` > 0.

    `destination` routes it elsewhere than its logical queue's work queue: a fair-share shard
    (``{queue}.fair.{n}``).
    """
    exchange, routing_key = job_route(names, destination or envelope.queue, delay_ms)
    return OutgoingMessage(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        message_id=envelope.job_id,
        headers=envelope.headers(),
        content_type=CONTENT_TYPE,
        timestamp=envelope.enqueued_at_ms // 1000,
    )


def carried_headers(headers: Headers) -> dict[str, HeaderValue]:
    """The headers a copy of a received job keeps: neither RabbitMQ's nor a dead letter's."""
    return {
        key: value
        for key, value in headers.items()
        if key not in BROKER_HEADERS and not key.startswith(DEAD_HEADER_PREFIX)
    }


def retry_message(
    names: TopologyNames,
    received: Received,
    headers: JobHeaders,
    *,
    queue: str,
    attempt: int,
    failure: Failure,
    delay_ms: int,
    now_ms: int,
    destination: str | None = None,
) -> OutgoingMessage:
    """The next attempt of a job: same id and body, attempt + 1, due after `delay_ms`.

    Back to `queue`'s work queue, or to `destination` (the fair-share shard it came from).
    """
    envelope = Envelope(
        job_id=received.message_id or "",
        task=headers.task,
        queue=queue,
        attempt=attempt + 1,
        enqueued_at_ms=headers.enqueued_at_ms,
        eta_ms=now_ms + delay_ms,
        extra_headers=headers.extra,
        options=headers.options,
        history=with_failure(headers.history, failure),
        expires_at_ms=headers.expires_at_ms,
    )
    exchange, routing_key = job_route(names, destination or queue, delay_ms)
    fitted = _fit(envelope.headers(), _OWN_HEADERS | {HEADER_WORKFLOW})
    return _copy(received, exchange, routing_key, fitted, now_ms)


def dead_letter_message(
    names: TopologyNames,
    received: Received,
    *,
    queue: str,
    cause: Cause,
    attempts: int,
    history: tuple[Failure, ...],
    now_ms: int,
) -> OutgoingMessage:
    """The dead-letter copy: the original body and job headers, plus why it died.

    Never raises, and never too big to publish: a copy over `HEADER_BUDGET` keeps why it died
    and what the job is, and drops the rest; if even that is too big (a job whose own headers
    are huge), it keeps why it died, each part of which is bounded. What went is named in
    `HEADER_TRUNCATED`.
    """
    history = with_failure(history, Failure(attempts, cause.type, cause.message, now_ms))
    headers = carried_headers(received.headers)
    headers.update(
        {
            HEADER_HISTORY: [failure.as_header() for failure in history],
            HEADER_DEAD_REASON: cause.reason[:_MAX_DEAD_CHARS],
            HEADER_DEAD_EXC_TYPE: cause.type[:_MAX_DEAD_CHARS],
            HEADER_DEAD_EXC_MESSAGE: cause.message[:_MAX_DEAD_CHARS],
            HEADER_DEAD_TRACEBACK: cause.traceback,
            HEADER_DEAD_ATTEMPTS: attempts,
            HEADER_DEAD_FIRST_FAILED_AT: history[0].at_ms,
            HEADER_DEAD_LAST_FAILED_AT: now_ms,
            HEADER_DEAD_QUEUE: queue,
        }
    )
    # _DEAD_WRITTEN always fits: at most 3 history entries of bounded texts, and texts cut to
    # _MAX_DEAD_CHARS (the traceback by `_fit`), so this never raises
    fitted = _fit(headers, _DEAD_ESSENTIAL, _DEAD_WRITTEN)
    return _copy(received, names.dead_letter_exchange, queue, fitted, now_ms)


def quarantine_message(
    names: TopologyNames,
    received: Received,
    *,
    queue: str,
    attempt: int,
    crashes: int,
    now_ms: int,
) -> OutgoingMessage:
    """A job that came back unacked, sent to its queue's quarantine to run alone.

    A fresh copy (RabbitMQ's counters dropped), carrying its attempt and crash counts.
    """
    headers = carried_headers(received.headers)
    headers.pop(HEADER_LEASE, None)  # a lease copy whose run died is the job again
    headers[HEADER_ATTEMPT] = attempt
    headers[HEADER_CRASHES] = crashes
    fitted = _fit(headers, _OWN_HEADERS | {HEADER_WORKFLOW})
    return _copy(received, "", names.quarantine_queue(queue), fitted, now_ms)


def lease_copy(
    names: TopologyNames,
    received: Received,
    *,
    queue: str,
    owner: str,
    delay_ms: int,
    now_ms: int,
) -> OutgoingMessage:
    """The copy that stands in for a leased job: back in the work queue after `delay_ms`.

    It carries the job unchanged plus the lease's owner. A worker that receives it runs the
    job only if that lease expired (its worker died); otherwise it sends it round again, or
    drops it once the run ended.
    """
    headers = carried_headers(received.headers)
    headers[HEADER_LEASE] = owner
    fitted = _fit(headers, _OWN_HEADERS | {HEADER_WORKFLOW})
    exchange, routing_key = job_route(names, queue, delay_ms)
    return _copy(received, exchange, routing_key, fitted, now_ms)


def handback_message(
    names: TopologyNames, received: Received, *, queue: str, now_ms: int
) -> OutgoingMessage:
    """A job a stopping worker took but never started, back in its queue as a fresh copy.

    Unchanged but for RabbitMQ's counters: returned unacked it would come back redelivered,
    and be taken for the neighbour of a crash.
    """
    fitted = _fit(carried_headers(received.headers), _OWN_HEADERS | {HEADER_WORKFLOW})
    exchange, routing_key = job_route(names, queue, 0)
    return _copy(received, exchange, routing_key, fitted, now_ms)


def deferral_message(
    names: TopologyNames,
    received: Received,
    *,
    destination: str,
    reason: str,
    delay_ms: int,
    now_ms: int,
    eta_ms: int | None = None,
) -> OutgoingMessage:
    """A job over its rate limit or concurrency cap, back in `destination` after `delay_ms`.

    The same attempt (a deferral is not a failure): the job unchanged, due at its new time
    (`eta_ms`, by default ``now_ms + delay_ms``), its deferrals counted by `reason` (``"rate"``
    or ``"concurrency"``). Deferred by its rate limit it carries `HEADER_RATE_RESERVED`: its
    start was reserved for `eta_ms`, so it does not take another; it may come back before
    that time (see `aqueue._worker.parking`) but does not start before it.
    """
    eta = now_ms + delay_ms if eta_ms is None else eta_ms
    headers = deferral_headers(received.headers, reason=reason, eta_ms=eta)
    fitted = _fit(headers, _OWN_HEADERS | {HEADER_WORKFLOW})
    exchange, routing_key = job_route(names, destination, delay_ms)
    return _copy(received, exchange, routing_key, fitted, now_ms)


def deferral_headers(headers: Headers, *, reason: str, eta_ms: int) -> dict[str, HeaderValue]:
    """The headers of a job deferred by `reason` until `eta_ms`: its deferrals counted.

    Deferred by its rate limit, it carries `HEADER_RATE_RESERVED`: its start is reserved.
    """
    carried = carried_headers(headers)
    counts = deferral_counts(headers)
    counts[reason] = counts.get(reason, 0) + 1
    carried[HEADER_DEFERRED] = dict[str, HeaderValue](counts)
    carried[HEADER_ETA] = eta_ms
    if reason == "rate":
        carried[HEADER_RATE_RESERVED] = 1
    return carried


def deferral_counts(headers: Headers) -> dict[str, int]:
    """How often this attempt was deferred, by reason (empty if never, or unreadable)."""
    value = headers.get(HEADER_DEFERRED)
    if not isinstance(value, dict):
        return {}
    return {
        key: count
        for key, count in value.items()
        if isinstance(count, int) and not isinstance(count, bool)
    }


def replay_message(
    names: TopologyNames, received: Received, *, queue: str, now_ms: int
) -> OutgoingMessage:
    """A dead letter sent back as a fresh job: attempt 1, due now, its history kept."""
    headers = carried_headers(received.headers)
    for name in (HEADER_LEASE, HEADER_CRASHES, HEADER_DEFERRED, HEADER_RATE_RESERVED):
        headers.pop(name, None)
    headers[HEADER_ATTEMPT] = 1
    headers[HEADER_QUEUE] = queue
    # Due now: queue latency (due → started) measures the wait after the replay, not the
    # time spent in the dead-letter queue. The enqueue time and the history stay.
    headers[HEADER_ETA] = now_ms
    fitted = _fit(headers, _OWN_HEADERS | {HEADER_WORKFLOW})
    return _copy(received, names.exchange, queue, fitted, now_ms)


def _copy(
    received: Received,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, HeaderValue],
    now_ms: int,
) -> OutgoingMessage:
    """A new message with the body, id and content type of `received` (never its headers)."""
    return OutgoingMessage(
        exchange=exchange,
        routing_key=routing_key,
        body=received.body,
        message_id=received.message_id or "",
        headers=headers,
        content_type=received.content_type,
        timestamp=now_ms // 1000,
    )


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobHeaders:
    """What a worker reads from the headers before it decodes the body."""

    task: str
    queue: str | None
    attempt: int
    enqueued_at_ms: int
    eta_ms: int | None
    extra: Mapping[str, str]
    options: Mapping[str, JSONScalar]
    history: tuple[Failure, ...]
    #: deliveries that came back unacked before this one (counted by the quarantine)
    crashes: int = 0
    #: not run when delivered after this (ms since the Unix epoch); None: never expires
    expires_at_ms: int | None = None


def read_headers(headers: Headers) -> JobHeaders:
    """Parse the job headers of a delivery.

    Raises:
        DecodeError: the task name is missing, or a header has the wrong type, or the format
            version is newer than this process understands.
    """
    task = headers.get(HEADER_TASK)
    if not isinstance(task, str) or not task:
        raise DecodeError(f"message has no {HEADER_TASK!r} header")
    version = _int_header(headers, HEADER_VERSION, default=FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise DecodeError(f"message format version {version} is newer than {FORMAT_VERSION}")
    queue = headers.get(HEADER_QUEUE)
    eta = headers.get(HEADER_ETA)
    extra = {
        key: value
        for key, value in headers.items()
        if isinstance(value, str)
        and key not in _OWN_HEADERS
        and key not in BROKER_HEADERS
        and not key.startswith(DEAD_HEADER_PREFIX)
    }
    attempt = _int_header(headers, HEADER_ATTEMPT, default=1)
    if attempt < 1:
        raise DecodeError(f"header {HEADER_ATTEMPT!r} must be 1 or more, not {attempt}")
    return JobHeaders(
        task=task,
        queue=queue if isinstance(queue, str) else None,
        attempt=attempt,
        enqueued_at_ms=_int_header(headers, HEADER_ENQUEUED_AT, default=0),
        eta_ms=None if eta is None else _int_header(headers, HEADER_ETA, default=0),
        extra=extra,
        options=_options_header(headers),
        history=_history_header(headers),
        crashes=max(0, _int_header(headers, HEADER_CRASHES, default=0)),
        expires_at_ms=None
        if headers.get(HEADER_EXPIRES) is None
        else _int_header(headers, HEADER_EXPIRES, default=0),
    )


def _options_header(headers: Headers) -> dict[str, JSONScalar]:
    value = headers.get(HEADER_OPTIONS, {})
    if not isinstance(value, dict):
        raise DecodeError(f"header {HEADER_OPTIONS!r} must be a table, not {value!r}")
    return {
        key: item
        for key, item in value.items()
        if item is None or isinstance(item, str | int | float | bool)
    }


def _history_header(headers: Headers) -> tuple[Failure, ...]:
    value = headers.get(HEADER_HISTORY, [])
    if not isinstance(value, list):
        raise DecodeError(f"header {HEADER_HISTORY!r} must be an array, not {value!r}")
    return tuple(Failure.from_header(item) for item in value)


def due_at_ms(headers: Headers) -> int | None:
    """When a delivery's job became due (its ETA, else its enqueue time), without decoding it.

    For the wait signal, read from deliveries not yet started: None when neither header is an
    integer (a foreign or broken message, which `read_headers` rejects in its turn).
    """
    for name in (HEADER_ETA, HEADER_ENQUEUED_AT):
        value = headers.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _int_header(headers: Headers, name: str, *, default: int) -> int:
    value = headers.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"header {name!r} must be an integer, not {value!r}")
    return value


def trace_id(headers: Mapping[str, HeaderValue]) -> str | None:
    """The W3C trace id of a message's ``traceparent`` header, if it has a valid one."""
    value = headers.get("traceparent")
    if not isinstance(value, str):
        return None
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or set(parts[1]) - set("0123456789abcdef"):
        return None
    return parts[1] if parts[1] != "0" * 32 else None
