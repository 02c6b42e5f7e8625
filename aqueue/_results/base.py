"""The result backend interface: job states by id, waiting for them, and chord barriers.

RabbitMQ cannot look a message up by id, so what a job came to lives in a key-value store.
Every method is safe to call again with the same arguments (redeliveries happen).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aqueue._core.types import JSONValue
from aqueue._results.flow import FlowStore
from aqueue._serialization import dumps, loads
from aqueue.exceptions import DecodeError


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    #: a step of a workflow, not published yet: it waits for the steps before it
    PENDING = "pending"
    #: published, waiting for a worker
    QUEUED = "queued"
    #: published with a delay or ETA, waiting in the broker
    SCHEDULED = "scheduled"
    #: a worker runs it
    RUNNING = "running"
    #: an attempt failed; the next one waits in the broker
    RETRYING = "retrying"
    #: over its task's rate limit or concurrency cap: it waits in the broker for its turn
    #: (not a failure; the state's ``extra`` says why and until when)
    DEFERRED = "deferred"
    #: finished with a result
    SUCCEEDED = "succeeded"
    #: its last attempt failed; it is in the dead-letter queue
    FAILED = "failed"
    #: dead-lettered without a result for another reason (undecodable, unknown task)
    DEAD = "dead"
    #: delivered after its deadline (``expires``): never run
    EXPIRED = "expired"
    #: cancelled: never started, or its run was stopped
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for succeeded, failed, dead, expired and cancelled."""
        return self in (
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.DEAD,
            JobStatus.EXPIRED,
            JobStatus.CANCELLED,
        )

    @property
    def is_initial(self) -> bool:
        """True for pending, queued and scheduled: what a job is before any worker saw it."""
        return self in (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.SCHEDULED)

    @property
    def kind(self) -> str:
        """``"initial"``, ``"active"`` or ``"final"``: what `ResultBackend.set_state` goes by."""
        if self.is_final:
            return "final"
        return "initial" if self.is_initial else "active"


@dataclass(frozen=True, slots=True)
class RemoteError:
    """An exception raised in a worker, as text (exceptions are never unpickled)."""

    type: str
    message: str
    traceback: str = ""


#: Failed attempts a job state keeps (the newest), and the characters of each one's message
#: and traceback tail: a state stays small however often a job is retried.
MAX_ATTEMPTS_KEPT = 10
MAX_ATTEMPT_MESSAGE_CHARS = 1000
MAX_ATTEMPT_TRACEBACK_CHARS = 4000


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One failed attempt of a job, as its state keeps it.

    Attributes:
        attempt: 1 for the first run.
        type: the exception's type name.
        message: its message (at most `MAX_ATTEMPT_MESSAGE_CHARS`).
        traceback: the tail of its traceback ("" when unknown: an attempt known only from the
            message's headers, whose history carries no traceback).
        at: when it failed, Unix seconds.
    """

    attempt: int
    type: str
    message: str
    traceback: str
    at: float

    def bounded(self) -> FailedAttempt:
        """This attempt with its texts cut to their bounds (the traceback keeps its tail)."""
        return FailedAttempt(
            self.attempt,
            self.type[:MAX_ATTEMPT_MESSAGE_CHARS],
            self.message[:MAX_ATTEMPT_MESSAGE_CHARS],
            self.traceback[-MAX_ATTEMPT_TRACEBACK_CHARS:],
            self.at,
        )

    def as_json(self) -> dict[str, JSONValue]:
        """The stored form."""
        return {
            "attempt": self.attempt,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, value: object) -> FailedAttempt | None:
        """Read the stored form; None for anything else (a reader skips it)."""
        if not isinstance(value, dict):
            return None
        attempt, at = value.get("attempt"), value.get("at")
        if not isinstance(attempt, int) or not isinstance(at, int | float):
            return None
        texts = [value.get(key, "") for key in ("type", "message", "traceback")]
        if not all(isinstance(text, str) for text in texts):
            return None
        return cls(attempt, str(texts[0]), str(texts[1]), str(texts[2]), float(at))


def merge_attempts(*histories: Sequence[FailedAttempt]) -> tuple[FailedAttempt, ...]:
    """Failed attempts of several sources, one per attempt number, oldest first.

    A later source's entry wins over an earlier one's; each is bounded, and only the newest
    `MAX_ATTEMPTS_KEPT` are kept.
    """
    by_attempt: dict[int, FailedAttempt] = {}
    for history in histories:
        for failure in history:
            by_attempt[failure.attempt] = failure.bounded()
    return tuple(by_attempt[key] for key in sorted(by_attempt))[-MAX_ATTEMPTS_KEPT:]


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
        extra: what a status adds (a deferral's reason and time).
        arguments: the JSON text of the job's arguments, the task's ``redact=`` applied
            before it was stored, at most 8 KiB (cut ones end with a marker); None when
            unknown (a state written before 0.x, a workflow step).
        history: its failed attempts, oldest first, at most `MAX_ATTEMPTS_KEPT` (the one this
            state is about included, when it failed).
        enqueued_at: when the job was enqueued, Unix seconds.
        started_at: when the attempt of this state started.
        finished_at: when the job reached a final status.
        trace_id: the W3C trace id of the job's message, when it carried one.
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
    arguments: str | None = None
    history: tuple[FailedAttempt, ...] = ()
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    trace_id: str | None = None

    def encode(self) -> bytes:
        """The stored form (JSON); the fields after ``extra`` only when they are known."""
        error = self.error
        known: dict[str, JSONValue] = {
            key: value
            for key, value in (
                ("arguments", self.arguments),
                ("enqueued_at", self.enqueued_at),
                ("started_at", self.started_at),
                ("finished_at", self.finished_at),
                ("trace_id", self.trace_id),
            )
            if value is not None
        }
        if self.history:
            known["history"] = [failure.as_json() for failure in self.history]
        return dumps(
            {
                **known,
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
                arguments=_optional(raw, "arguments", str),
                history=_read_history(raw.get("history")),
                enqueued_at=_optional_time(raw, "enqueued_at"),
                started_at=_optional_time(raw, "started_at"),
                finished_at=_optional_time(raw, "finished_at"),
                trace_id=_optional(raw, "trace_id", str),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecodeError(f"not a stored job state: {exc}") from exc


def _optional(raw: Mapping[str, Any], key: str, kind: type[str]) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, kind) else None


def _optional_time(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _read_history(value: object) -> tuple[FailedAttempt, ...]:
    """A stored history; () for a state written before there was one."""
    if not isinstance(value, list):
        return ()
    return tuple(f for f in map(FailedAttempt.from_json, value) if f is not None)


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease on a long-running job: the run that holds it, and whether that run ended."""

    owner: str
    ended: bool


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

        Two rules keep a late write from hiding a newer one, whatever the order the writes
        arrive in (a redelivered copy, a publisher slower than the worker):

        - an initial state (pending, queued, scheduled) is stored only when no state is
          known, or when "pending" is and the new one is queued or scheduled: the producer
          records it after the publish, when a worker may already run the job;
        - a final state is never replaced by a non-final one (a late "running" from a
          redelivered copy cannot hide a result).
        """

    async def set_states(self, states: Sequence[JobState], *, ttl: float) -> None:
        """`set_state` for each of `states` (backends send them in one round trip)."""
        for state in states:
            await self.set_state(state, ttl=ttl)

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
        data). The call that completes the barrier gets every value, in index order, and so
        do later calls for the same index (redeliveries of the completing member, which may
        have died before it carried on); every other call gets None. So one member, and only
        one, carries the workflow on, and each time it does it carries the same values.
        """

    @abc.abstractmethod
    async def claim(self, key: str, owner: str, *, ttl: float) -> bool:
        """Claim `key` for `owner`; atomic. Runs error callbacks once per workflow.

        True for the first owner, and again for that same owner (its redeliveries, which may
        have died before they acted on the claim); False for every other.
        """

    @abc.abstractmethod
    async def hold_lease(self, key: str, owner: str, *, ttl: float) -> bool:
        """Take or renew the lease on `key` for `owner` for `ttl` seconds; atomic.

        True when the lease was free (never taken, or expired) or already `owner`'s, and is
        now `owner`'s until `ttl` from now; False when another owner holds it, or when it was
        ended (a finished run is never leased again).
        """

    @abc.abstractmethod
    async def end_lease(self, key: str, owner: str, *, ttl: float) -> None:
        """Mark `owner`'s lease on `key` ended, remembered for `ttl` seconds.

        Does nothing when another owner holds it.
        """

    @abc.abstractmethod
    async def lease(self, key: str) -> Lease | None:
        """Who holds the lease on `key`, and whether it ended; None once free or expired."""

    def flow_store(self) -> FlowStore | None:
        """Where unique jobs, rate limits and concurrency caps keep their state (open backend).

        None (the default, for backends that have none): unique jobs are refused, and rate
        limits and concurrency caps hold per worker.
        """
        return None
