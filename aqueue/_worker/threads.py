"""Plain (sync) task functions in threads: bounded per queue, tracked until they return.

Each queue has a thread budget of its own (`ThreadBudgets`): with one pool for every queue, a
queue of slow sync jobs took all the threads and the sync jobs of a fast queue waited seconds
for one, whatever their own concurrency. anyio's default thread limiter (40 tokens for the
whole event loop) is not used: each `SyncThreads` passes anyio an unbounded limiter of its own
and counts its slots itself, and anyio starts a new thread whenever none is idle, so one
queue's busy threads never make another queue's job wait for a thread.

A Python thread cannot be stopped from outside. When the worker stops waiting for one (the
task's timeout ran out, the stop's grace ran out, or the delivery was lost), anyio's
``abandon_on_cancel`` lets the job move on while the function runs on in its thread, and what
it returns or raises is then discarded. This module keeps such a thread accounted for:

- it keeps its slot of the `threads` limit until its function returns, so functions that
  hang and time out again and again exhaust the pool (and make the next sync jobs wait)
  instead of growing it without bound;
- it is listed (`SyncThreads.abandoned`, shown as `Worker.abandoned`) with its job and how
  long it has run, so a worker that stops can say what it leaves behind, and ``aqueue worker``
  can end the process instead of waiting for the thread at interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import anyio
import anyio.to_thread

from aqueue._tasks.context import JobContext

logger = logging.getLogger("aqueue.worker")

AbandonReason = Literal["timeout", "cancelled"]


@dataclass(frozen=True, slots=True)
class AbandonedJob:
    """A sync job whose function still runs in a thread the worker stopped waiting for.

    A thread cannot be stopped from outside, so a plain function runs to its end even after
    its job timed out or its worker stopped; what it returns or raises is discarded. Until
    then it keeps one of the worker's `threads`.

    Attributes:
        job_id: the job's id.
        task: the task name.
        queue: the logical queue.
        attempt: the attempt the thread runs.
        running_for: seconds the function had run when this was taken.
        reason: ``"timeout"``: the task's timeout ran out, and the job was settled as timed
            out (retried or dead-lettered). ``"cancelled"``: the worker stopped (the grace
            period ran out, or ``stop(now=True)``) or lost the delivery while the function
            ran; a stop hands the job back as its next attempt, a lost delivery is
            delivered again by the broker.
    """

    job_id: str
    task: str
    queue: str
    attempt: int
    running_for: float
    reason: AbandonReason


class _Call:
    """One function handed to a thread: queued → running → done, or abandoned on the way.

    `state` is read and written under `SyncThreads._lock`, by the event loop and the thread.
    """

    __slots__ = ("context", "loop", "reason", "started", "state")

    def __init__(self, context: JobContext, loop: asyncio.AbstractEventLoop) -> None:
        self.context = context
        self.loop = loop
        # "queued": not taken by a thread yet; "dropped": the job stopped waiting before a
        # thread took it (it never runs); "running"; "abandoned": running, nobody waits;
        # "done": returned
        self.state = "queued"
        self.started = 0.0
        self.reason: AbandonReason = "cancelled"

    def snapshot(self, now: float) -> AbandonedJob:
        context = self.context
        return AbandonedJob(
            job_id=context.job_id,
            task=context.task,
            queue=context.queue,
            attempt=context.attempt,
            running_for=now - self.started,
            reason=self.reason,
        )


class SyncThreads:
    """Runs plain task functions in anyio's thread pool, at most `limit` at a time.

    Args:
        limit: the most functions running at once, abandoned ones included.
        queue: the queue whose budget this is (for log lines).
    """

    def __init__(self, limit: int, queue: str = "") -> None:
        self.limit = limit
        self.queue = queue
        self._limiter = anyio.CapacityLimiter(limit)
        # the slots are taken from `_limiter` by hand (see `run`): anyio's own per-call
        # limiter only has to let every call through
        self._unbounded = anyio.CapacityLimiter(math.inf)
        self._lock = threading.Lock()
        self._abandoned: dict[int, _Call] = {}  # by id() of the JobContext the call holds

    def busy(self) -> int:
        """Slots taken: functions running (abandoned ones included) or about to."""
        return int(self._limiter.borrowed_tokens)

    def waiting(self) -> int:
        """Jobs waiting for a free slot."""
        return self._limiter.statistics().tasks_waiting

    def abandoned(self) -> tuple[AbandonedJob, ...]:
        """The functions still running that nobody waits for, oldest first."""
        now = time.monotonic()
        with self._lock:
            calls = sorted(self._abandoned.values(), key=lambda call: call.started)
            return tuple(call.snapshot(now) for call in calls)

    async def run(self, context: JobContext, fn: Callable[[], object]) -> object:
        """Call `fn` (the job `context`'s function) in a thread; return what it returns.

        Cancelled while `fn` runs, it stops waiting at once and leaves the thread running,
        listed in `abandoned` and holding its slot until `fn` returns.
        """
        call = _Call(context, asyncio.get_running_loop())
        # anyio would release a slot taken by `run_sync(limiter=...)` as soon as the job
        # stops waiting; this one stays taken until the thread is really free. A free slot
        # is taken without the checkpoint `acquire_on_behalf_of` adds (`run_sync` makes one
        # anyway): a round of the event loop per job is what a no-op sync job mostly costs.
        try:
            self._limiter.acquire_on_behalf_of_nowait(call)
        except anyio.WouldBlock:  # no free slot, or others wait for one first (FIFO)
            await self._limiter.acquire_on_behalf_of(call)
        release = True
        try:
            return await anyio.to_thread.run_sync(
                self._call, call, fn, limiter=self._unbounded, abandon_on_cancel=True
            )
        except BaseException:
            with self._lock:
                if call.state == "running":
                    call.state = "abandoned"
                    self._abandoned[id(context)] = call
                    release = False  # the thread releases it when `fn` returns
                elif call.state == "queued":
                    call.state = "dropped"
            raise
        finally:
            if release:
                self._limiter.release_on_behalf_of(call)

    def timed_out(self, context: JobContext) -> AbandonedJob | None:
        """Note that the job `context` was abandoned at its timeout; its entry, if it runs on."""
        now = time.monotonic()
        with self._lock:
            call = self._abandoned.get(id(context))
            if call is None:  # it never started, or it returned in the meantime
                return None
            call.reason = "timeout"
            return call.snapshot(now)

    def abandoned_count(self) -> int:
        """How many functions run on that nobody waits for."""
        with self._lock:
            return len(self._abandoned)

    # -- in the thread ---------------------------------------------------------------------

    def _call(self, call: _Call, fn: Callable[[], object]) -> object:
        with self._lock:
            if call.state == "dropped":
                return None  # nobody waits for this result: do not start the function
            call.state = "running"
            call.started = time.monotonic()
        try:
            return fn()
        finally:
            with self._lock:
                abandoned = call.state == "abandoned"
                call.state = "done"
                if abandoned:
                    del self._abandoned[id(call.context)]
            if abandoned:
                self._returned(call)

    def _returned(self, call: _Call) -> None:
        context = call.context
        logger.info(
            "job %s: its abandoned sync function ended after %.1fs; what it returned or "
            "raised is discarded, and its thread is free again",
            context.job_id,
            time.monotonic() - call.started,
        )
        with contextlib.suppress(RuntimeError):  # the loop is closed: its limiter went too
            call.loop.call_soon_threadsafe(self._limiter.release_on_behalf_of, call)


class ThreadBudgets:
    """One `SyncThreads` per queue, made on first use with the limit `limit_for(queue)` gives.

    Args:
        limit_for: a queue's thread budget (`WorkerSettings.limits`).
    """

    def __init__(self, limit_for: Callable[[str], int]) -> None:
        self._limit_for = limit_for
        self._budgets: dict[str, SyncThreads] = {}

    def for_queue(self, queue: str) -> SyncThreads:
        """The threads of `queue`'s sync jobs."""
        budget = self._budgets.get(queue)
        if budget is None:
            budget = self._budgets[queue] = SyncThreads(self._limit_for(queue), queue)
        return budget

    def abandoned(self) -> tuple[AbandonedJob, ...]:
        """The functions still running that nobody waits for, in every queue, oldest first."""
        jobs = [job for budget in self._budgets.values() for job in budget.abandoned()]
        return tuple(sorted(jobs, key=lambda job: -job.running_for))
