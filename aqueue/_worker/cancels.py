"""Cancellations in a worker: heard, checked before a job starts, delivered to its run.

Each worker binds a queue of its own (exclusive, auto-delete) to the control exchange for
``cancel`` notices. Before a job starts, the worker asks whether it, or its workflow, was
cancelled: in what it heard (`CancelMemory`: bounded, time-limited) and, with a result
backend, in the job's stored state (``cancelled``), which also covers cancellations made
before this worker started or while its connection was down. A notice for a job that runs
here stops it: an async job, or one in a process pool, through its cancel scope (the
task sees ``CancelledError``; the pool process is killed); a plain function in a thread
only sees ``current_job().cancelled`` become true, because a thread cannot be stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio

from aqueue._client.session import Session
from aqueue._core.cancels import CANCEL_ROUTING_KEY, CancelMemory, CancelNotice
from aqueue._core.heartbeats import control_exchange
from aqueue._core.topology import ExchangeSpec, Topology
from aqueue._results import JobStatus
from aqueue._serialization import loads
from aqueue._tasks.context import JobContext
from aqueue._transport import Consumer, Transport
from aqueue.exceptions import DecodeError

logger = logging.getLogger("aqueue.worker")


@dataclass(slots=True)
class _Run:
    context: JobContext
    scope: anyio.CancelScope
    #: a plain function in a thread: only its flag can be set
    cooperative: bool

    def cancel(self) -> None:
        self.context.cancelled = True
        if not self.cooperative:
            self.scope.cancel()


class Cancellations:
    """What one worker knows of cancellations, and the runs it can stop.

    Args:
        session: the open queue's session (its job states).
    """

    def __init__(self, session: Session) -> None:
        self._states = session.states
        self._exchange = control_exchange(session.names.prefix)
        self._memory = CancelMemory()
        self._running: dict[str, list[_Run]] = {}

    async def listen(self, transport: Transport) -> Consumer:
        """Bind this worker's own queue to the cancellation notices."""
        await transport.declare(Topology(exchanges=(ExchangeSpec(self._exchange, "topic"),)))
        return await transport.listen(self._exchange, CANCEL_ROUTING_KEY, self._on_notice)

    def _on_notice(self, _routing_key: str, body: bytes) -> None:
        try:
            notice = CancelNotice.from_payload(loads(body))
        except (ValueError, DecodeError):
            return
        self._memory.add(notice.job_id, time.monotonic())
        for run in self._running.get(notice.job_id, ()):
            logger.info("job %s: cancelled while it runs; stopping it", run.context.job_id)
            run.cancel()

    def heard(self, job_id: str, root: str | None) -> bool:
        """Whether this worker heard that the job, or its workflow, was cancelled."""
        now = time.monotonic()
        return self._memory.holds(job_id, now) or (
            root is not None and self._memory.holds(root, now)
        )

    async def cancelled(self, job_id: str, root: str | None, *, stored: bool = True) -> bool:
        """Whether the job, or its workflow, was cancelled: heard, or stored.

        The stored state is read only with `stored` and a result backend.

        Raises:
            TransportError: the result backend failed.
        """
        if self.heard(job_id, root):
            return True
        backend = self._states.backend
        if backend is None or not stored:
            return False
        for key in (job_id,) if root is None else (job_id, root):
            state = await backend.get_state(key)
            if state is not None and state.status is JobStatus.CANCELLED:
                return True
        return False

    @contextmanager
    def running(
        self, context: JobContext, root: str | None, *, cooperative: bool
    ) -> Iterator[anyio.CancelScope]:
        """The cancel scope of one run, registered so that a notice can stop it."""
        run = _Run(context, anyio.CancelScope(), cooperative)
        keys = [context.job_id] if root is None else [context.job_id, root]
        for key in keys:
            self._running.setdefault(key, []).append(run)
        try:
            with run.scope:
                if self.heard(context.job_id, root):  # a notice that came after the check
                    run.cancel()
                yield run.scope
        finally:
            for key in keys:
                runs = self._running.get(key, [])
                if run in runs:
                    runs.remove(run)
                if not runs:
                    self._running.pop(key, None)
