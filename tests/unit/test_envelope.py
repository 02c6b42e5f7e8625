from __future__ import annotations

import pytest

from aqueue._core import wire as t
from aqueue._core.wire import FORMAT_VERSION, Envelope, read_headers
from aqueue.exceptions import DecodeError


def test_headers_roundtrip() -> None:
    """The headers an envelope writes are read back as the same job metadata."""
    envelope = Envelope(
        job_id="j1",
        task="app.send",
        queue="emails",
        attempt=3,
        enqueued_at_ms=1_700_000_000_000,
        eta_ms=1_700_000_005_000,
        extra_headers={"traceparent": "00-abc-def-01"},
    )
    parsed = read_headers(envelope.headers())
    assert parsed.task == "app.send"
    assert parsed.queue == "emails"
    assert parsed.attempt == 3
    assert parsed.enqueued_at_ms == 1_700_000_000_000
    assert parsed.eta_ms == 1_700_000_005_000
    assert parsed.extra == {"traceparent": "00-abc-def-01"}
    assert envelope.due_at_ms() == 1_700_000_005_000


def test_no_eta_means_due_at_enqueue() -> None:
    """Without an ETA a job is due when it was enqueued, and no ETA header is written."""
    envelope = Envelope(job_id="j", task="t", queue="q", enqueued_at_ms=42)
    assert t.HEADER_ETA not in envelope.headers()
    assert read_headers(envelope.headers()).eta_ms is None
    assert envelope.due_at_ms() == 42


def test_broker_and_dead_letter_headers_are_not_propagated() -> None:
    """x-death and aqueue-dead-* headers never count as propagated headers."""
    headers = Envelope(job_id="j", task="t", queue="q").headers()
    headers.update({"x-first-death-reason": "rejected", t.HEADER_DEAD_REASON: "failed"})
    assert read_headers(headers).extra == {}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "no 'aqueue-task' header"),
        ({t.HEADER_TASK: ""}, "no 'aqueue-task' header"),
        ({t.HEADER_TASK: "t", t.HEADER_ATTEMPT: "1"}, "must be an integer"),
        ({t.HEADER_TASK: "t", t.HEADER_ATTEMPT: True}, "must be an integer"),
        ({t.HEADER_TASK: "t", t.HEADER_VERSION: FORMAT_VERSION + 1}, "newer"),
    ],
)
def test_bad_headers_raise_decode_error(headers: dict[str, object], message: str) -> None:
    """Missing task names, mistyped headers and future formats are decode errors."""
    with pytest.raises(DecodeError, match=message):
        read_headers(headers)  # type: ignore[arg-type]
