"""The wire format's message builders, as pure functions of their inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aqueue._core import wire as t
from aqueue._core.delays import delay_routing_key, delay_units, entry_exchange
from aqueue._core.topology import TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._core.wire import (
    Cause,
    Envelope,
    Failure,
    dead_letter_message,
    job_message,
    read_headers,
    replay_message,
    retry_message,
)

NAMES = TopologyNames("w")
NOW = 1_700_000_000_000


@dataclass
class Received:
    body: bytes = b'{"args":[1],"kwargs":{}}'
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    message_id: str | None = "job-1"
    content_type: str = "text/x-custom"


def _received_job(**extra: HeaderValue) -> Received:
    envelope = Envelope("job-1", "tasks.add", "q", enqueued_at_ms=NOW - 5000)
    headers: dict[str, HeaderValue] = {**envelope.headers(), **extra}
    headers["x-death"] = [{"queue": "w.delay.3.wait", "reason": "expired"}]
    headers["x-delivery-count"] = 2
    return Received(headers=headers)


def test_a_job_goes_to_its_queue_or_through_the_delay_levels() -> None:
    """Undelayed: the direct exchange, keyed by queue; delayed: the top level, keyed by bits."""
    envelope = Envelope("j", "t", "q", enqueued_at_ms=NOW)
    now = job_message(NAMES, envelope, b"{}")
    assert (now.exchange, now.routing_key, now.message_id) == ("w", "q", "j")
    assert now.headers[t.HEADER_TASK] == "t"
    assert now.headers[t.HEADER_ATTEMPT] == 1
    assert now.timestamp == NOW // 1000
    later = job_message(NAMES, envelope, b"{}", delay_ms=1500)
    assert later.exchange == entry_exchange(NAMES)
    assert later.routing_key == delay_routing_key(delay_units(1500), "q")


def test_a_retry_is_a_fresh_copy_with_the_next_attempt() -> None:
    """Same id, body and content type; attempt + 1, due later, history grown, no x-death."""
    received = _received_job()
    headers = read_headers(received.headers)
    failure = Failure(1, "ValueError", "boom", NOW)
    message = retry_message(
        NAMES, received, headers, queue="q", attempt=1, failure=failure, delay_ms=200, now_ms=NOW
    )
    assert (message.message_id, message.body) == ("job-1", received.body)
    assert message.content_type == "text/x-custom"
    assert message.headers[t.HEADER_ATTEMPT] == 2
    assert message.headers[t.HEADER_ETA] == NOW + 200
    assert message.headers[t.HEADER_ENQUEUED_AT] == NOW - 5000
    assert message.headers[t.HEADER_HISTORY] == [failure.as_header()]
    assert not t.BROKER_HEADERS & set(message.headers)
    assert message.routing_key == delay_routing_key(delay_units(200), "q")


def test_retry_routing_keys_do_not_grow_across_retries() -> None:
    """Each retry rebuilds its routing key from scratch."""
    received = _received_job()
    keys = set()
    for attempt in range(1, 4):
        message = retry_message(
            NAMES,
            received,
            read_headers(received.headers),
            queue="q",
            attempt=attempt,
            failure=Failure(attempt, "E", "m", NOW),
            delay_ms=1000,
            now_ms=NOW,
        )
        keys.add(message.routing_key)
        received = Received(headers=dict(message.headers))
    assert len(keys) == 1


def test_a_dead_letter_carries_why_and_the_job_headers() -> None:
    """The reason, exception, traceback, attempts and times; RabbitMQ's headers dropped."""
    received = _received_job(**{t.HEADER_DEAD_REASON: "old", "traceparent": "00-ab-cd-01"})
    earlier = (Failure(1, "E", "first", NOW - 1000),)
    cause = Cause("failed", "ValueError", "boom", "Traceback ...")
    message = dead_letter_message(
        NAMES, received, queue="q", cause=cause, attempts=2, history=earlier, now_ms=NOW
    )
    assert (message.exchange, message.routing_key) == ("w.dlx", "q")
    headers = message.headers
    assert headers[t.HEADER_DEAD_REASON] == "failed"
    assert headers[t.HEADER_DEAD_EXC_TYPE] == "ValueError"
    assert headers[t.HEADER_DEAD_EXC_MESSAGE] == "boom"
    assert headers[t.HEADER_DEAD_TRACEBACK] == "Traceback ..."
    assert headers[t.HEADER_DEAD_ATTEMPTS] == 2
    assert headers[t.HEADER_DEAD_FIRST_FAILED_AT] == NOW - 1000
    assert headers[t.HEADER_DEAD_LAST_FAILED_AT] == NOW
    assert headers["traceparent"] == "00-ab-cd-01"
    assert not t.BROKER_HEADERS & set(headers)
    assert message.content_type == "text/x-custom"


def test_a_replay_is_a_fresh_job_due_now() -> None:
    """Attempt 1, due now, its history kept; no dead-letter or broker headers."""
    history: list[HeaderValue] = [Failure(1, "E", "m", NOW - 1).as_header()]
    extra: dict[str, HeaderValue] = {
        t.HEADER_DEAD_REASON: "failed",
        t.HEADER_ATTEMPT: 4,
        t.HEADER_HISTORY: history,
    }
    received = _received_job(**extra)
    message = replay_message(NAMES, received, queue="q", now_ms=NOW)
    assert (message.exchange, message.routing_key) == ("w", "q")
    assert message.headers[t.HEADER_ATTEMPT] == 1
    assert message.headers[t.HEADER_ETA] == NOW
    assert message.headers[t.HEADER_HISTORY] == history
    assert not any(key.startswith(t.DEAD_HEADER_PREFIX) for key in message.headers)
    assert not t.BROKER_HEADERS & set(message.headers)


def test_a_dead_letter_of_a_job_whose_own_headers_are_huge_is_made_and_fits() -> None:
    """A 125 KB task name and a 122 KB exception type in the history: the dead letter drops
    them (named in the truncation marker), keeps why the job died, and fits the budget."""
    headers = dict(_received_job().headers)
    headers[t.HEADER_TASK] = "x" * 125_000
    history = (Failure(1, "T" * 122_000, "boom", NOW - 10),)
    message = dead_letter_message(
        NAMES,
        Received(headers=headers),
        queue="q",
        cause=Cause("unknown-task", "aqueue.exceptions.UnknownTaskError", "no task", "tb"),
        attempts=1,
        history=history,
        now_ms=NOW,
    )
    assert t.encoded_size(dict(message.headers)) <= t.HEADER_BUDGET
    assert t.HEADER_TASK not in message.headers
    marker = message.headers[t.HEADER_TRUNCATED]
    assert isinstance(marker, str)
    assert t.HEADER_TASK in marker
    assert message.headers[t.HEADER_DEAD_REASON] == "unknown-task"
    assert message.headers[t.HEADER_DEAD_ATTEMPTS] == 1
    kept = message.headers[t.HEADER_HISTORY]
    assert isinstance(kept, list)
    types = [entry["type"] for entry in kept if isinstance(entry, dict)]
    assert types == ["T" * 500, "aqueue.exceptions.UnknownTaskError"]


def test_a_copy_with_many_small_headers_leaves_room_for_the_truncation_marker() -> None:
    """2,400 small headers over the budget: the retry copy drops enough of them for the
    marker that names them, instead of giving up with EncodeError."""
    headers = dict(_received_job().headers)
    headers.update({f"h{i:04d}": "x" * 40 for i in range(2400)})
    assert t.encoded_size(headers) > t.HEADER_BUDGET
    message = retry_message(
        NAMES,
        Received(headers=headers),
        read_headers(headers),
        queue="q",
        attempt=1,
        failure=Failure(1, "ValueError", "boom", NOW),
        delay_ms=0,
        now_ms=NOW,
    )
    assert t.encoded_size(dict(message.headers)) <= t.HEADER_BUDGET
    assert message.headers[t.HEADER_TASK] == "tasks.add"
    assert t.HEADER_TRUNCATED in message.headers
