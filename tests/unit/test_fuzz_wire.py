"""Property tests (Hypothesis) of what a message can throw at the parts that read it.

A delivery's headers are data from whoever published it. Reading them raises `DecodeError`
or nothing; the copies a worker makes of a job raise `EncodeError` or nothing and always fit
the header budget, dead letters never raise; the dead-letter parser never raises; and the
retry policy, given numbers it accepts, always answers None or a finite delay within its caps.

CI runs ~200 examples per property (the ``ci`` profile, the default); for a long local hunt run
``HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/unit/test_fuzz_wire.py --timeout=0`` (see
docs/testing.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aqueue._cli.dlq import _print_dead_letter
from aqueue._client.deadletters import parse_dead_letter
from aqueue._core import wire as t
from aqueue._core.config import PER_JOB_OPTIONS, TaskOptions
from aqueue._core.delays import MAX_DELAY_MS, MAX_DELAY_SECONDS
from aqueue._core.retry import RetryPolicy
from aqueue._core.topology import TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._serialization import encode_arguments
from aqueue._transport import Delivery
from aqueue._transport.amqp_frames import encode_table as _table
from aqueue.exceptions import ConfigurationError, DecodeError, EncodeError, Retry

#: Failing examples with 100 KB strings print long: Hypothesis warns, and warnings are errors.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

NAMES = TopologyNames("fuzz")
NOW = 1_700_000_000_000
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

# -- strategies -----------------------------------------------------------------------------------

_NAMES_WE_READ = [
    t.HEADER_TASK,
    t.HEADER_ATTEMPT,
    t.HEADER_ENQUEUED_AT,
    t.HEADER_ETA,
    t.HEADER_VERSION,
    t.HEADER_QUEUE,
    t.HEADER_OPTIONS,
    t.HEADER_HISTORY,
    t.HEADER_WORKFLOW,
    t.HEADER_CRASHES,
    t.HEADER_DEAD_REASON,
    t.HEADER_DEAD_EXC_TYPE,
    t.HEADER_DEAD_EXC_MESSAGE,
    t.HEADER_DEAD_TRACEBACK,
    t.HEADER_DEAD_ATTEMPTS,
    t.HEADER_DEAD_FIRST_FAILED_AT,
    t.HEADER_DEAD_LAST_FAILED_AT,
    t.HEADER_DEAD_QUEUE,
    t.HEADER_TRUNCATED,
    "x-death",
    "x-delivery-count",
    "x-first-death-reason",
    "traceparent",
]
#: Header names: the ones aqueue reads (most of the time), or anything.
header_names = st.one_of(st.sampled_from(_NAMES_WE_READ), st.text(max_size=12))
#: A string that may be far bigger than any budget, without costing Hypothesis to draw it.
big_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda char, n: char * n, st.sampled_from("xé€𝄞"), st.integers(0, 200_000)),
)


def _values(scalars: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # empty tables and arrays are leaves: a container drawn from `inner` holds at least one
    # item (Hypothesis refuses an `extend` that can produce values without its argument)
    leaves = st.one_of(scalars, st.just([]), st.just({}))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=4),
            st.dictionaries(
                st.one_of(
                    header_names,
                    st.sampled_from(
                        [
                            "attempt",
                            "type",
                            "message",
                            "at",
                            "queue",
                            "reason",
                            "time",
                            *PER_JOB_OPTIONS,
                        ]
                    ),
                ),
                inner,
                min_size=1,
                max_size=5,
            ),
        ),
        max_leaves=12,
    )


#: Anything a header value could be, sent by any client through any library.
any_scalar: st.SearchStrategy[object] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**62, -(2**62), 2**63, 10**400, -(10**400)]),
    st.floats(),
    big_text,
    st.binary(max_size=20),
    st.datetimes(),
    st.datetimes(timezones=st.just(dt.UTC)),
)
any_value = _values(any_scalar)
#: What a delivery's headers can hold once the transport read them (`HeaderValue`): RabbitMQ
#: holds no integer beyond 64 bits and no float that is not finite.
received_scalar: st.SearchStrategy[object] = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    big_text,
)
received_value = _values(received_scalar)
#: AMQP field-table keys are short strings: at most 255 bytes.
received_keys = st.one_of(
    st.sampled_from(_NAMES_WE_READ),
    st.text(max_size=12),
    st.builds(lambda n: "k" * n, st.integers(200, 255)),
)


@st.composite
def job_headers(
    draw: st.DrawFn, value: st.SearchStrategy[object], keys: st.SearchStrategy[str]
) -> dict[str, object]:
    """A job's headers as `enqueue` writes them, then some changed, removed or added."""
    envelope = t.Envelope(
        job_id="job",
        task=draw(st.sampled_from(["tasks.add", "x"])),
        queue="q",
        attempt=draw(st.integers(1, 5)),
        enqueued_at_ms=NOW,
        eta_ms=draw(st.none() | st.just(NOW + 10)),
        options=draw(
            st.dictionaries(st.sampled_from(PER_JOB_OPTIONS), st.floats(0, 10), max_size=2)
        ),
        history=tuple(
            t.Failure(i + 1, "ValueError", draw(big_text), NOW)
            for i in range(draw(st.integers(0, 3)))
        ),
    )
    headers: dict[str, object] = dict(envelope.headers())
    for key in draw(st.lists(st.sampled_from(sorted(headers)), max_size=3, unique=True)):
        del headers[key]
    headers.update(draw(st.dictionaries(keys, value, max_size=6)))
    return headers


#: Times and counts: plausible, extreme (2**62 ms is past year 9999; 10**400 is no float), or
#: of another type altogether.
extreme_ints = st.sampled_from([0, -1, 2**62, -(2**62), 2**63, 10**400, -(10**400)])
times = st.one_of(INT64, extreme_ints, any_scalar)


@st.composite
def dead_letter_headers(draw: st.DrawFn) -> dict[str, object]:
    """A dead letter as the worker or RabbitMQ writes it, every time and count drawn freely."""
    headers = draw(job_headers(any_value, header_names))
    headers[t.HEADER_ENQUEUED_AT] = draw(times)
    headers[t.HEADER_ATTEMPT] = draw(times)
    entry = st.fixed_dictionaries(
        {"attempt": times, "type": any_scalar, "message": any_scalar, "at": times}
    )
    headers[t.HEADER_HISTORY] = draw(st.lists(entry, max_size=3) | any_value)
    if draw(st.booleans()):  # the worker's
        headers[t.HEADER_DEAD_REASON] = draw(st.text(max_size=10))
        for name in (
            t.HEADER_DEAD_ATTEMPTS,
            t.HEADER_DEAD_FIRST_FAILED_AT,
            t.HEADER_DEAD_LAST_FAILED_AT,
        ):
            headers[name] = draw(times)
    else:  # the broker's
        death = st.fixed_dictionaries(
            {
                "queue": st.sampled_from(["fuzz.q", "fuzz.delay.3"]) | any_scalar,
                "reason": st.sampled_from(["delivery_limit", "expired"]) | any_scalar,
                "time": times,
                "count": times,
            }
        )
        headers["x-death"] = draw(st.lists(death | any_value, max_size=3) | any_value)
        headers["x-first-death-reason"] = draw(any_scalar)
    return headers


@dataclass
class Received:
    """A received message as the builders read it (`wire.Received`)."""

    headers: Mapping[str, HeaderValue]
    body: bytes = b'{"args": [], "kwargs": {}}'
    message_id: str | None = "job"
    content_type: str = "application/json"


class FakeDelivery(Delivery):
    """A delivery with any headers and body, for the dead-letter parser."""

    def __init__(self, headers: Mapping[str, object], body: bytes, message_id: str | None) -> None:
        self.headers = headers  # type: ignore[assignment]  # deliberately anything
        self.body = body
        self.message_id = message_id
        self.content_type = ""
        self.routing_key = "q"
        self.queue = "fuzz.q.dlq"
        self.redelivered = False

    async def ack(self) -> None: ...

    async def reject(self, *, requeue: bool) -> None: ...


failures = st.builds(t.Failure, INT64, big_text, big_text, INT64)
causes = st.builds(
    t.Cause,
    st.sampled_from(["failed", "timeout", "decode-error", "unknown-task", "crashed"]),
    big_text,
    big_text,
    big_text,
)


def _fits(headers: Mapping[str, HeaderValue]) -> None:
    """Within the budget by aqueue's count, and by the bytes the AMQP transport would send."""
    assert t.encoded_size(dict(headers)) <= t.HEADER_BUDGET
    assert len(_table(headers)) <= t.HEADER_BUDGET


# -- reading --------------------------------------------------------------------------------------


@given(job_headers(any_value, header_names))
def test_read_headers_raises_only_decode_error(headers: dict[str, HeaderValue]) -> None:
    """Any header table: parsed, or `DecodeError`; a parsed attempt is always 1 or more."""
    try:
        parsed = t.read_headers(headers)
    except DecodeError:
        return
    assert parsed.attempt >= 1
    assert parsed.crashes >= 0
    assert isinstance(parsed.task, str)
    assert parsed.task


@given(st.dictionaries(st.sampled_from(PER_JOB_OPTIONS), any_scalar, max_size=5))
def test_per_job_options_are_taken_or_refused_with_configuration_error(
    options: dict[str, object],
) -> None:
    """Options a job carries: applied (and valid), or `ConfigurationError`, nothing else."""
    base = TaskOptions(retries=2)
    try:
        changed = base.with_overrides(options)  # type: ignore[arg-type]
    except ConfigurationError:
        return
    policy = changed.retry_policy()
    assert policy.max_attempts >= 1
    assert changed.timeout is None or 0 < changed.timeout < math.inf


@given(
    st.one_of(
        st.dictionaries(header_names, any_value, max_size=8),
        job_headers(any_value, header_names),
        dead_letter_headers(),
    ),
    st.binary(max_size=64),
    st.none() | st.text(max_size=10),
)
def test_parse_dead_letter_never_raises(
    headers: dict[str, object], body: bytes, message_id: str | None
) -> None:
    """Whatever a dead-letter queue holds, it reads as a `DeadLetter`."""
    letter = parse_dead_letter(
        FakeDelivery(headers, body, message_id), queue="q", work_queue="fuzz.q", delivery_limit=3
    )
    assert letter.body == body
    assert letter.reason
    for when in (letter.enqueued_at, letter.first_failed_at, letter.last_failed_at):
        assert when is None or when.tzinfo is not None


# -- the copies a worker makes --------------------------------------------------------------------


@given(
    job_headers(received_value, received_keys),
    causes,
    st.integers(1, 10**6),
    st.lists(failures, max_size=25),
)
def test_dead_letters_never_raise_and_always_fit(
    headers: dict[str, HeaderValue],
    cause: t.Cause,
    attempts: int,
    history: list[t.Failure],
) -> None:
    """A dead letter is always made, says why the job died, and fits in one frame."""
    message = t.dead_letter_message(
        NAMES,
        Received(headers),
        queue="q",
        cause=cause,
        attempts=attempts,
        history=tuple(history),
        now_ms=NOW,
    )
    _fits(message.headers)
    assert message.headers[t.HEADER_DEAD_REASON] == cause.reason
    assert message.headers[t.HEADER_DEAD_ATTEMPTS] == attempts
    assert not t.BROKER_HEADERS & set(message.headers)


@given(
    job_headers(received_value, received_keys),
    failures,
    st.integers(0, MAX_DELAY_MS),
    st.integers(1, 10),
)
def test_retry_and_quarantine_copies_raise_only_encode_error_and_fit(
    headers: dict[str, HeaderValue], failure: t.Failure, delay_ms: int, crashes: int
) -> None:
    """The next attempt, a quarantined copy, a replay: made and fitting, or `EncodeError`."""
    received = Received(headers)
    try:
        parsed = t.read_headers(headers)
    except DecodeError:
        return  # such a job is dead-lettered, never copied
    builders: list[Callable[[], t.OutgoingMessage]] = [
        lambda: t.retry_message(
            NAMES,
            received,
            parsed,
            queue="q",
            attempt=parsed.attempt,
            failure=failure,
            delay_ms=delay_ms,
            now_ms=NOW,
        ),
        lambda: t.quarantine_message(
            NAMES, received, queue="q", attempt=parsed.attempt + 1, crashes=crashes, now_ms=NOW
        ),
        lambda: t.replay_message(NAMES, received, queue="q", now_ms=NOW),
    ]
    for build in builders:
        try:
            message = build()
        except EncodeError:
            continue
        _fits(message.headers)
        assert not t.BROKER_HEADERS & set(message.headers)


# -- the retry policy -----------------------------------------------------------------------------

#: Numbers a policy accepts, edges and extremes drawn often.
seconds = st.one_of(
    st.floats(0, MAX_DELAY_SECONDS), st.sampled_from([0.0, 5e-324, 1e-300, MAX_DELAY_SECONDS])
)
factors = st.one_of(st.floats(1, 1e308), st.sampled_from([1.0, 2.0, 1e308]))
policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 10**9),
    signal_attempts=st.none() | st.integers(1, 10**9),
    backoff=seconds,
    factor=factors,
    max_backoff=seconds,
    jitter=st.floats(0, 1),
)
retry_delays = st.one_of(
    st.none(),
    st.floats(0, 1e308),
    st.timedeltas(min_value=dt.timedelta(0)),
)


class Boom(BaseException):
    pass


errors = st.one_of(
    st.builds(ValueError, st.text(max_size=5)),
    st.builds(Retry, retry_delays),
    st.builds(Boom),
    st.builds(TimeoutError),
)


@given(policies, errors, st.integers(1, 10**12), st.floats(0, 1, exclude_max=True))
def test_next_delay_is_none_or_finite_within_its_caps(
    policy: RetryPolicy, error: BaseException, attempt: int, random_value: float
) -> None:
    """None (not retried), or a finite delay: at most max_backoff, or the longest delay for
    ``Retry(delay=)``; never more than the backoff formula gives."""
    delay = policy.next_delay(error, attempt, random_value)
    if delay is None:
        return
    assert math.isfinite(delay)
    assert 0 <= delay <= MAX_DELAY_SECONDS
    if isinstance(error, Retry) and error.delay is not None:
        assert delay == min(error.delay, MAX_DELAY_SECONDS)
        return
    assert delay <= policy.max_backoff
    try:
        formula = policy.backoff * policy.factor ** (attempt - 1)
    except OverflowError:
        formula = math.inf if policy.backoff > 0 else 0.0
    assert delay <= formula


@given(received_value)
def test_encoded_size_bounds_the_bytes_sent(value: HeaderValue) -> None:
    """`encoded_size` is an upper bound of the AMQP encoding, which the budget relies on."""
    assert len(_table({"k": value})) <= t.encoded_size({"k": value})


json_bodies = st.one_of(
    st.binary(max_size=32),
    st.recursive(
        st.none()
        | st.booleans()
        | INT64
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, min_size=1, max_size=3)
            | st.dictionaries(st.text(max_size=5), inner, min_size=1)
        ),
        max_leaves=10,
    ).map(lambda value: encode_arguments([value], {"k": value})),
)


@given(st.one_of(job_headers(any_value, header_names), dead_letter_headers()), json_bodies)
def test_aqueue_dlq_show_prints_any_dead_letter(headers: dict[str, object], body: bytes) -> None:
    """What ``aqueue dlq show`` prints of a dead letter never raises, whatever it holds."""
    letter = parse_dead_letter(
        FakeDelivery(headers, body, "job"), queue="q", work_queue="fuzz.q", delivery_limit=3
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _print_dead_letter(letter)
    assert "job" in out.getvalue()
