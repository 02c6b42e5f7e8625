"""The envelope: a job as it travels, and its AMQP header form (pure data, no I/O, no clock).

The body carries only the arguments (``{"args": [...], "kwargs": {...}}``); everything a
worker needs *before* decoding the body lives in headers, so that a message naming an unknown
task can be dead-lettered without touching its body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aqueue._core import topology as t
from aqueue._core.types import Headers, HeaderValue, JSONScalar, JSONValue
from aqueue.exceptions import DecodeError

FORMAT_VERSION = 1


#: How many failed attempts a job carries in its history header (the newest ones).
MAX_HISTORY = 20
_MAX_MESSAGE_CHARS = 500


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, as kept in the job's history."""

    attempt: int
    type: str
    message: str
    at_ms: int

    def as_header(self) -> dict[str, HeaderValue]:
        """The header-table form."""
        return {
            "attempt": self.attempt,
            "type": self.type,
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

    def headers(self) -> dict[str, HeaderValue]:
        """The AMQP headers of this envelope."""
        headers: dict[str, HeaderValue] = dict(self.extra_headers)
        headers[t.HEADER_TASK] = self.task
        headers[t.HEADER_QUEUE] = self.queue
        headers[t.HEADER_ATTEMPT] = self.attempt
        headers[t.HEADER_ENQUEUED_AT] = self.enqueued_at_ms
        headers[t.HEADER_VERSION] = FORMAT_VERSION
        if self.eta_ms is not None:
            headers[t.HEADER_ETA] = self.eta_ms
        if self.options:
            headers[t.HEADER_OPTIONS] = dict(self.options)
        if self.history:
            headers[t.HEADER_HISTORY] = [failure.as_header() for failure in self.history]
        return headers

    def due_at_ms(self) -> int:
        """When the job became due: its ETA, or its enqueue time."""
        return self.eta_ms if self.eta_ms is not None else self.enqueued_at_ms


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


_OWN_HEADERS = frozenset(
    {
        t.HEADER_OPTIONS,
        t.HEADER_HISTORY,
        t.HEADER_TASK,
        t.HEADER_QUEUE,
        t.HEADER_ATTEMPT,
        t.HEADER_ENQUEUED_AT,
        t.HEADER_ETA,
        t.HEADER_VERSION,
    }
)


def read_headers(headers: Headers) -> JobHeaders:
    """Parse the job headers of a delivery.

    Raises:
        DecodeError: the task name is missing, or a header has the wrong type, or the format
            version is newer than this process understands.
    """
    task = headers.get(t.HEADER_TASK)
    if not isinstance(task, str) or not task:
        raise DecodeError(f"message has no {t.HEADER_TASK!r} header")
    version = _int_header(headers, t.HEADER_VERSION, default=FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise DecodeError(f"message format version {version} is newer than {FORMAT_VERSION}")
    queue = headers.get(t.HEADER_QUEUE)
    eta = headers.get(t.HEADER_ETA)
    extra = {
        key: value
        for key, value in headers.items()
        if isinstance(value, str)
        and key not in _OWN_HEADERS
        and key not in t.BROKER_HEADERS
        and not key.startswith("aqueue-dead-")
    }
    return JobHeaders(
        task=task,
        queue=queue if isinstance(queue, str) else None,
        attempt=_int_header(headers, t.HEADER_ATTEMPT, default=1),
        enqueued_at_ms=_int_header(headers, t.HEADER_ENQUEUED_AT, default=0),
        eta_ms=None if eta is None else _int_header(headers, t.HEADER_ETA, default=0),
        extra=extra,
        options=_options_header(headers),
        history=_history_header(headers),
    )


def _options_header(headers: Headers) -> dict[str, JSONScalar]:
    value = headers.get(t.HEADER_OPTIONS, {})
    if not isinstance(value, dict):
        raise DecodeError(f"header {t.HEADER_OPTIONS!r} must be a table, not {value!r}")
    return {
        key: item
        for key, item in value.items()
        if item is None or isinstance(item, str | int | float | bool)
    }


def _history_header(headers: Headers) -> tuple[Failure, ...]:
    value = headers.get(t.HEADER_HISTORY, [])
    if not isinstance(value, list):
        raise DecodeError(f"header {t.HEADER_HISTORY!r} must be an array, not {value!r}")
    return tuple(Failure.from_header(item) for item in value)


def _int_header(headers: Headers, name: str, *, default: int) -> int:
    value = headers.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"header {name!r} must be an integer, not {value!r}")
    return value
