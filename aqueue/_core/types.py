"""Type aliases shared across layers (the contract everyone codes against)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeAlias

JSONScalar: TypeAlias = str | int | float | bool | None
JSONValue: TypeAlias = JSONScalar | list["JSONValue"] | dict[str, "JSONValue"]

#: A value that can travel in an AMQP header table (aqueue only writes these kinds).
HeaderValue: TypeAlias = (
    str | int | float | bool | list["HeaderValue"] | dict[str, "HeaderValue"] | None
)
Headers: TypeAlias = Mapping[str, HeaderValue]

#: What a task function may be: an async function or a plain one (run in a thread pool).
AnyCallable: TypeAlias = Callable[..., object]
AsyncCallable: TypeAlias = Callable[..., Awaitable[object]]
