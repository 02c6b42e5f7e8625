from __future__ import annotations

import datetime as dt
import enum
import uuid

import pytest

from aqueue._serialization import decode_arguments, dumps, encode_arguments, loads
from aqueue.exceptions import DecodeError, EncodeError


class Color(enum.IntEnum):
    RED = 1


def test_arguments_roundtrip() -> None:
    """Positional and keyword JSON arguments come back as they went in."""
    body = encode_arguments([1, "two", [3.5, None]], {"flag": True, "nested": {"a": [1]}})
    assert decode_arguments(body) == ((1, "two", [3.5, None]), {"flag": True, "nested": {"a": [1]}})


def test_bad_positional_argument_is_named() -> None:
    """A non-JSON positional argument is named by index and type."""
    with pytest.raises(EncodeError, match=r"args\[1\] of type object"):
        encode_arguments([1, object()], {})


def test_bad_keyword_argument_is_named() -> None:
    """A non-JSON keyword argument is named by key and type."""
    with pytest.raises(EncodeError, match=r"kwargs\['when'\] of type timedelta"):
        encode_arguments([], {"when": dt.timedelta(seconds=1)})


def test_non_string_keyword_name_is_refused() -> None:
    """A keyword name that is not a string cannot be encoded."""
    with pytest.raises(EncodeError, match="not a string"):
        encode_arguments([], {1: "x"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\x00garbage", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"args": {}, "kwargs": {}}', "must be a list"),
        (b'{"args": [], "kwargs": []}', "must be a list"),
    ],
)
def test_bad_bodies_raise_decode_error(body: bytes, message: str) -> None:
    """Bodies that are not a JSON object of args and kwargs raise DecodeError."""
    with pytest.raises(DecodeError, match=message):
        decode_arguments(body)


def test_dumps_and_loads() -> None:
    """Single values roundtrip, and non-JSON values raise EncodeError."""
    assert loads(dumps({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(EncodeError):
        dumps({1, 2})
    with pytest.raises(DecodeError):
        loads(b"{")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), r"args\[0\] of type datetime"),
        ((1, 2), r"of type tuple is not JSON \(use a list\)"),
        ([1, {"a": float("nan")}], r"args\[0\]\[1\]\['a'\] is nan"),
        ({"k": [float("inf")]}, r"args\[0\]\['k'\]\[0\] is inf"),
        ({1: "x"}, "key 1 that is not a string"),
        (uuid.UUID(int=1), "of type UUID"),
        (Color.RED, "of type Color"),
    ],
)
def test_values_json_would_change_are_refused(value: object, message: str) -> None:
    """Values orjson would convert silently (datetime, UUID, tuple, enum, NaN) are refused."""
    with pytest.raises(EncodeError, match=message):
        encode_arguments([value], {})
