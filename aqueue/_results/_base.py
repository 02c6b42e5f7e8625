"""The result backend interface: job states by id, waiting for them, and chord barriers.

RabbitMQ cannot look a message up by id, so what a job came to lives in a key-value store.
Every method is safe to call again with the same arguments (redeliveries happen).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aqueue._serialization import dumps, loads
from aqueue._types import JSONValue
from aqueue.exceptions import DecodeError


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    #: published, waiting for a worker
    QUEUED = "queued"
    #: published with a delay or ETA, waiting in the broker
    SCHEDULED = "scheduled"
    #: a worker runs it
    RUNNING = "running"
    #: an attempt failed; the next one waits in the broker
    RETRYING = "retrying"
    #: finished with a result
    SUCCEEDED = "succeeded"
    #: its last attempt failed; it is in the dead-letter queue
    FAILED = "failed"
    #: dead-lettered without a result for another reason (undecodable, unknown task)
    DEAD = "dead"

    @property
    def is_final(self) -> bool:
        """True for succeeded, failed and dead."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD)


@dataclass(frozen=True, slots=True)
class RemoteError:
    """An exception raised in a worker, as text (exceptions are never unpickled)."""

    type: str
    message: str
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class JobState:
    """What is known about one job.

    Attributes:
        job_id: the job.
        status: where it is.
        task: the task name, when known.
        attempt: the attempt that set this state.
        result: the return value (succeeded only).
        error: the failure (failed and dead only).
        progress: the last value the task reported with `report_progress`.
        updated_at: when this state was written, Unix seconds.
    """

    job_id: str
    status: JobStatus
    task: str | None = None
    attempt: int = 0
    result: JSONValue = None
    error: RemoteError | None = None
    progress: JSONValue = None
    updated_at: float = 0.0
    extra: Mapping[str, JSONValue] = field(default_factory=dict)

    def with_progress(self, progress: JSONValue, now: float) -> JobState:
        """This state with new progress."""
        return replace(self, progress=progress, updated_at=now)

    def encode(self) -> bytes:
        """The stored form (JSON)."""
        error = self.error
        return dumps(
            {
                "job_id": self.job_id,
                "status": self.status.value,
                "task": self.task,
                "attempt": self.attempt,
                "result": self.result,
                "error": None
                if error is None
                else {"type": error.type, "message": error.message, "traceback": error.traceback},
                "progress": self.progress,
                "updated_at": self.updated_at,
                "extra": dict(self.extra),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> JobState:
        """Parse the stored form.

        Raises:
            DecodeError: not a stored job state.
        """
        raw: Any = loads(data)
        try:
            error = raw.get("error")
            return cls(
                job_id=str(raw["job_id"]),
                status=JobStatus(raw["status"]),
                task=raw.get("task"),
                attempt=int(raw.get("attempt", 0)),
                result=raw.get("result"),
                error=None if error is None else RemoteError(**error),
                progress=raw.get("progress"),
                updated_at=float(raw.get("updated_at", 0.0)),
                extra=raw.get("extra") or {},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecodeError(f"not a stored job state: {exc}") from exc


class ResultBackend(abc.ABC):
    """Where job states, results and chord barriers are kept.

    Implementations: `RedisResultBackend` (several processes) and `MemoryResultBackend`
    (one process: tests). Both are async context managers.
    """

    async def __aenter__(self) -> ResultBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect. Idempotent."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Disconnect. Idempotent."""

    @abc.abstractmethod
    async def set_state(self, state: JobState, *, ttl: float) -> None:
        """Store a job's state, replacing the one before; final states wake every waiter.

        A final state is never replaced by a non-final one (a late "running" from a
        redelivered copy cannot hide a result).
        """

    @abc.abstractmethod
    async def get_state(self, job_id: str) -> JobState | None:
        """The job's last stored state, or None if none is known (or it expired)."""

    @abc.abstractmethod
    async def wait_final(self, job_id: str, *, timeout: float) -> JobState | None:
        """Wait, without polling, until the job's state is final; None at the timeout."""

    @abc.abstractmethod
    async def join_barrier(
        self, barrier_id: str, index: int, size: int, value: JSONValue, *, ttl: float
    ) -> Sequence[JSONValue] | None:
        """Record member `index`'s value of a barrier of `size`; atomic.

        The first value recorded for an index wins (a redelivered member cannot change the
        data). Returns every value, in index order, to each call that finds the barrier
        complete; None while members are missing. Callers that complete it more than once
        (redeliveries) get the same values, so what they publish is the same.
        """

    @abc.abstractmethod
    async def mark_barrier_failed(self, barrier_id: str, *, ttl: float) -> bool:
        """Mark a barrier failed; True only for the first call (so its error path runs once)."""
