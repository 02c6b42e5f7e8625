"""An in-process result backend, for tests and single-process apps."""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio

from aqueue._core.types import JSONValue
from aqueue._results.base import JobState, JobStatus, Lease, ResultBackend
from aqueue._results.flow import FlowStore, MemoryFlowStore


class MemoryResultBackend(ResultBackend):
    """Job states in a dict; waiters wake on events.

    TTLs are not enforced (tests are short), except a lease's: its expiry is what brings the
    job of a dead worker back.
    """

    def __init__(self) -> None:
        self._states: dict[str, JobState] = {}
        self._final: dict[str, anyio.Event] = {}
        self._barriers: dict[str, dict[int, JSONValue]] = {}
        self._completers: dict[str, int] = {}
        self._claims: dict[str, str] = {}
        self._leases: dict[str, tuple[Lease, float]] = {}  # key -> (lease, monotonic expiry)
        self._flow = MemoryFlowStore()

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def set_state(self, state: JobState, *, ttl: float) -> None:
        current = self._states.get(state.job_id)
        if current is not None and (
            (state.status.is_initial and not _follows_pending(current.status, state.status))
            or (current.status.is_final and not state.status.is_final)
        ):
            return
        self._states[state.job_id] = state
        if state.status.is_final:
            self._event(state.job_id).set()

    async def get_state(self, job_id: str) -> JobState | None:
        return self._states.get(job_id)

    async def wait_final(self, job_id: str, *, timeout: float) -> JobState | None:
        with anyio.move_on_after(timeout):
            await self._event(job_id).wait()
        state = self._states.get(job_id)
        return state if state is not None and state.status.is_final else None

    async def join_barrier(
        self, barrier_id: str, index: int, size: int, value: JSONValue, *, ttl: float
    ) -> Sequence[JSONValue] | None:
        members = self._barriers.setdefault(barrier_id, {})
        members.setdefault(index, value)
        if len(members) < size:
            return None
        if self._completers.setdefault(barrier_id, index) != index:
            return None
        return [members[i] for i in range(size)]

    async def claim(self, key: str, owner: str, *, ttl: float) -> bool:
        return self._claims.setdefault(key, owner) == owner

    async def hold_lease(self, key: str, owner: str, *, ttl: float) -> bool:
        current = await self.lease(key)
        if current is not None and (current.ended or current.owner != owner):
            return False
        self._leases[key] = (Lease(owner, ended=False), time.monotonic() + ttl)
        return True

    async def end_lease(self, key: str, owner: str, *, ttl: float) -> None:
        current = await self.lease(key)
        if current is None or current.owner == owner:
            self._leases[key] = (Lease(owner, ended=True), time.monotonic() + ttl)

    async def lease(self, key: str) -> Lease | None:
        held = self._leases.get(key)
        if held is None or held[1] <= time.monotonic():
            self._leases.pop(key, None)
            return None
        return held[0]

    def flow_store(self) -> FlowStore:
        return self._flow

    def _event(self, job_id: str) -> anyio.Event:
        return self._final.setdefault(job_id, anyio.Event())


def _follows_pending(current: JobStatus, new: JobStatus) -> bool:
    return current is JobStatus.PENDING and new is not JobStatus.PENDING
