"""The worker's flow gate: rate limits and concurrency caps, checked before a job runs.

A job of a task with ``rate_limit=`` or ``max_concurrency=`` asks the gate before it runs:

- **rate limit**: the gate reserves the job's start in the limiter (GCRA, see
  `aqueue._results.redis_flow`). Due now, the job runs; due later, it is *deferred*: a copy
  due at the reserved time is published through the broker's delay levels (confirmed), then
  the delivery is acked. The copy carries the reservation, so when it comes back it runs
  without asking again: each job over the limit is deferred once, never in a requeue loop.
- **concurrency cap**: the gate takes one of the key's K running slots, a lease that the
  worker renews every third of ``lease_ttl`` while the job runs and frees once it is settled.
  A worker that dies stops renewing and its slots expire after ``lease_ttl``. With no slot
  free the job is deferred for a short backoff (0.1 s doubling to 2 s, jittered) and asks
  again when it comes back.

A deferral is not an attempt: the copy keeps the attempt number, nothing is recorded as a
failure, and the job's state (with a result backend) says ``deferred`` with the reason.
With a Redis result backend the limits hold across every worker; without one each worker
keeps its own (and says so at start).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from aqueue._core.delays import DELAY_UNIT_MS, MAX_DELAY_SECONDS
from aqueue._core.flow import concurrency_defer, key_value, limiter_key
from aqueue._core.types import Headers
from aqueue._core.wire import HEADER_RATE_RESERVED, deferral_counts
from aqueue._results.flow import FlowStore, MemoryFlowStore
from aqueue._results.states import JobStates
from aqueue._tasks.task import Task, key_argument
from aqueue.exceptions import TransportError

logger = logging.getLogger("aqueue.worker")

#: A rate-limit wait shorter than this runs at once: the delay levels cannot do better.
RUN_NOW_WAIT = DELAY_UNIT_MS / 1000


@dataclass(frozen=True, slots=True)
class Deferral:
    """The job must wait: `delay` seconds, because of its rate limit or concurrency cap."""

    reason: Literal["rate", "concurrency"]
    delay: float
    times: int  # deferrals of this attempt for this reason, this one included


@dataclass(frozen=True, slots=True)
class Slot:
    """A running slot the job holds under its concurrency cap."""

    key: str
    owner: str


class FlowGate:
    """Admits, defers or slots the jobs of flow-limited tasks.

    Args:
        states: the queue's job states; its backend's flow store keeps the limits, else the
            gate keeps its own (per-worker limits).
        slot_ttl: seconds a running slot lasts unless renewed (``lease_ttl``).
    """

    def __init__(self, states: JobStates, *, slot_ttl: float) -> None:
        store = states.backend.flow_store() if states.backend is not None else None
        self.store: FlowStore = store if store is not None else MemoryFlowStore()
        self.shared = self.store.shared
        self._slot_ttl = slot_ttl
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    def warn_if_per_worker(self, tasks: Mapping[str, Task[Any, Any]]) -> None:
        """Say at start when the limits of `tasks` hold per worker, not across all of them."""
        if self.shared:
            return
        for name, task in sorted(tasks.items()):
            flow = task.options.flow
            if flow.active:
                logger.warning(
                    "task %s has a %s, but this worker's queue has no Redis result backend: "
                    "the limit holds per worker process, not across all of them",
                    name,
                    "rate limit" if flow.rate is not None else "concurrency cap",
                )

    async def admit(
        self, task: Task[Any, Any], args: Any, kwargs: Mapping[str, Any], headers: Headers
    ) -> Deferral | Slot | None:
        """Ask the limits of `task` for this job: run it (holding a `Slot`, or None) or defer.

        Raises:
            TransportError: the flow store failed (the caller gives the delivery back).
        """
        flow = task.options.flow
        if flow.rate is not None and HEADER_RATE_RESERVED not in headers:
            key = self._key(task, flow.rate_key, args, kwargs)
            wait = await self.store.take_rate(key, flow.rate)
            if wait >= RUN_NOW_WAIT:
                return Deferral("rate", min(wait, MAX_DELAY_SECONDS), _times(headers, "rate"))
        if flow.max_concurrency is None:
            return None
        key = self._key(task, flow.concurrency_key, args, kwargs)
        owner = uuid.uuid4().hex
        taken = await self.store.take_slot(
            key, owner, limit=flow.max_concurrency, ttl=self._slot_ttl
        )
        if taken:
            return Slot(key, owner)
        times = _times(headers, "concurrency")
        delay = concurrency_defer(times - 1) * (0.5 + self._random.random())
        return Deferral("concurrency", delay, times)

    @staticmethod
    def _key(task: Task[Any, Any], name: str | None, args: Any, kwargs: Mapping[str, Any]) -> str:
        if name is None:
            return limiter_key(task.name, None)
        return limiter_key(task.name, key_value(key_argument(task.fn, name, args, kwargs)))

    @asynccontextmanager
    async def holding(self, slot: Slot | None) -> AsyncIterator[None]:
        """Keep `slot` while the block runs (renewed every third of its lease), then free it."""
        if slot is None:
            yield
            return
        try:
            async with anyio.create_task_group() as renewing:
                renewing.start_soon(self._renew, slot)
                try:
                    yield
                finally:
                    renewing.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.release_slot(slot.key, slot.owner)
                except TransportError as exc:  # it expires instead, after one lease
                    logger.warning("could not free a running slot of %s: %s", slot.key, exc)

    async def _renew(self, slot: Slot) -> None:
        while True:
            await anyio.sleep(self._slot_ttl / 3)
            try:
                held = await self.store.renew_slot(slot.key, slot.owner, ttl=self._slot_ttl)
            except TransportError as exc:
                logger.warning("could not renew a running slot of %s: %s", slot.key, exc)
                continue
            if not held:
                logger.error(
                    "a running slot of %s expired before it was renewed: more than its "
                    "max_concurrency may run for a while",
                    slot.key,
                )
                return


def _times(headers: Headers, reason: str) -> int:
    return deferral_counts(headers).get(reason, 0) + 1
