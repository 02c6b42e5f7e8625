"""Type aliases shared across layers (the contract everyone codes against)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

JSONScalar: TypeAlias = str | int | float | bool | None
JSONValue: TypeAlias = JSONScalar | list["JSONValue"] | dict[str, "JSONValue"]

#: A value that can travel in an AMQP header table (aqueue only writes these kinds).
HeaderValue: TypeAlias = (
    str | int | float | bool | list["HeaderValue"] | dict[str, "HeaderValue"] | None
)
Headers: TypeAlias = Mapping[str, HeaderValue]
