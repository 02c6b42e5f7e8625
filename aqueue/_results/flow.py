"""Where flow control keeps its state: unique-job reservations, rate limiters, running slots.

A `FlowStore` is shared by every worker and producer that uses it: the Redis one
(`aqueue._results.redis_flow`, atomic Lua scripts on Redis's own clock) makes the limits
global; `MemoryFlowStore` keeps them in one process (the `MemoryResultBackend`'s, and a
worker's own when its queue has no result backend: per-worker limits then).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aqueue._core.flow import Rate, gcra


@dataclass(frozen=True, slots=True)
class LimiterState:
    """One limiter's state now, for ``aqueue stats``.

    Attributes:
        kind: ``"rate"`` or ``"concurrency"``.
        key: the task name, with ``|value`` for a keyed limit.
        value: for a rate limit, seconds of starts already reserved ahead (the backlog it
            spaces out; 0 when idle); for a concurrency cap, the jobs running now.
    """

    kind: Literal["rate", "concurrency"]
    key: str
    value: float


class FlowStore(abc.ABC):
    """The state of unique jobs, rate limits and concurrency caps. Every method is atomic."""

    #: Whether every worker and producer sharing the result backend shares this state.
    shared: bool = False

    @abc.abstractmethod
    async def reserve_unique(self, key: str, job_id: str, *, ttl: float) -> str:
        """Take `key` for `job_id` for `ttl` seconds unless taken; return the job id holding it."""

    @abc.abstractmethod
    async def release_unique(self, key: str, job_id: str) -> None:
        """Free `key` if `job_id` holds it (its publish failed: a later enqueue may try)."""

    @abc.abstractmethod
    async def take_rate(self, key: str, rate: Rate) -> float:
        """Reserve one start under `rate` (GCRA); return the seconds until it (0: now)."""

    @abc.abstractmethod
    async def take_slot(self, key: str, owner: str, *, limit: int, ttl: float) -> bool:
        """Take one of `limit` running slots of `key` for `owner`, leased for `ttl` seconds.

        Expired leases (a worker that died) are freed first. True if taken (or already
        `owner`'s).
        """

    @abc.abstractmethod
    async def renew_slot(self, key: str, owner: str, *, ttl: float) -> bool:
        """Extend `owner`'s slot of `key` by `ttl` seconds; False if it was lost (expired)."""

    @abc.abstractmethod
    async def release_slot(self, key: str, owner: str) -> None:
        """Free `owner`'s slot of `key`."""

    @abc.abstractmethod
    async def limiter_states(self, tasks: Sequence[str]) -> list[LimiterState]:
        """The state of every limiter of `tasks` in use (keyed ones: each key seen)."""


class MemoryFlowStore(FlowStore):
    """Flow-control state in one process (monotonic clock)."""

    def __init__(self) -> None:
        self._unique: dict[str, tuple[str, float]] = {}
        self._tats: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}

    async def reserve_unique(self, key: str, job_id: str, *, ttl: float) -> str:
        now = time.monotonic()
        held = self._unique.get(key)
        if held is not None and held[1] > now:
            return held[0]
        self._unique[key] = (job_id, now + ttl)
        return job_id

    async def release_unique(self, key: str, job_id: str) -> None:
        held = self._unique.get(key)
        if held is not None and held[0] == job_id:
            del self._unique[key]

    async def take_rate(self, key: str, rate: Rate) -> float:
        wait, self._tats[key] = gcra(
            self._tats.get(key, 0.0), time.monotonic(), rate.interval, rate.burst
        )
        return wait

    def _live(self, key: str) -> dict[str, float]:
        now = time.monotonic()
        slots = self._slots.setdefault(key, {})
        for owner in [owner for owner, expiry in slots.items() if expiry <= now]:
            del slots[owner]
        return slots

    async def take_slot(self, key: str, owner: str, *, limit: int, ttl: float) -> bool:
        slots = self._live(key)
        if owner not in slots and len(slots) >= limit:
            return False
        slots[owner] = time.monotonic() + ttl
        return True

    async def renew_slot(self, key: str, owner: str, *, ttl: float) -> bool:
        slots = self._live(key)
        if owner not in slots:
            return False
        slots[owner] = time.monotonic() + ttl
        return True

    async def release_slot(self, key: str, owner: str) -> None:
        self._live(key).pop(owner, None)

    async def limiter_states(self, tasks: Sequence[str]) -> list[LimiterState]:
        now = time.monotonic()
        states = [
            LimiterState("rate", key, max(0.0, tat - now))
            for key, tat in sorted(self._tats.items())
            if _of(key, tasks)
        ]
        states += [
            LimiterState("concurrency", key, len(self._live(key)))
            for key in sorted(self._slots)
            if _of(key, tasks)
        ]
        return states


def _of(key: str, tasks: Sequence[str]) -> bool:
    return key.partition("|")[0] in tasks
