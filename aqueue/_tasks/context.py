"""The job context: what one attempt of one job knows about itself, and `current_job()`."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aqueue._core.types import JSONValue


@dataclass(slots=True)
class JobContext:
    """One attempt of one job, as seen inside the worker and its middleware.

    Attributes:
        job_id: stable across attempts.
        task: the task name.
        queue: the logical queue.
        attempt: 1 for the first run.
        args: decoded positional arguments.
        kwargs: decoded keyword arguments.
        enqueued_at: when the job was enqueued, seconds since the Unix epoch.
        due_at: when the job became due (its ETA, or its enqueue time).
        started_at: when this attempt started, seconds since the Unix epoch.
        redelivered: the broker delivered this message before (a worker died or lost its
            connection while running it).
        headers: propagated headers (trace context, workflow links).
        cancelled: becomes True when the job is cancelled while it runs. An async task is
            stopped with ``CancelledError`` anyway; a plain (sync) function in a thread cannot
            be stopped from outside and should check this flag and return.
    """

    job_id: str
    task: str
    queue: str
    attempt: int
    args: tuple[JSONValue, ...]
    kwargs: Mapping[str, JSONValue]
    enqueued_at: float
    due_at: float
    started_at: float
    redelivered: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    cancelled: bool = False
    reporter: Callable[[JSONValue], Awaitable[None]] | None = field(default=None, repr=False)

    async def report_progress(self, progress: JSONValue) -> None:
        """Store a progress value (any JSON) that ``job.progress()`` shows in any process.

        From a plain (sync) task: ``anyio.from_thread.run(current_job().report_progress, v)``.
        Without a result backend it does nothing.
        """
        if self.reporter is not None:
            await self.reporter(progress)

    @property
    def queue_wait(self) -> float:
        """Seconds between becoming due and starting: the latency to scale workers on."""
        return max(0.0, self.started_at - self.due_at)


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("aqueue_current_job")


def current_job() -> JobContext:
    """The job the calling code runs in (inside a task or middleware).

    Raises:
        LookupError: called outside a job.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError("current_job() was called outside a running job") from None


def job_or_none() -> JobContext | None:
    """The job the calling code runs in, or None outside a job (cheap: for log filters)."""
    return _current.get(None)


def set_current_job(context: JobContext) -> contextvars.Token[JobContext]:
    """Make `context` the current job (the worker calls this around each run)."""
    return _current.set(context)


def reset_current_job(token: contextvars.Token[JobContext]) -> None:
    """Undo `set_current_job`."""
    _current.reset(token)
