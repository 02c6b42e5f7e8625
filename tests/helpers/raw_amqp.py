"""Publish messages whose AMQP properties no client library would encode, over a plain socket.

aio-pika (through pamqp) refuses to send a header key that is not UTF-8, a ``message_id`` that
is not UTF-8, a timestamp past the year 9999 or a routing key that is not UTF-8, and RabbitMQ
passes such bytes on as they came. To test what a consumer does with them, this module speaks
just enough AMQP 0-9-1 itself: the handshake, one channel in confirm mode, ``basic.publish``
with a content header frame whose property bytes the test builds (`properties`, `table`,
`short_string`), and the wait for the confirm. Synchronous: from async tests, call `publish_raw`
through ``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from pamqp import commands, frame, header
from pamqp.base import Frame

TIMEOUT = 10.0
_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY = 1, 2, 3
_FRAME_END = b"\xce"
_BASIC = 60

# The property flags of Basic.Properties, in their order on the wire (AMQP 0-9-1, 4.2.6.1).
_FLAGS = {
    "content_type": 1 << 15,
    "content_encoding": 1 << 14,
    "headers": 1 << 13,
    "delivery_mode": 1 << 12,
    "priority": 1 << 11,
    "correlation_id": 1 << 10,
    "reply_to": 1 << 9,
    "expiration": 1 << 8,
    "message_id": 1 << 7,
    "timestamp": 1 << 6,
    "type": 1 << 5,
    "user_id": 1 << 4,
    "app_id": 1 << 3,
}


def short_string(raw: bytes) -> bytes:
    """An AMQP short string of `raw` as it is, valid UTF-8 or not."""
    if len(raw) > 255:
        raise ValueError("a short string holds at most 255 bytes")
    return bytes([len(raw)]) + raw


def long_string(raw: bytes) -> bytes:
    """An AMQP long string (field type ``S`` without its type octet) of `raw` as it is."""
    return struct.pack(">I", len(raw)) + raw


def table(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A field table of (key bytes, typed value bytes) entries, e.g. ``(b"k", b"S" + ...)``."""
    data = b"".join(short_string(key) + value for key, value in entries)
    return struct.pack(">I", len(data)) + data


def nested_table(depth: int) -> bytes:
    """A field table `depth` tables deep (``{"n": {"n": ... {}}}``)."""
    inner = table([])
    for _ in range(depth - 1):
        inner = table([(b"n", b"F" + inner)])
    return inner


def properties(**fields: bytes) -> bytes:
    """The property flags and list of a content header, each field's bytes given as encoded.

    ``properties(message_id=short_string(b"\\xff"), delivery_mode=b"\\x02")``: shortstr fields
    take `short_string`, ``headers`` takes `table`, ``timestamp`` 8 bytes, octets 1 byte.
    """
    flags = 0
    parts = []
    for name, bit in _FLAGS.items():  # the wire order
        if name in fields:
            flags |= bit
            parts.append(fields[name])
    unknown = set(fields) - set(_FLAGS)
    if unknown:
        raise ValueError(f"unknown properties: {sorted(unknown)}")
    return struct.pack(">H", flags) + b"".join(parts)


def _frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + _FRAME_END


class _Socket:
    def __init__(self, host: str, port: int) -> None:
        self._sock = socket.create_connection((host, port), timeout=TIMEOUT)

    def close(self) -> None:
        self._sock.close()

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def send_method(self, method: Frame, channel: int = 0) -> None:
        self.send(frame.marshal(method, channel))

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self._sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError(f"the broker closed the socket ({data!r} of {count})")
            data += chunk
        return data

    def receive(self) -> object:
        """The next frame that is not a heartbeat."""
        while True:
            head = self._read(7)
            _, _, size = struct.unpack(">BHI", head)
            _, _, value = frame.unmarshal(head + self._read(size + 1))
            if value.name != "Heartbeat":
                return value

    def expect(self, kind: type[Frame]) -> Frame:
        value = self.receive()
        if not isinstance(value, kind):
            raise RuntimeError(f"expected {kind.__name__}, the broker sent {value!r}")
        return value


def publish_raw(
    url: str,
    *,
    exchange: str,
    routing_key: bytes,
    property_bytes: bytes,
    body: bytes,
) -> None:
    """Publish one message with hand-built property bytes; return once the broker confirmed it.

    `routing_key` is sent as it is (it may be invalid UTF-8). Raises if the broker closes the
    channel or the connection, returns the message (it is published mandatory) or nacks it.
    """
    parts = urlsplit(url)
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    conn = _Socket(parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        conn.send(header.ProtocolHeader().marshal())
        conn.expect(commands.Connection.Start)
        conn.send_method(
            commands.Connection.StartOk(
                client_properties={"connection_name": "aqueue-tests-raw-publisher"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
            )
        )
        tune = conn.expect(commands.Connection.Tune)
        assert isinstance(tune, commands.Connection.Tune)
        conn.send_method(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
            )
        )
        conn.send_method(commands.Connection.Open(virtual_host=vhost))
        conn.expect(commands.Connection.OpenOk)
        conn.send_method(commands.Channel.Open(), 1)
        conn.expect(commands.Channel.OpenOk)
        conn.send_method(commands.Confirm.Select(), 1)
        conn.expect(commands.Confirm.SelectOk)
        # Basic.Publish by hand: pamqp would refuse a routing key that is not UTF-8.
        publish = (
            struct.pack(">HHH", _BASIC, 40, 0)  # class, method, reserved ticket
            + short_string(exchange.encode())
            + short_string(routing_key)
            + b"\x01"  # mandatory
        )
        content_header = struct.pack(">HHQ", _BASIC, 0, len(body)) + property_bytes
        conn.send(
            _frame(_FRAME_METHOD, 1, publish)
            + _frame(_FRAME_HEADER, 1, content_header)
            + _frame(_FRAME_BODY, 1, body)
        )
        answer = conn.receive()
        if not isinstance(answer, commands.Basic.Ack):
            raise RuntimeError(f"the broker did not confirm the message: {answer!r}")
        conn.send_method(
            commands.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0)
        )
        conn.expect(commands.Connection.CloseOk)
    finally:
        conn.close()
