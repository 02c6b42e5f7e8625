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


class Cancellations:
    """What one worker knows of cancellations, and the runs it can stop.

    Args:
        session: the open queue's session (its job states).
    """

    def __init__(self, session: Session) -> None:
        self._states = session.states
        self._exchange = control_exchange(session.names.prefix)
        self._memory = CancelMemory()
        self._running: dict[str, list[Run]] = {}

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

    def running(self, context: JobContext, root: str | None, *, cooperative: bool) -> Run:
        """The cancel scope of one run, registered so that a notice can stop it (enter it)."""
        return Run(self, context, root, cooperative)

    def _register(self, run: Run, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._running.setdefault(key, []).append(run)

    def _unregister(self, run: Run, keys: tuple[str, ...]) -> None:
        for key in keys:
            runs = self._running.get(key, [])
            if run in runs:
                runs.remove(run)
            if not runs:
                self._running.pop(key, None)


class Run:
    """One run's cancel scope: stopped by a cancel notice, or when its delivery is lost.

    One scope for both (a class, not a generator: this is entered once per job). A lost
    delivery cancels it even for a plain function in a thread (nothing may settle that job
    here any more); `lost` tells the two causes apart.
    """

    __slots__ = ("_cancels", "_keys", "_root", "context", "cooperative", "lost", "scope")

    def __init__(
        self, cancels: Cancellations, context: JobContext, root: str | None, cooperative: bool
    ) -> None:
        self._cancels = cancels
        self.context = context
        self.cooperative = cooperative
        self.scope = anyio.CancelScope()
        self.lost = False
        self._root = root
        self._keys = (context.job_id,) if root is None else (context.job_id, root)

    def cancel(self) -> None:
        """A cancel notice: set the job's flag; stop the run unless it cannot be stopped."""
        self.context.cancelled = True
        if not self.cooperative:
            self.scope.cancel()

    def lose(self) -> None:
        """The delivery was lost (its channel died): stop the run, whatever it is."""
        self.lost = True
        self.scope.cancel()

    def __enter__(self) -> anyio.CancelScope:
        self._cancels._register(self, self._keys)
        try:
            self.scope.__enter__()
        except BaseException:
            self._cancels._unregister(self, self._keys)
            raise
        if self._cancels.heard(
            self.context.job_id, self._keys[-1] if len(self._keys) > 1 else None
        ):
            self.cancel()  # a notice that came after the check
        return self.scope

    def __exit__(self, *exc_info: object) -> bool:
        try:
            return bool(self.scope.__exit__(*exc_info))  # type: ignore[arg-type]
        finally:
            self._cancels._unregister(self, self._keys)
