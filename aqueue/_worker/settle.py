"""What a finished attempt turns into on the wire: a retry copy or a dead letter (no I/O).

Both are *new* messages, never the delivery republished as it came: RabbitMQ's ``x-death``
and ``x-delivery-count`` headers are dropped (copied ``x-death`` headers make the broker's
dead-letter cycle detection drop messages in the delay levels), and the routing key is built
from scratch, so nothing grows across retries.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from aqueue._core import topology as t
from aqueue._core.topology import TopologyNames, job_route
from aqueue._core.types import HeaderValue
from aqueue._core.wire import Envelope, Failure, JobHeaders, with_failure
from aqueue._transport import Delivery, OutgoingMessage

TRACEBACK_TAIL_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt failed.

    Attributes:
        reason: ``failed``, ``timeout``, ``decode-error`` or ``unknown-task``.
        error: the exception.
    """

    reason: str
    error: BaseException

    def as_failure(self, attempt: int, at_ms: int) -> Failure:
        """The history entry for this outcome."""
        return Failure(attempt, qualified_name(type(self.error)), str(self.error), at_ms)


def retry_message(
    names: TopologyNames,
    delivery: Delivery,
    logical: str,
    headers: JobHeaders,
    *,
    attempt: int,
    outcome: Outcome,
    delay_ms: int,
    now_ms: int,
) -> OutgoingMessage:
    """The next attempt of a job: same id and body, attempt + 1, due after `delay_ms`."""
    envelope = Envelope(
        job_id=delivery.message_id or "",
        task=headers.task,
        queue=logical,
        attempt=attempt + 1,
        enqueued_at_ms=headers.enqueued_at_ms,
        eta_ms=now_ms + delay_ms,
        extra_headers=headers.extra,
        options=headers.options,
        history=with_failure(headers.history, outcome.as_failure(attempt, now_ms)),
    )
    exchange, routing_key = job_route(names, envelope.queue, delay_ms)
    return OutgoingMessage(
        exchange=exchange,
        routing_key=routing_key,
        body=delivery.body,
        message_id=envelope.job_id,
        headers=envelope.headers(),
        content_type=delivery_content_type(delivery),
        timestamp=now_ms // 1000,
    )


def dead_letter_message(
    names: TopologyNames,
    delivery: Delivery,
    logical: str,
    outcome: Outcome,
    *,
    attempts: int,
    history: tuple[Failure, ...],
    now_ms: int,
) -> OutgoingMessage:
    """The dead-letter copy: the original body and job headers, plus why it died."""
    history = with_failure(history, outcome.as_failure(attempts, now_ms))
    headers: dict[str, HeaderValue] = {
        key: value for key, value in delivery.headers.items() if key not in t.BROKER_HEADERS
    }
    headers.update(
        {
            t.HEADER_HISTORY: [failure.as_header() for failure in history],
            t.HEADER_DEAD_REASON: outcome.reason,
            t.HEADER_DEAD_EXC_TYPE: qualified_name(type(outcome.error)),
            t.HEADER_DEAD_EXC_MESSAGE: str(outcome.error)[:1000],
            t.HEADER_DEAD_TRACEBACK: traceback_tail(outcome.error),
            t.HEADER_DEAD_ATTEMPTS: attempts,
            t.HEADER_DEAD_FIRST_FAILED_AT: history[0].at_ms,
            t.HEADER_DEAD_LAST_FAILED_AT: now_ms,
            t.HEADER_DEAD_QUEUE: logical,
        }
    )
    return OutgoingMessage(
        exchange=names.dead_letter_exchange,
        routing_key=logical,
        body=delivery.body,
        message_id=delivery.message_id or "",
        headers=headers,
        content_type=delivery_content_type(delivery),
        timestamp=now_ms // 1000,
    )


def delivery_content_type(delivery: Delivery) -> str:
    """The content type to keep on a copy (JSON unless the delivery said otherwise)."""
    return getattr(delivery, "content_type", None) or "application/json"


def traceback_tail(error: BaseException) -> str:
    """The last `TRACEBACK_TAIL_CHARS` characters of the formatted traceback."""
    return "".join(traceback.format_exception(error))[-TRACEBACK_TAIL_CHARS:]


def qualified_name(cls: type) -> str:
    """``module.Qualname``, or just the name for builtins."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
