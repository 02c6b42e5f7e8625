"""JSON (orjson) encoding of job arguments and results: the only module that imports orjson.

Never pickle: a message is data that any language can read and nothing can execute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from aqueue._types import JSONValue
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

    Raises:
        EncodeError: an argument is not JSON-serializable; the message names it
            (``args[1]`` or ``kwargs['when']``) and its type.
    """
    try:
        return orjson.dumps({"args": list(args), "kwargs": dict(kwargs)})
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise _name_bad_argument(args, kwargs, exc) from exc


def _name_bad_argument(
    args: Sequence[object], kwargs: Mapping[str, object], exc: Exception
) -> EncodeError:
    named: list[tuple[str, object]] = [(f"args[{i}]", value) for i, value in enumerate(args)]
    named += [(f"kwargs[{key!r}]", value) for key, value in kwargs.items()]
    for label, value in named:
        try:
            orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError) as inner:
            return EncodeError(
                f"argument {label} of type {type(value).__name__} is not JSON-serializable: {inner}"
            )
    keys: list[object] = list(kwargs)  # run-time input: not every caller runs mypy
    for key in keys:
        if not isinstance(key, str):
            return EncodeError(f"keyword argument name {key!r} is not a string")
    return EncodeError(f"arguments are not JSON-serializable: {exc}")


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
