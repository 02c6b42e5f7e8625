"""The frame guard: content headers and deliveries aiormq cannot decode, salvaged on bytes.

Every payload here is checked against pamqp itself, the decoder aiormq runs on what the guard
passes on: a frame the guard leaves alone must decode, and a frame it replaces must decode too
and carry the marker.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from datetime import UTC, datetime

import pytest
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp.body import ContentBody
from pamqp.common import FieldTable
from pamqp.exceptions import UnmarshalingException
from yarl import URL

from aqueue._transport.amqp_frames import (
    MARKER,
    MAX_HEADER_DEPTH,
    GuardedStreamReader,
    Properties,
    SanitizingTransportFactory,
    method_ok,
    properties_ok,
    sanitize_content_header,
    sanitize_method,
)
from tests.helpers.raw_amqp import long_string, nested_table, properties, short_string, table

BODY_SIZE = 24
AQUEUE_HEADERS = [
    (b"aqueue-task", b"S" + long_string(b"tasks.add")),
    (b"aqueue-attempt", b"I" + struct.pack(">i", 1)),
    (b"aqueue-enqueued-at", b"l" + struct.pack(">q", 1_760_000_000_000)),
]


def content_header(property_bytes: bytes, body_size: int = BODY_SIZE) -> bytes:
    """A content header frame payload: class 60, weight 0, the body size, the properties."""
    return struct.pack(">HHQ", 60, 0, body_size) + property_bytes


def decode(payload: bytes) -> spec.Basic.Properties:
    """What aiormq gets from pamqp for this payload (raises where aiormq's reader would die)."""
    content = pamqp_header.ContentHeader()
    content.unmarshal(payload)
    return content.properties


def job_properties(**fields: bytes) -> bytes:
    defaults = {
        "content_type": short_string(b"application/json"),
        "headers": table(AQUEUE_HEADERS),
        "delivery_mode": b"\x02",
        "message_id": short_string(b"job-1"),
    }
    return properties(**{**defaults, **fields})


def salvaged(payload: bytes) -> tuple[spec.Basic.Properties, str]:
    """Sanitize `payload` (which must need it); the decoded replacement and its reason."""
    result = sanitize_content_header(payload)
    assert result is not None
    replaced, reason = result
    props = decode(replaced)
    assert props.headers is not None
    assert props.headers[MARKER] == reason
    assert properties_ok(replaced)  # a replaced frame passes the quick check: no second round
    assert replaced[4:12] == payload[4:12]  # the body size: aiormq still reads the body
    return props, reason


# -- aqueue's own messages: the hot path ----------------------------------------------------


def test_aqueues_own_content_header_passes_the_quick_check_untouched() -> None:
    headers: FieldTable = {
        "aqueue-task": "tasks.add",
        "aqueue-attempt": 2,
        "aqueue-timeout": 0.25,
        "aqueue-options": {"retries": 3, "nothing": None},
        "aqueue-history": [{"attempt": 1, "type": "ValueError", "message": "é", "at": 1}],
        "flag": True,
    }
    stamp = datetime(2026, 1, 2, tzinfo=UTC)
    props = Properties(
        content_type="application/json",
        headers=headers,
        delivery_mode=2,
        message_id="0f8fad5bd9cb469fa16570867728950e",
        timestamp=stamp,
    )
    payload = pamqp_header.ContentHeader(0, BODY_SIZE, props).marshal()
    assert properties_ok(payload)
    assert sanitize_content_header(payload) is None


def test_a_fine_but_unusual_header_takes_the_slow_path_and_is_kept() -> None:
    """Milliseconds close to the year 9999: pamqp copes, the quick check is unsure."""
    payload = content_header(job_properties(timestamp=struct.pack(">Q", 253_402_300_000_000)))
    assert not properties_ok(payload)
    assert sanitize_content_header(payload) is None
    assert decode(payload).timestamp is not None


# -- the shapes that killed the consuming connection ----------------------------------------


def test_a_header_key_that_is_not_utf8_is_dropped_and_the_rest_kept() -> None:
    bad = [*AQUEUE_HEADERS, (b"bad\xff\xfe", b"S" + long_string(b"v"))]
    payload = content_header(job_properties(headers=table(bad)))
    with pytest.raises(ValueError, match="utf-8"):
        decode(payload)
    assert not properties_ok(payload)
    props, reason = salvaged(payload)
    assert "bad\\xff\\xfe" in reason
    assert props.headers is not None
    assert {k: v for k, v in props.headers.items() if k != MARKER} == {
        "aqueue-task": "tasks.add",
        "aqueue-attempt": 1,
        "aqueue-enqueued-at": 1_760_000_000_000,
    }
    assert props.message_id == "job-1"
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2


def test_a_message_id_that_is_not_utf8_is_kept_with_its_bad_bytes_escaped() -> None:
    payload = content_header(job_properties(message_id=short_string(b"id-\xff\xfe")))
    with pytest.raises(ValueError, match="utf-8"):
        decode(payload)
    props, reason = salvaged(payload)
    assert props.message_id == "id-\\xff\\xfe"
    assert reason == "message_id b'id-\\xff\\xfe' is not UTF-8"
    assert props.headers is not None
    assert props.headers["aqueue-task"] == "tasks.add"


def test_a_long_message_id_that_is_not_utf8_stays_a_short_string() -> None:
    payload = content_header(job_properties(message_id=short_string(b"\xff" * 255)))
    props, _ = salvaged(payload)
    assert props.message_id is not None
    assert len(props.message_id.encode()) <= 255


@pytest.mark.parametrize("stamp", [2**62, 2**64 - 1, 253_402_300_800_000])
def test_a_timestamp_past_the_year_9999_is_dropped(stamp: int) -> None:
    payload = content_header(job_properties(timestamp=struct.pack(">Q", stamp)))
    with pytest.raises((ValueError, OverflowError)):
        decode(payload)
    props, reason = salvaged(payload)
    assert props.timestamp is None
    assert reason == f"timestamp {stamp} is out of range"
    assert props.message_id == "job-1"


def test_a_timestamp_header_past_the_year_9999_drops_that_header() -> None:
    bad = [*AQUEUE_HEADERS, (b"when", b"T" + struct.pack(">Q", 2**62))]
    payload = content_header(job_properties(headers=table(bad)))
    props, reason = salvaged(payload)
    assert props.headers is not None
    assert "when" not in props.headers
    assert "headers['when']" in reason


def test_headers_nested_600_deep_are_dropped_without_recursing_that_deep() -> None:
    bad = [*AQUEUE_HEADERS, (b"deep", b"F" + nested_table(600))]
    payload = content_header(job_properties(headers=table(bad)))
    with pytest.raises(RecursionError):
        decode(payload)
    props, reason = salvaged(payload)
    assert props.headers is not None
    assert "deep" not in props.headers
    assert props.headers["aqueue-task"] == "tasks.add"
    assert f"nested deeper than {MAX_HEADER_DEPTH}" in reason
    assert len(reason) < 200


def test_headers_nested_to_the_limit_are_kept() -> None:
    fine = [*AQUEUE_HEADERS, (b"deep", b"F" + nested_table(MAX_HEADER_DEPTH - 1))]
    payload = content_header(job_properties(headers=table(fine)))
    assert properties_ok(payload)
    too_deep = [*AQUEUE_HEADERS, (b"deep", b"F" + nested_table(MAX_HEADER_DEPTH))]
    assert not properties_ok(content_header(job_properties(headers=table(too_deep))))


def test_a_bad_entry_inside_a_nested_table_drops_that_entry_only() -> None:
    inner = table([(b"ok", b"t\x01"), (b"\xc3", b"t\x01")])
    bad = [*AQUEUE_HEADERS, (b"opts", b"F" + inner)]
    props, _ = salvaged(content_header(job_properties(headers=table(bad))))
    assert props.headers is not None
    assert props.headers["opts"] == {"ok": True}


def test_an_unknown_field_type_keeps_the_entries_before_it() -> None:
    bad = [*AQUEUE_HEADERS, (b"odd", b"Z\x00\x00"), (b"after", b"t\x01")]
    props, reason = salvaged(content_header(job_properties(headers=table(bad))))
    assert props.headers is not None
    assert "aqueue-task" in props.headers
    assert "odd" not in props.headers
    assert "unknown field type b'Z'" in reason


def test_truncated_properties_keep_what_comes_before_the_cut() -> None:
    whole = job_properties(timestamp=struct.pack(">Q", 1_700_000_000))
    payload = content_header(whole[:-3])  # the timestamp is cut
    props, reason = salvaged(payload)
    assert props.message_id == "job-1"
    assert "end in the middle" in reason


def test_several_problems_are_all_named() -> None:
    payload = content_header(
        job_properties(
            message_id=short_string(b"\xff"),
            timestamp=struct.pack(">Q", 2**62),
            headers=table([*AQUEUE_HEADERS, (b"\xfe", b"t\x01")]),
        )
    )
    _, reason = salvaged(payload)
    assert reason.count(";") == 2


def test_a_problem_of_the_method_frame_marks_a_fine_content_header() -> None:
    payload = content_header(job_properties())
    result = sanitize_content_header(payload, "routing_key b'\\xff' is not UTF-8")
    assert result is not None
    props = decode(result[0])
    assert props.headers is not None
    assert props.headers[MARKER] == "routing_key b'\\xff' is not UTF-8"
    assert props.headers["aqueue-task"] == "tasks.add"


# -- method frames ----------------------------------------------------------------------------


def deliver_payload(routing_key: bytes, exchange: bytes = b"aq") -> bytes:
    return (
        struct.pack(">HH", 60, 60)
        + short_string(b"ctag-1")
        + struct.pack(">QB", 77, 1)
        + short_string(exchange)
        + short_string(routing_key)
    )


def unmarshal_method(payload: bytes) -> object:
    return pamqp_frame._unmarshal_method_frame(payload)


def test_a_deliver_with_a_routing_key_that_is_not_utf8_is_rebuilt() -> None:
    payload = deliver_payload(b"key-\xff")
    with pytest.raises(UnmarshalingException, match="utf-8"):
        unmarshal_method(payload)
    result = sanitize_method(payload)
    assert result is not None
    rebuilt, reason = result
    deliver = unmarshal_method(rebuilt)
    assert isinstance(deliver, spec.Basic.Deliver)
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered) == ("ctag-1", 77, True)
    assert (deliver.exchange, deliver.routing_key) == ("aq", "key-\\xff")
    assert reason == "routing_key b'key-\\xff' is not UTF-8"


def test_a_get_ok_with_an_exchange_that_is_not_utf8_is_rebuilt() -> None:
    payload = (
        struct.pack(">HH", 60, 71)
        + struct.pack(">QB", 5, 0)
        + short_string(b"x\xff")
        + short_string(b"rk")
        + struct.pack(">I", 9)
    )
    result = sanitize_method(payload)
    assert result is not None
    get_ok = unmarshal_method(result[0])
    assert isinstance(get_ok, spec.Basic.GetOk)
    assert (get_ok.delivery_tag, get_ok.exchange, get_ok.routing_key) == (5, "x\\xff", "rk")
    assert get_ok.message_count == 9


def test_fine_and_other_method_frames_are_left_alone() -> None:
    assert sanitize_method(deliver_payload(b"aqueue.default")) is None
    ack = pamqp_frame.marshal(spec.Basic.Ack(delivery_tag=3), 1)[7:-1]
    assert sanitize_method(ack) is None
    assert sanitize_method(deliver_payload(b"\xff")[:12]) is None  # too broken to rebuild


# -- the stream aiormq reads -------------------------------------------------------------------


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


BODY = b'{"args":[1],"kwargs":{}}'
_GOOD = job_properties()
_BAD = job_properties(message_id=short_string(b"\xff"))


def _stream(bad: bool) -> bytes:
    """Two channels, a heartbeat, a bad routing key with a fine header, a bad header, and a
    body bigger than a socket read, so that it is passed on in pieces; `bad=False`: all fine.
    """
    return b"".join(
        [
            _frame(1, 1, deliver_payload(b"aqueue.default")),
            _frame(2, 1, content_header(_GOOD, len(BODY))),
            _frame(3, 1, BODY),
            _frame(8, 0, b""),
            _frame(1, 2, deliver_payload(b"rk-\xfe" if bad else "rk-é".encode())),
            _frame(1, 1, deliver_payload(b"aqueue.default")),
            _frame(2, 1, content_header(_BAD if bad else _GOOD, 100_000)),
            _frame(3, 1, b"x" * 100_000),
            _frame(2, 2, content_header(_GOOD, len(BODY))),
            _frame(3, 2, BODY),
        ]
    )


STREAM = _stream(bad=True)


def _fed(data: bytes, sizes: list[int]) -> bytes:
    """What a guarded reader holds after `data` came in chunks of `sizes` (then the rest)."""

    async def feed() -> bytes:
        reader = GuardedStreamReader(loop=asyncio.get_running_loop())
        pos = 0
        for size in [*sizes, len(data)]:
            if pos < len(data):
                reader.feed_data(data[pos : pos + size])
                pos += size
        reader.feed_eof()
        return await reader.read()

    return asyncio.run(feed())


async def _frames(data: bytes) -> list[tuple[int, object]]:
    """The frames aiormq's own frame reader gets from a guarded reader fed `data`."""
    reader = GuardedStreamReader(loop=asyncio.get_running_loop())
    for pos in range(0, len(data), 65536):  # as a socket hands it over
        reader.feed_data(data[pos : pos + 65536])
    reader.feed_eof()
    return [(channel, value) async for _, channel, value in FrameReceiver(reader)]


async def test_aiormqs_frame_reader_gets_every_frame_with_the_bad_ones_replaced() -> None:
    frames = await _frames(STREAM)
    kinds = [type(value).__name__ for _, value in frames]
    assert kinds == [
        "Deliver",
        "ContentHeader",
        "ContentBody",
        "Heartbeat",
        "Deliver",
        "Deliver",
        "ContentHeader",
        "ContentBody",
        "ContentHeader",
        "ContentBody",
    ]
    headers = [value for _, value in frames if isinstance(value, pamqp_header.ContentHeader)]
    assert [MARKER in (h.properties.headers or {}) for h in headers] == [False, True, True]
    assert headers[1].properties.message_id == "\\xff"
    assert headers[1].body_size == 100_000
    assert "routing_key" in str((headers[2].properties.headers or {})[MARKER])
    bodies = [value.value for _, value in frames if isinstance(value, ContentBody)]
    assert bodies == [BODY, b"x" * 100_000, BODY]  # passed on as they came
    routing_keys = [v.routing_key for _, v in frames if isinstance(v, spec.Basic.Deliver)]
    assert routing_keys == ["aqueue.default", "rk-\\xfe", "aqueue.default"]


def test_a_stream_of_fine_frames_is_passed_on_as_the_same_bytes() -> None:
    fine = _stream(bad=False)
    assert _fed(fine, [7, 1, 300, 2]) == fine


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 400), max_size=30))
def test_how_the_socket_cuts_the_stream_changes_nothing(sizes: list[int]) -> None:
    assert _fed(STREAM, sizes) == _fed(STREAM, [])


async def test_a_frame_without_its_end_octet_is_passed_on_for_aiormq_to_refuse() -> None:
    broken = _frame(2, 1, content_header(_BAD))
    with pytest.raises(Exception, match="Last byte error"):
        await _frames(broken[:-1] + b"\x00")


async def test_a_stream_cut_mid_frame_ends_as_it_would_without_the_guard() -> None:
    cut = STREAM[: len(_frame(1, 1, deliver_payload(b"aqueue.default"))) + 20]
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await _frames(cut)


def test_the_guard_steps_aside_if_its_framing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the guard must not lose or reorder bytes: the connection goes on unguarded."""

    def broken(self: GuardedStreamReader, data: bytes, pos: int) -> tuple[bytes, bytes]:
        raise RuntimeError("a bug")

    head = STREAM[:5]
    monkeypatch.setattr(GuardedStreamReader, "_scan", broken)

    async def feed() -> bytes:
        reader = GuardedStreamReader(loop=asyncio.get_running_loop())
        reader._unparsed = head  # a frame start held from an earlier chunk
        reader.feed_data(STREAM[5:])
        reader.feed_data(b"more")
        reader.feed_eof()
        return await reader.read()

    assert asyncio.run(feed()) == STREAM + b"more"


# -- properties: the guard against pamqp, on generated bytes -----------------------------------

# Mostly well-formed, so that many payloads pass the quick check, with one bad part now and
# then: that is where a guard more lenient than pamqp would show.
_text = st.text(st.characters(codec="utf-8"), max_size=6).map(str.encode)
_keys = st.one_of(_text, _text, _text, st.binary(max_size=6))
_good_stamps = st.integers(0, 253_402_214_399_999)  # seconds, or milliseconds up to 9999
_stamps = st.one_of(
    _good_stamps,
    _good_stamps,
    st.integers(0, 2**64 - 1),
    st.sampled_from([0x100000000, 253_402_214_399_999, 253_402_300_799_999, 2**62]),
    st.integers(253_402_214_000_000, 253_402_301_000_000),
)
_FIXED_SIZES = dict(zip("tbBsuIilLfdDV", (1, 1, 1, 2, 2, 4, 4, 8, 8, 4, 8, 5, 0), strict=True))
_fixed = st.sampled_from(sorted(_FIXED_SIZES)).flatmap(
    lambda kind: st.binary(min_size=_FIXED_SIZES[kind], max_size=_FIXED_SIZES[kind]).map(
        lambda raw: kind.encode() + raw
    )
)
_good_scalars = st.one_of(
    _fixed,
    st.binary(max_size=8).map(lambda raw: b"S" + long_string(raw)),
    st.binary(max_size=8).map(lambda raw: b"x" + long_string(raw)),
    _good_stamps.map(lambda stamp: b"T" + struct.pack(">Q", stamp)),
)
_odd_scalars = st.one_of(
    _stamps.map(lambda stamp: b"T" + struct.pack(">Q", stamp)),
    st.sampled_from([b"Z", b"c", b"\xff"]).flatmap(  # types pamqp does not know
        lambda kind: st.binary(max_size=2).map(lambda raw: kind + raw)
    ),
    st.binary(min_size=1, max_size=3),  # garbage
)
_scalars = st.one_of(_good_scalars, _good_scalars, _good_scalars, _odd_scalars)


def _nest(values: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    entries = st.lists(st.tuples(_keys, values), max_size=4)
    arrays = st.lists(values, max_size=4).map(lambda items: b"A" + long_string(b"".join(items)))
    return st.one_of(entries.map(lambda e: b"F" + table(e)), arrays)


_values = st.recursive(_scalars, _nest, max_leaves=12)
_tables = st.lists(st.tuples(_keys, _values), max_size=5).map(table)
_short = st.one_of(_text, _text, st.binary(max_size=10)).map(short_string)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "content_type": _short,
        "headers": _tables,
        "delivery_mode": st.binary(min_size=1, max_size=1),
        "message_id": _short,
        "timestamp": _stamps.map(lambda stamp: struct.pack(">Q", stamp)),
        "type": _short,
        "app_id": _short,
    },
)


@st.composite
def _payloads(draw: st.DrawFn) -> bytes:
    payload = content_header(properties(**draw(_fields)))
    mutation = draw(st.sampled_from(["none", "none", "none", "cut", "flip"]))
    if mutation == "cut":
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif mutation == "flip" and len(payload) > 12:
        at = draw(st.integers(12, len(payload) - 1))
        payload = payload[:at] + bytes([draw(st.integers(0, 255))]) + payload[at + 1 :]
    return payload


def _pamqp_decodes(payload: bytes) -> bool:
    try:
        decode(payload)
    except Exception:  # noqa: BLE001 - any error is "cannot decode", as in aiormq's reader
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_payloads())
def test_the_guard_passes_only_what_pamqp_decodes_and_replaces_the_rest_with_what_it_does(
    payload: bytes,
) -> None:
    quick = properties_ok(payload)
    result = sanitize_content_header(payload)
    if quick:  # vouched for: pamqp decodes it, and there is nothing to salvage
        assert _pamqp_decodes(payload)
        assert result is None
    if result is None:
        assert _pamqp_decodes(payload) or len(payload) < 12  # a stub: no body size to keep
    else:
        replaced, reason = result
        assert reason
        assert _pamqp_decodes(replaced)
        assert properties_ok(replaced)
        assert (decode(replaced).headers or {})[MARKER] == reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_the_guard_never_raises_on_any_bytes(raw: bytes) -> None:
    payload = content_header(raw)
    result = sanitize_content_header(payload)
    if result is not None:
        assert _pamqp_decodes(result[0])
    sanitize_method(struct.pack(">HH", 60, 60) + raw)
    sanitize_method(struct.pack(">HH", 60, 71) + raw)


@st.composite
def _method_payloads(draw: st.DrawFn) -> bytes:
    strings = [draw(st.one_of(_text, _text, st.binary(max_size=8))) for _ in range(3)]
    if draw(st.booleans()):
        payload = deliver_payload(strings[2], strings[1]).replace(b"ctag-1", strings[0], 1)
        payload = payload[:4] + short_string(strings[0]) + payload[4 + 7 :]
    else:
        payload = (
            struct.pack(">HH", 60, 71)
            + struct.pack(">QB", 5, 0)
            + short_string(strings[1])
            + short_string(strings[2])
            + struct.pack(">I", 9)
        )
    if draw(st.booleans()):
        payload = payload[: draw(st.integers(0, len(payload)))]
    return payload


def _method_decodes(payload: bytes) -> bool:
    try:
        unmarshal_method(payload)
    except Exception:  # noqa: BLE001 - any error kills aiormq's reader
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(_method_payloads())
def test_the_method_check_passes_only_what_pamqp_decodes(payload: bytes) -> None:
    result = sanitize_method(payload)
    ours = payload[:4] in (struct.pack(">HH", 60, 60), struct.pack(">HH", 60, 71))
    if method_ok(payload) and ours:  # other methods (cut to nothing here) are aiormq's affair
        assert _method_decodes(payload)
        assert result is None
    if result is not None:
        assert _method_decodes(result[0])
        assert sanitize_method(result[0]) is None  # nothing left to clean


# -- the transport factory aiormq opens connections with ---------------------------------------


async def test_the_factory_connects_over_tcp_through_the_guard() -> None:
    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_frame(2, 1, content_header(_BAD)))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await SanitizingTransportFactory().create(
            URL(f"amqp://127.0.0.1:{port}/"), ssl_context_provider=object()
        )
        assert isinstance(reader, GuardedStreamReader)
        _, _, value = await FrameReceiver(reader).get_frame()
        writer.close()
        await writer.wait_closed()
    assert isinstance(value, pamqp_header.ContentHeader)
    assert MARKER in (value.properties.headers or {})


async def test_the_factory_reports_a_refused_connection_as_aiormq_does() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(AMQPConnectionError):
        await SanitizingTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))


async def test_the_factory_takes_tls_from_aiormqs_context_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For amqps:// the context comes from the provider aiormq passes, as in its TLS factory."""
    context = ssl.create_default_context()
    seen: dict[str, object] = {}

    class Provider:
        async def get_context(self) -> ssl.SSLContext:
            return context

    async def create_connection(*args: object, **kwargs: object) -> object:
        seen.update(kwargs, host=args[1], port=args[2])
        raise OSError("stop here")

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "create_connection", create_connection)
    with pytest.raises(AMQPConnectionError, match="stop here"):
        await SanitizingTransportFactory().create(
            URL("amqps://broker.example:5671/"), ssl_context_provider=Provider()
        )
    assert (seen["ssl"], seen["host"], seen["port"]) == (context, "broker.example", 5671)
    with pytest.raises(AMQPConnectionError):
        await SanitizingTransportFactory().create(
            URL("amqp://broker.example:5672/"), ssl_context_provider=Provider()
        )
    assert seen["ssl"] is None
