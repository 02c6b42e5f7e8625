"""AMQP frames and properties: how aqueue encodes them, and a guard for what it receives.

**Encoding** (`Properties`, `encode_table`): header floats travel as 64-bit doubles, which
pamqp does not do.

**The guard** (`SanitizingTransportFactory`): aiormq decodes every frame in the reader task of
its connection, and a frame pamqp cannot decode ends that task, so the whole connection closes.
A message whose *properties* cannot be decoded (a header key or a ``message_id`` that is not
UTF-8, a timestamp past the year 9999, headers nested hundreds of tables deep) therefore closes
the consuming connection on every delivery: the broker delivers it again after the reconnect,
and it closes the new connection too, with every other job on it. The guard sits between the
socket and aiormq (aiormq's public ``transport_factory`` hook gives it the stream aiormq reads)
and looks at the content header frames, and at the ``basic.deliver`` / ``basic.get-ok`` method
frames, before pamqp does. A frame that would not decode is replaced by one that does: the
properties that could be salvaged (strings not in UTF-8 with their bad bytes escaped, headers
without the bad entries) plus the marker header `MARKER`, whose value says what was wrong.
`AmqpDelivery` takes the marker out of the headers into ``Delivery.undecodable``, and the
worker dead-letters such a delivery (reason ``undecodable-properties``).

**Cost**: aiormq decodes the frame anyway, so asking pamqp first would decode every header twice
(pamqp takes about 10 µs for aqueue's headers on the development machine). Instead
`properties_ok` (and `method_ok` for deliveries) walks the bytes once, building nothing, and
vouches only for what it fully understands: 2.4 µs for the same headers, about 5 µs per
delivery for the whole guard. Only when it cannot vouch (bad bytes, or something unusual but
valid) does the slow path run: `sanitize_content_header` salvages field by field, and asks
pamqp itself before leaving a frame alone. So a content header or delivery the guard leaves
alone is one pamqp decodes (bar a frame too broken to rebuild, which aiormq reports as before).
Always on, rather than switched on after a first failure: that failure would already have
closed a connection and sent back every job on it.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import secrets
import struct
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, SupportsIndex

from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from pamqp import commands as spec
from pamqp import encode as pamqp_encode
from pamqp import header as pamqp_header
from yarl import URL

from aqueue._core.types import HeaderValue
from aqueue.exceptions import EncodeError

__all__ = [
    "MARKER",
    "MAX_HEADER_DEPTH",
    "GuardedStreamReader",
    "Properties",
    "SanitizingTransportFactory",
    "encode_table",
    "header_value",
    "method_ok",
    "properties_ok",
    "sanitize_content_header",
    "sanitize_method",
]

log = logging.getLogger(__name__)

#: The header the guard adds to a message whose properties it replaced; its value says why.
#: Random per process, so no publisher can set it: only this process's guard writes it, and
#: `AmqpDelivery` removes it before anything else sees the headers.
MARKER = f"x-aqueue-undecodable-{secrets.token_hex(4)}"
#: Headers nested deeper than this many tables and arrays are undecodable here. pamqp, aqueue's
#: own header code and JSON encoders all recurse once or twice per level, and whether pamqp
#: survives 300 levels depends on how deep the stack already is; aqueue's own headers nest 3.
MAX_HEADER_DEPTH = 64
#: What the marker's value may take (it is copied into the dead letter).
_MAX_REASON = 1000

_FRAME_METHOD, _FRAME_HEADER = 1, 2
_FRAME_END = 0xCE
#: Basic.Deliver and Basic.GetOk, the method frames that carry an exchange and a routing key
#: the broker took from a publisher as they came. (Basic.Return carries aqueue's own.)
_DELIVER = struct.pack(">HH", 60, 60)
_GET_OK = struct.pack(">HH", 60, 71)

# -- encoding -----------------------------------------------------------------------------

_PLAIN = frozenset({str, int, bool, float, type(None)})


def header_value(value: object) -> HeaderValue:
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
        return {str(key): header_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [header_value(item) for item in value]
    return str(value)


def is_plain(value: object) -> bool:
    """Whether `value` is a `HeaderValue` scalar already (the common case: no conversion)."""
    return type(value) in _PLAIN


def encode_table(value: Mapping[str, Any]) -> bytes:
    """A field table, its floats as 64-bit doubles; `EncodeError` for what RabbitMQ cannot take.

    Refused before anything is sent: nothing reaches the socket, the connection stays up.
    """
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
        return b"F" + encode_table(value)
    if isinstance(value, list | tuple):
        data = b"".join(_table_value(item) for item in value)
        return b"A" + struct.pack(">I", len(data)) + data
    return pamqp_encode.encode_table_value(value)  # type: ignore[arg-type]


class Properties(spec.Basic.Properties):
    """Basic properties whose header floats travel as 64-bit doubles.

    pamqp encodes every float in a field table as a 32-bit ``f``: ``timeout=0.1`` arrived as
    0.10000000149 and a value over 3.4e38 could not be sent at all. No ``__slots__`` here:
    pamqp's ``marshal`` walks the parent's.
    """

    def encode_property(self, name: str, value: Any) -> bytes:
        if name == "headers" and value:
            return encode_table(value)
        return super().encode_property(name, value)


# -- the quick check (every content header frame) -------------------------------------------

_SHORTSTR, _OCTET, _TABLE, _TIMESTAMP = range(4)
#: Basic.Properties on the wire: flag bit, pamqp's attribute name, type (AMQP 0-9-1, 4.2.6.1).
_LAYOUT = (
    (1 << 15, "content_type", _SHORTSTR),
    (1 << 14, "content_encoding", _SHORTSTR),
    (1 << 13, "headers", _TABLE),
    (1 << 12, "delivery_mode", _OCTET),
    (1 << 11, "priority", _OCTET),
    (1 << 10, "correlation_id", _SHORTSTR),
    (1 << 9, "reply_to", _SHORTSTR),
    (1 << 8, "expiration", _SHORTSTR),
    (1 << 7, "message_id", _SHORTSTR),
    (1 << 6, "timestamp", _TIMESTAMP),
    (1 << 5, "message_type", _SHORTSTR),
    (1 << 4, "user_id", _SHORTSTR),
    (1 << 3, "app_id", _SHORTSTR),
    (1 << 2, "cluster_id", _SHORTSTR),
)
#: Field value types of a fixed size (pamqp's TABLE_MAPPING), by type octet.
_FIXED = {
    ord(kind): size
    for kind, size in zip(
        "tbBsuIilLfdDV\x00", (1, 1, 1, 2, 2, 4, 4, 8, 8, 4, 8, 5, 0, 0), strict=True
    )
}
_LONG_STRING, _BYTE_ARRAY = ord("S"), ord("x")
_NESTED_TABLE, _ARRAY, _STAMP = ord("F"), ord("A"), ord("T")
#: pamqp reads a timestamp over 2**32 as milliseconds; below this (9999-12-31T00:00Z in ms)
#: `datetime.fromtimestamp` surely copes. Between it and the true limit: the slow path decides.
_SAFE_TIMESTAMP = 253_402_214_400_000
#: A content header frame: class id, weight, body size, then the property flags.
_PROPERTIES_AT = 12


def properties_ok(payload: bytes) -> bool:
    """Whether pamqp surely decodes this content header frame payload, with nothing to salvage.

    Fast, and allowed to say False for a frame that is fine (the slow path then looks closer);
    never True for one pamqp cannot decode.
    """
    limit = len(payload)
    if limit < _PROPERTIES_AT + 2:
        return False
    flags = payload[_PROPERTIES_AT] << 8 | payload[_PROPERTIES_AT + 1]
    if flags & 0b111:  # cluster_id, an unused bit or a second flag word: unusual, look closer
        return False
    pos = _PROPERTIES_AT + 2
    for bit, _, kind in _LAYOUT:
        if flags & bit:
            pos = _PROPERTY_OK[kind](payload, pos, limit)
            if pos < 0:
                return False
    return True


def _short_string_ok(data: bytes, pos: int, limit: int) -> int:
    if pos >= limit:
        return -1
    end = pos + 1 + data[pos]
    return end if end <= limit and _utf8(data[pos + 1 : end]) else -1


def _headers_ok(data: bytes, pos: int, limit: int) -> int:
    return _table_ok(data, pos, limit, 1)


def _octet_ok(_: bytes, pos: int, limit: int) -> int:
    return pos + 1 if pos < limit else -1


def _timestamp_ok(data: bytes, pos: int, limit: int) -> int:
    end = pos + 8
    return end if end <= limit and int.from_bytes(data[pos:end]) < _SAFE_TIMESTAMP else -1


_PROPERTY_OK = {
    _SHORTSTR: _short_string_ok,
    _TABLE: _headers_ok,
    _OCTET: _octet_ok,
    _TIMESTAMP: _timestamp_ok,
}


def _utf8(raw: bytes) -> bool:
    if raw.isascii():  # nearly always, and far cheaper than decoding
        return True
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _table_ok(data: bytes, pos: int, limit: int, depth: int) -> int:
    """The end of the field table at `pos` if it is surely fine, else -1."""
    start = pos + 4
    if depth > MAX_HEADER_DEPTH or start > limit:
        return -1
    end = start + int.from_bytes(data[pos:start])
    if end > limit:
        return -1
    pos = start
    fixed = _FIXED
    while pos < end:
        key_end = pos + 1 + data[pos]
        key = data[pos + 1 : key_end]
        if key_end >= end or not (key.isascii() or _utf8(key)):
            return -1
        # the two common value types inline: this loop runs for every header of every job
        kind = data[key_end]
        size = fixed.get(kind)
        if size is not None:
            pos = key_end + 1 + size
        elif kind == _LONG_STRING:
            start = key_end + 5
            pos = start + int.from_bytes(data[key_end + 1 : start])
        else:
            pos = _value_ok(data, key_end, end, depth)
            if pos < 0:
                return -1
        if pos > end:
            return -1
    return end


def _value_ok(data: bytes, pos: int, limit: int, depth: int) -> int:
    """The end of the field value at `pos` (its type octet) if it is surely fine, else -1."""
    if pos >= limit:
        return -1
    kind = data[pos]
    pos += 1
    size = _FIXED.get(kind)
    if size is not None:
        pos += size
    elif kind in (_LONG_STRING, _BYTE_ARRAY):
        start = pos + 4
        if start > limit:
            return -1
        pos = start + int.from_bytes(data[pos:start])
    elif kind == _NESTED_TABLE:
        return _table_ok(data, pos, limit, depth + 1)
    elif kind == _ARRAY:
        return _array_ok(data, pos, limit, depth + 1)
    elif kind == _STAMP:
        return _timestamp_ok(data, pos, limit)
    else:
        return -1  # a type pamqp does not know
    return pos if pos <= limit else -1


def _array_ok(data: bytes, pos: int, limit: int, depth: int) -> int:
    start = pos + 4
    if depth > MAX_HEADER_DEPTH or start > limit:
        return -1
    end = start + int.from_bytes(data[pos:start])
    if end > limit:
        return -1
    pos = start
    while pos < end:
        pos = _value_ok(data, pos, end, depth)
        if pos < 0:
            return -1
    return end


# -- the slow path: salvage ----------------------------------------------------------------


class _Broken(Exception):
    """The bytes end, or lie, before a value does: nothing after it can be found."""


def _salvage_string(raw: bytes) -> str:
    """A string for bytes that are not UTF-8: bad bytes escaped, within 255 bytes."""
    text = raw.decode("utf-8", errors="backslashreplace")
    encoded = text.encode()
    if len(encoded) <= 255:
        return text
    return encoded[:255].decode("utf-8", errors="ignore")  # cut at a character boundary


class _Salvage:
    """Decodes properties field by field, keeping what decodes and noting what does not."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.problems: list[str] = []
        # a table or array too deep was met: every container around it goes, up to the
        # header entry (64 levels of what is left are no use to anyone reading the dead letter)
        self.too_deep = False

    def _take(self, pos: int, size: int, limit: int) -> bytes:
        end = pos + size
        if end > limit:
            raise _Broken
        return self.data[pos:end]

    def short_string(self, pos: int, limit: int, what: str) -> tuple[int, str]:
        size = self._take(pos, 1, limit)[0]
        raw = self._take(pos + 1, size, limit)
        try:
            return pos + 1 + size, raw.decode()
        except UnicodeDecodeError:
            self.problems.append(f"{what} {raw!r} is not UTF-8")
            return pos + 1 + size, _salvage_string(raw)

    def timestamp(self, pos: int, limit: int, what: str) -> tuple[int, int | None]:
        """Whole seconds, or None (noted) when pamqp could not make a datetime of it."""
        value = int.from_bytes(self._take(pos, 8, limit))
        seconds = value / 1000 if value > 0xFFFFFFFF else value  # as pamqp reads it
        try:
            stamp = datetime.fromtimestamp(seconds, tz=UTC)
        except (ValueError, OverflowError, OSError):
            self.problems.append(f"{what} {value} is out of range")
            return pos + 8, None
        return pos + 8, calendar.timegm(stamp.utctimetuple())

    def table(
        self, pos: int, limit: int, depth: int, what: str
    ) -> tuple[int, dict[str, HeaderValue] | None]:
        """The table at `pos` without its bad entries; None (noted) if nested too deep."""
        start = pos + 4
        end = start + int.from_bytes(self._take(pos, 4, limit))
        if end > limit:
            self.problems.append(f"{what} is longer than the frame")
            end = limit  # salvage the entries that are there
        if depth > MAX_HEADER_DEPTH:
            self.problems.append(f"{what} is nested deeper than {MAX_HEADER_DEPTH} tables")
            self.too_deep = True
            return end, None
        entries: dict[str, HeaderValue] = {}
        pos = start
        try:
            while pos < end:
                size = self._take(pos, 1, end)[0]
                raw_key = self._take(pos + 1, size, end)
                try:
                    key: str | None = raw_key.decode()
                except UnicodeDecodeError:
                    self.problems.append(f"{what} has a key that is not UTF-8: {raw_key!r}")
                    key = None
                name = key if key is not None else _salvage_string(raw_key)
                path = f"{what}[{name!r}]" if len(what) < 60 else what  # deep: short text
                pos, value, ok = self.value(pos + 1 + size, end, depth, path)
                if self.too_deep:
                    if depth > 1:
                        return end, None
                    self.too_deep = False  # the header entry goes; the others stay
                elif key is not None and ok:
                    entries[key] = value
        except _Broken:
            self.problems.append(f"{what} ends in the middle of an entry")
        return end, entries

    def array(
        self, pos: int, limit: int, depth: int, what: str
    ) -> tuple[int, list[HeaderValue] | None]:
        start = pos + 4
        end = start + int.from_bytes(self._take(pos, 4, limit))
        if end > limit:
            self.problems.append(f"{what} is longer than the frame")
            end = limit
        if depth > MAX_HEADER_DEPTH:
            self.problems.append(f"{what} is nested deeper than {MAX_HEADER_DEPTH} tables")
            self.too_deep = True
            return end, None
        items: list[HeaderValue] = []
        pos = start
        try:
            while pos < end:
                path = f"{what}[{len(items)}]" if len(what) < 60 else what
                pos, value, ok = self.value(pos, end, depth, path)
                if self.too_deep:
                    return end, None  # an array is never the header entry itself
                if ok:
                    items.append(value)
        except _Broken:
            self.problems.append(f"{what} ends in the middle of an item")
        return end, items

    def value(self, pos: int, limit: int, depth: int, what: str) -> tuple[int, HeaderValue, bool]:
        """The field value at `pos`, its end, and whether it is kept.

        Raises:
            _Broken: the value runs past `limit`, or its type is unknown (then its size is).
        """
        kind = self._take(pos, 1, limit)[0]
        pos += 1
        size = _FIXED.get(kind)
        if size is not None:
            raw = self._take(pos, size, limit)
            return pos + size, _fixed_value(kind, raw), True
        if kind in (_LONG_STRING, _BYTE_ARRAY):
            size = int.from_bytes(self._take(pos, 4, limit))
            raw = self._take(pos + 4, size, limit)
            return pos + 4 + size, raw.decode("utf-8", errors="replace"), True
        if kind == _STAMP:
            pos, seconds = self.timestamp(pos, limit, what)
            return pos, seconds, seconds is not None
        if kind == _NESTED_TABLE:
            pos, table = self.table(pos, limit, depth + 1, what)
            return pos, table, table is not None
        if kind == _ARRAY:
            pos, items = self.array(pos, limit, depth + 1, what)
            return pos, items, items is not None
        self.problems.append(f"{what} has an unknown field type {bytes([kind])!r}")
        raise _Broken


def _fixed_value(kind: int, raw: bytes) -> HeaderValue:
    """A fixed-size field value, as pamqp then `header_value` would make it."""
    letter = chr(kind)
    if letter in "V\x00":
        return None
    if letter == "t":
        return raw != b"\x00"
    if letter == "f":
        return float(struct.unpack(">f", raw)[0])
    if letter == "d":
        return float(struct.unpack(">d", raw)[0])
    if letter == "D":
        return float(Decimal(int.from_bytes(raw[1:], signed=True)).scaleb(-raw[0]))
    # b, s, I, l, L are signed in pamqp; B, u, i unsigned
    return int.from_bytes(raw, signed=letter in "bsIlL")


def _salvage_properties(payload: bytes) -> tuple[dict[str, Any], list[str]]:
    """The properties of a content header payload that could be decoded, and what was wrong."""
    salvage = _Salvage(payload)
    fields: dict[str, Any] = {}
    limit = len(payload)
    pos = _PROPERTIES_AT
    flags = 0
    try:
        for word in range(8):  # flag words chain while their lowest bit is set, as in pamqp
            partial = int.from_bytes(salvage._take(pos, 2, limit))
            pos += 2
            flags |= partial << (16 * word)
            if not partial & 1:
                break
        for bit, name, kind in _LAYOUT:
            if not flags & bit:
                continue
            if kind == _SHORTSTR:
                pos, fields[name] = salvage.short_string(pos, limit, name)
            elif kind == _OCTET:
                fields[name] = salvage._take(pos, 1, limit)[0]
                pos += 1
            elif kind == _TIMESTAMP:
                pos, seconds = salvage.timestamp(pos, limit, name)
                if seconds is not None:
                    fields[name] = datetime.fromtimestamp(seconds, tz=UTC)
            else:
                pos, fields[name] = salvage.table(pos, limit, 1, "headers")
    except _Broken:
        salvage.problems.append("the properties end in the middle of a value")
    return fields, salvage.problems


def sanitize_content_header(payload: bytes, pending: str | None = None) -> tuple[bytes, str] | None:
    """A content header payload pamqp decodes in place of `payload`, and why; None to keep it.

    The replacement carries what could be salvaged and `MARKER` saying why. `pending` is a
    problem found in the message's method frame: the header is then replaced (and marked)
    even if its own properties are fine.
    """
    if len(payload) < _PROPERTIES_AT:  # not even a body size: aiormq reports it as it is
        return None
    fields, problems = _salvage_properties(payload)
    if pending is not None:
        problems.insert(0, pending)
    if not problems:
        try:  # the last word is pamqp's: the guard must never pass what it cannot decode
            pamqp_header.ContentHeader().unmarshal(payload)
        except Exception as exc:  # noqa: BLE001 - a RecursionError, an OverflowError, ...
            problems.append(f"the AMQP client cannot decode them ({exc!r})"[:_MAX_REASON])
        else:
            return None
    reason = "; ".join(problems)
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    headers = fields.get("headers") or {}
    headers[MARKER] = reason
    fields["headers"] = headers
    fields.pop("cluster_id", None)  # pamqp refuses to build properties with one
    if fields.get("delivery_mode") not in (1, 2):
        fields.pop("delivery_mode", None)  # likewise
    body_size = payload[4:_PROPERTIES_AT]
    try:
        properties = Properties(**fields).marshal()
    except Exception:  # noqa: BLE001 - e.g. an unencodable value: keep only why
        properties = Properties(headers={MARKER: reason}).marshal()
    return struct.pack(">HH", 60, 0) + body_size + properties, reason


# -- method frames -------------------------------------------------------------------------


def method_ok(payload: bytes) -> bool:
    """Whether a method frame payload surely needs nothing.

    True for every method but Basic.Deliver and GetOk, and for those when their strings are
    ASCII; the slow path (`sanitize_method`) tells valid UTF-8 from the rest.
    """
    ids = payload[:4]
    try:
        if ids == _DELIVER:
            pos = 5 + payload[4]  # past the consumer tag
            if not payload[5:pos].isascii():
                return False
            pos += 9  # delivery tag, redelivered
            after = 0
        elif ids == _GET_OK:
            pos, after = 13, 4  # the message count follows the routing key
        else:
            return True
        for _ in range(2):  # exchange, routing key
            end = pos + 1 + payload[pos]
            if not payload[pos + 1 : end].isascii():
                return False
            pos = end
    except IndexError:  # cut short: let the slow path look
        return False
    # the positions only grew: everything read lies inside the payload
    return pos + after <= len(payload)


def sanitize_method(payload: bytes) -> tuple[bytes, str] | None:
    """For a Basic.Deliver or GetOk whose strings are not UTF-8: a clean payload, and why.

    None when the frame is fine, is another method, or is too broken to rebuild (aiormq then
    reports it as it always did). Rebuilt by hand, not by pamqp: its Basic.Deliver refuses to
    be built with exchange names the broker accepts.
    """
    ids = payload[:4]
    layout: tuple[str | int, ...]
    if ids == _DELIVER:
        layout = ("consumer_tag", 9, "exchange", "routing_key")  # 9: delivery tag, redelivered
    elif ids == _GET_OK:
        layout = (9, "exchange", "routing_key", 4)  # 4: the message count
    else:
        return None
    salvage = _Salvage(payload)
    limit = len(payload)
    parts = [ids]
    pos = 4
    try:
        for item in layout:
            if isinstance(item, int):
                parts.append(salvage._take(pos, item, limit))
                pos += item
                continue
            before = len(salvage.problems)
            end, text = salvage.short_string(pos, limit, item)
            parts.append(
                payload[pos:end] if len(salvage.problems) == before else _short_string(text)
            )
            pos = end
    except _Broken:
        return None
    if not salvage.problems:
        return None
    parts.append(payload[pos:])
    return b"".join(parts), "; ".join(salvage.problems)


def _short_string(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


# -- the stream aiormq reads ---------------------------------------------------------------

#: What asyncio.open_connection gives its readers (a StreamReader pauses the socket past twice it)
_READER_LIMIT = 2**16


class GuardedStreamReader(asyncio.StreamReader):
    """The stream aiormq reads its frames from, with the frames pamqp cannot decode replaced.

    The guard runs where the socket's bytes enter the stream (``feed_data``, once per chunk
    received), not where aiormq reads: aiormq reads three times per frame, and a wrapper
    around those reads cost three times as much (10 µs per delivery, against 3.6). Method and
    content header frames are collected whole and checked; every other frame (bodies above
    all) is passed on as it arrives. If the framing here ever fails, the guard steps aside and
    passes the rest of the connection on as it is: never worse than no guard.
    """

    def __init__(self, *, limit: int = _READER_LIMIT, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._unparsed = b""  # the start of an incomplete method or header frame
        self._skip = 0  # bytes still to come of a frame passed on as it arrives
        self._pending: dict[int, str] = {}  # channel -> a problem of its last method frame
        self._off = False  # lost track of the frames: everything is passed on as it is

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if self._off:
            super().feed_data(data)
            return
        raw = data if isinstance(data, bytes) else bytes(data)  # asyncio's protocol: bytes
        try:
            raw = self._guard(raw)
        except Exception:  # a bug in the framing here: step aside, never lose bytes
            log.exception("the AMQP frame guard failed; it is off for this connection")
            raw, self._unparsed, self._off = self._unparsed + raw, b"", True
        super().feed_data(raw)

    def feed_eof(self) -> None:
        # the start of a frame cut off by the end of the stream goes on too: aiormq then
        # reports a connection closed mid-frame, as without the guard, not a clean end
        if self._unparsed:
            super().feed_data(self._unparsed)
            self._unparsed = b""
        super().feed_eof()

    def _guard(self, data: bytes) -> bytes:
        """`data` as aiormq should see it (a frame not complete yet is kept for the next)."""
        pos = 0
        if self._skip:
            if len(data) <= self._skip:  # the middle of a body: the common case for big ones
                self._skip -= len(data)
                return data
            pos, self._skip = self._skip, 0
        elif self._unparsed:
            data = self._unparsed + data
        checked, self._unparsed = self._scan(data, pos)  # kept until here, for feed_data
        return checked

    def _scan(self, data: bytes, pos: int) -> tuple[bytes, bytes]:
        """What aiormq gets of `data` (frames start at `pos`), and the incomplete rest."""
        start, end = 0, len(data)  # data[start:pos] is checked and not yet in `out`
        out: list[bytes] = []
        while end - pos >= 7:
            kind = data[pos]
            frame_end = pos + 8 + int.from_bytes(data[pos + 3 : pos + 7])
            if kind in (_FRAME_METHOD, _FRAME_HEADER):
                if frame_end > end:
                    break  # the rest comes with the next chunk
                replaced = self._checked(kind, data, pos, frame_end)
                if replaced is not None:
                    out += (data[start:pos], replaced)
                    start = frame_end
            elif frame_end > end:
                self._skip = frame_end - end
                pos = end
                break
            pos = frame_end
        rest = data[pos:] if pos < end else b""
        if not out:
            return (data if start == 0 and pos == end else data[start:pos]), rest
        out.append(data[start:pos])
        return b"".join(out), rest

    def _checked(self, kind: int, data: bytes, pos: int, frame_end: int) -> bytes | None:
        """The frame to pass on in place of ``data[pos:frame_end]``, or None to keep it."""
        if data[frame_end - 1] != _FRAME_END:
            return None  # aiormq reports it as it is
        payload = data[pos + 7 : frame_end - 1]
        channel = int.from_bytes(data[pos + 1 : pos + 3])
        try:
            if kind == _FRAME_METHOD:
                if method_ok(payload):
                    return None  # the hot path
                method = sanitize_method(payload)
                if method is None:
                    return None
                self._pending[channel] = method[1]  # its content header carries the marker
                return _frame(kind, channel, method[0])
            pending = self._pending.pop(channel, None) if self._pending else None
            if pending is None and properties_ok(payload):
                return None  # the hot path
            result = sanitize_content_header(payload, pending)
        except Exception:  # a bug in a check must not be worse than no guard: aiormq decides
            log.exception("could not check a frame on channel %d; passing it on as it is", channel)
            return None
        if result is None:
            return None
        log.warning(
            "a message on channel %d has properties the AMQP client cannot decode (%s); it is "
            "delivered with what could be salvaged, marked for the dead-letter queue",
            channel,
            result[1],
        )
        return _frame(kind, channel, result[0])


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([_FRAME_END])


class SanitizingTransportFactory(TransportFactory):
    """aiormq's TCP or TLS connection, read through a `GuardedStreamReader`.

    What ``asyncio.open_connection`` does, with the guarded reader in place of its own, and
    the TLS context taken as aiormq's TLS factory takes it (for ``amqps://`` URLs, the choice
    aiormq makes when no factory is given).
    """

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        context = await provider.get_context() if url.scheme == "amqps" and provider else None
        if url.host is None or url.port is None:  # aiormq sets the port of an absolute URL
            raise AMQPConnectionError(f"no host and port to connect to in {url}")
        loop = asyncio.get_running_loop()
        reader = GuardedStreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, url.host, url.port, ssl=context, **kwargs
            )
        except OSError as exc:  # as aiormq's factories report it
            raise AMQPConnectionError(*exc.args) from exc
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
