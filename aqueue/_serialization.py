"""JSON (orjson) encoding of job arguments and results: the only module that imports orjson.

Never pickle: a message is data that any language can read and nothing can execute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from aqueue._core.types import JSONValue
from aqueue.exceptions import DecodeError, EncodeError

CONTENT_TYPE = "application/json"


def dumps(value: object) -> bytes:
    """Encode one JSON value.

    Raises:
        EncodeError: the value is not JSON-serializable.
    """
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise EncodeError(f"value is not JSON-serializable: {exc}") from exc


def loads(data: bytes) -> Any:
    """Decode one JSON value.

    Raises:
        DecodeError: the bytes are not valid JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc


def encode_arguments(args: Sequence[object], kwargs: Mapping[str, object]) -> bytes:
    """Encode a job's arguments as ``{"args": [...], "kwargs": {...}}``.

    Only JSON's own types pass: str, int, float (finite), bool, None, list and dict with
    string keys. Anything else (a datetime, a UUID, a tuple, an enum, NaN) is refused rather
    than converted, because the task would receive something other than what was sent.

    Raises:
        EncodeError: an argument is not JSON; the message names it (``args[1]``,
            ``kwargs['when']``, ``args[0]['items'][2]``) and its type.
    """
    for index, value in enumerate(args):
        _check_json(value, f"args[{index}]")
    for key, value in kwargs.items():
        if type(key) is not str:
            raise EncodeError(f"keyword argument name {key!r} is not a string")
        _check_json(value, f"kwargs[{key!r}]")
    try:
        return orjson.dumps({"args": list(args), "kwargs": dict(kwargs)})
    except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. an int over 64 bits
        raise EncodeError(f"arguments are not JSON-serializable: {exc}") from exc


def _check_json(value: object, path: str) -> None:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return
    # exact types, not isinstance alone: subclasses (enums, named tuples) would arrive as
    # their base type
    if kind is float and isinstance(value, float):
        if not math.isfinite(value):
            raise EncodeError(f"argument {path} is {value}, which JSON cannot carry")
        return
    if kind is list and isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    if kind is dict and isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise EncodeError(f"argument {path} has a key {key!r} that is not a string")
            _check_json(item, f"{path}[{key!r}]")
        return
    hint = " (use a list)" if kind is tuple else ""
    raise EncodeError(
        f"argument {path} of type {kind.__name__} is not JSON{hint}: pass str, int, float, "
        "bool, None, list or dict, and convert other values (e.g. a datetime with "
        ".isoformat()) before enqueueing"
    )


def decode_arguments(body: bytes) -> tuple[tuple[JSONValue, ...], dict[str, JSONValue]]:
    """Decode a job body into positional and keyword arguments.

    Raises:
        DecodeError: not JSON, or not an object with a list ``args`` and an object ``kwargs``.
    """
    payload = loads(body)
    if not isinstance(payload, dict):
        raise DecodeError("body must be a JSON object with 'args' and 'kwargs'")
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise DecodeError("body 'args' must be a list and 'kwargs' an object")
    return tuple(args), kwargs


def canonical_arguments(args: Sequence[object], kwargs: Mapping[str, object]) -> bytes:
    """The arguments as JSON with sorted keys: the same call gives the same bytes.

    For the default key of a unique job (``f(a=1, b=2)`` and ``f(b=2, a=1)`` are one job).

    Raises:
        EncodeError: an argument is not JSON.
    """
    encode_arguments(args, kwargs)  # the same checks, and the same error messages
    return orjson.dumps({"args": list(args), "kwargs": dict(kwargs)}, option=orjson.OPT_SORT_KEYS)
