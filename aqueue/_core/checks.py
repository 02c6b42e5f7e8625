"""Checks of user-given values at run time (not every caller runs mypy). Pure, layer 0."""

from __future__ import annotations

import math
from typing import TypeGuard


def is_number(
    value: object,
    *,
    at_least: float = -math.inf,
    above: float | None = None,
    at_most: float = math.inf,
) -> TypeGuard[float]:
    """A finite int or float (never a bool) within the bounds.

    An int too big for a float is not a number here: nothing that takes seconds could use it
    (and ``math.isfinite`` would raise OverflowError on it).
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the largest float
        return False
    return finite and at_least <= value <= at_most and (above is None or value > above)


def is_whole(value: object, *, at_least: int, at_most: float = math.inf) -> TypeGuard[int]:
    """An int (never a bool) within the bounds."""
    return isinstance(value, int) and not isinstance(value, bool) and at_least <= value <= at_most
