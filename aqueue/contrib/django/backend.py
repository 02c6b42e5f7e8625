"""`AqueueBackend`: a backend of Django's tasks framework that enqueues on RabbitMQ.

Each Django task becomes an aqueue task named by its module path (``shop.tasks.charge``),
on the logical queue named by its ``queue_name``; its jobs run in ``aqueue worker
aqueue.contrib.django:queue``, which sets Django up and handles the database connections of
each job as Django's request cycle does. Results and statuses come from aqueue's result
backend (``OPTIONS["results"]``, a Redis URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.from_thread import BlockingPortal
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from django.utils import timezone

from aqueue._client.queue import TaskQueue
from aqueue._core.topology import validate_name
from aqueue._results import JobState, JobStatus
from aqueue._tasks.context import current_job
from aqueue._tasks.task import Task as AqueueTask
from aqueue.contrib.django._compat import (
    BaseTaskBackend,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
)
from aqueue.exceptions import AqueueError, ConfigurationError

T = TypeVar("T")
R = TypeVar("R")

#: The keys of ``OPTIONS``, and what each is.
OPTION_KEYS = {
    "url": "the AMQP URL (or a list of them, for a cluster)",
    "results": "a Redis URL for job states and results (None: fire-and-forget)",
    "prefix": "the prefix of every exchange and queue name (default 'aqueue')",
    "result_ttl": "seconds job states and results are kept",
    "retries": "retries of a failed job (default: none)",
    "timeout": "seconds a job may run",
    "task_modules": "modules to import for tasks, besides each installed app's 'tasks'",
    "name": "names the broker connections",
}

#: aqueue's statuses as Django's: waiting (or waiting again) is READY.
STATUSES: Mapping[JobStatus, TaskResultStatus] = {
    JobStatus.PENDING: TaskResultStatus.READY,
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.SCHEDULED: TaskResultStatus.READY,
    JobStatus.RETRYING: TaskResultStatus.READY,
    JobStatus.DEFERRED: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.FAILED: TaskResultStatus.FAILED,
    JobStatus.DEAD: TaskResultStatus.FAILED,
    JobStatus.EXPIRED: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}


class AqueueBackend(BaseTaskBackend):
    """Django's tasks on RabbitMQ, through aqueue.

    Configured in ``TASKS``::

        TASKS = {
            "default": {
                "BACKEND": "aqueue.contrib.django.AqueueBackend",
                "QUEUES": ["default", "emails"],
                "OPTIONS": {"url": "amqp://guest:guest@localhost/", "results": "redis://localhost/0"},
            }
        }

    `enqueue` returns once RabbitMQ confirmed the job, through one connection kept open on an
    event loop in a background thread; `aenqueue` uses the same connection, the caller's
    event loop awaiting the confirm (no thread is blocked). ``run_after`` becomes a
    broker-side delay. Priorities are refused (RabbitMQ queues here are FIFO). `get_result`
    reads aqueue's result backend.

    Raises:
        ImproperlyConfigured: an unknown option, no URL, or a queue name aqueue cannot use.
    """

    supports_defer = True
    supports_async_task = True
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = sorted(set(self.options) - set(OPTION_KEYS))
        if unknown:
            known = ", ".join(sorted(OPTION_KEYS))
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {unknown}; known: {known}"
            )
        for queue in sorted(self.queues):
            try:
                validate_name(queue)
            except ConfigurationError as exc:
                raise ImproperlyConfigured(f"TASKS[{alias!r}]['QUEUES']: {exc}") from exc
        self.supports_get_result = bool(self.options.get("results"))
        self._lock = threading.Lock()
        self._tasks: dict[str, AqueueTask[Any, Any]] = {}
        self._queue = self.make_queue()  # checks the options; nothing connects yet
        self._portal: BlockingPortal | None = None

    # -- configuration -----------------------------------------------------------------------

    def make_queue(self) -> TaskQueue:
        """A new TaskQueue configured by this backend's ``OPTIONS`` (closed).

        Raises:
            ImproperlyConfigured: a bad option.
        """
        options = self.options
        url = options.get("url")
        if not url:
            raise ImproperlyConfigured(f"TASKS[{self.alias!r}]['OPTIONS'] needs 'url' (AMQP)")
        results = None
        if options.get("results"):
            from aqueue._results.redis_backend import RedisResultBackend

            results = RedisResultBackend(options["results"], prefix=options.get("prefix", "aqueue"))
        try:
            return TaskQueue(
                url,
                prefix=options.get("prefix", "aqueue"),
                results=results,
                result_ttl=options.get("result_ttl", 86400.0),
                name=options.get("name", f"aqueue-django-{self.alias}"),
            )
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"TASKS[{self.alias!r}]['OPTIONS']: {exc}") from exc

    def aqueue_task(self, task: Task[Any, Any]) -> AqueueTask[Any, Any]:
        """The aqueue task that runs Django task `task` (registered on first use)."""
        path = task.module_path
        with self._lock:
            made = self._tasks.get(path)
            if made is None:
                made = self._register(self._queue, task)
                self._tasks[path] = made
        return made.with_options(queue=task.queue_name)

    def _register(self, queue: TaskQueue, task: Task[Any, Any]) -> AqueueTask[Any, Any]:
        options: dict[str, Any] = {"name": task.module_path, "queue": task.queue_name}
        for key in ("retries", "timeout"):
            if self.options.get(key) is not None:
                options[key] = self.options[key]
        return queue.task(**options)(run_in_worker(task, self.alias))

    def register_all(self, queue: TaskQueue, tasks: Sequence[Task[Any, Any]]) -> None:
        """Register the Django tasks of this backend on `queue` (the worker's)."""
        for task in tasks:
            if task.backend == self.alias:
                self._register(queue, task)

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(self, task: Task[Any, T], args: Any, kwargs: Any) -> TaskResult[Any, T]:
        """Send a job of `task`; returns once RabbitMQ confirmed it.

        Raises:
            InvalidTask: as Django's backends do (an invalid queue, a priority).
            aqueue.exceptions.EncodeError: an argument is not JSON (naming it).
            aqueue.exceptions.PublishError, ConnectionLost: as `TaskQueue.enqueue`.
        """
        self.validate_task(task)
        portal = self._blocking_portal()
        job_id = portal.call(self._send, self._queue, task, list(args), dict(kwargs))
        return self._ready(task, job_id, args, kwargs)

    async def aenqueue(self, task: Task[Any, T], args: Any, kwargs: Any) -> TaskResult[Any, T]:
        """`enqueue`, async: the caller's event loop awaits the confirm, no thread is blocked."""
        self.validate_task(task)
        job_id = await self._in_background(self._send, self._queue, task, list(args), dict(kwargs))
        return self._ready(task, job_id, args, kwargs)

    async def _send(
        self, queue: TaskQueue, task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> str:
        aqueue_task = self.aqueue_task(task)
        if task.run_after is not None:
            eta = task.run_after
            if timezone.is_naive(eta):
                eta = timezone.make_aware(eta)
            job = await queue.enqueue_at(eta, aqueue_task, *args, **kwargs)
        else:
            job = await queue.enqueue(aqueue_task, *args, **kwargs)
        return job.job_id

    def make_queue_for_rows(self) -> TaskQueue:
        """The (closed) TaskQueue outbox rows are made with: its size limit, its tasks."""
        return self._queue

    def ready_result(
        self, task: Task[Any, T], job_id: str, args: Any, kwargs: Any
    ) -> TaskResult[Any, T]:
        """The `TaskResult` of a job just enqueued (READY)."""
        return self._ready(task, job_id, args, kwargs)

    def _ready(self, task: Task[Any, T], job_id: str, args: Any, kwargs: Any) -> TaskResult[Any, T]:
        return TaskResult(
            task=task,
            id=job_id,
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def _blocking_portal(self) -> BlockingPortal:
        """The background thread's event loop, with the queue open on it (started once)."""
        with self._lock:
            if self._portal is None:
                portal = _start_portal()
                try:
                    portal.call(self._queue.open)
                except BaseException:
                    portal.call(portal.stop)  # the next enqueue starts afresh
                    raise
                self._portal = portal
            return self._portal

    async def _in_background(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Run `fn` on the background loop (its one connection); await it on this loop.

        The caller's loop only waits on a future: no thread is held while the broker
        confirms, and every loop (an ASGI server's, each ``async_to_sync`` call's) shares the
        process's one connection.
        """
        portal = self._portal
        if portal is None:  # the first use connects: not on this loop
            portal = await anyio.to_thread.run_sync(self._blocking_portal)
        return await asyncio.wrap_future(portal.start_task_soon(fn, *args))

    # -- results -----------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult[Any, Any]:
        """The job's result as Django's `TaskResult`, read from aqueue's result backend.

        ``args`` and ``kwargs`` are empty: the result backend keeps states, not arguments.

        Raises:
            TaskResultDoesNotExist: no state is known for `result_id` (never enqueued with a
                result backend, or expired after ``result_ttl``).
        """
        if not self.supports_get_result:
            raise NotImplementedError(
                f"TASKS[{self.alias!r}] has no result backend: set OPTIONS['results'] to a "
                "Redis URL to read results"
            )
        state = self._blocking_portal().call(self._state, self._queue, result_id)
        return self._result(result_id, state)

    async def aget_result(self, result_id: str) -> TaskResult[Any, Any]:
        """`get_result`, async."""
        if not self.supports_get_result:
            return self.get_result(result_id)  # raises the same error
        state = await self._in_background(self._state, self._queue, result_id)
        return self._result(result_id, state)

    @staticmethod
    async def _state(queue: TaskQueue, job_id: str) -> JobState | None:
        return await queue.job(job_id).state()

    def _result(self, result_id: str, state: JobState | None) -> TaskResult[Any, Any]:
        if state is None or state.task is None:
            raise TaskResultDoesNotExist(result_id)
        from django.utils.module_loading import import_string

        try:
            task = import_string(state.task)
        except ImportError as exc:
            raise TaskResultDoesNotExist(result_id) from exc
        status = STATUSES[state.status]
        updated = dt.datetime.fromtimestamp(state.updated_at, tz=dt.UTC)
        finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        error = state.error
        result: TaskResult[Any, Any] = TaskResult(
            task=task,
            id=result_id,
            status=status,
            enqueued_at=None,
            started_at=updated if status == TaskResultStatus.RUNNING else None,
            finished_at=updated if finished else None,
            last_attempted_at=updated if state.attempt else None,
            args=[],
            kwargs={},
            backend=self.alias,
            errors=[]
            if error is None
            else [TaskError(exception_class_path=error.type, traceback=error.traceback)],
            worker_ids=[f"attempt-{n}" for n in range(1, state.attempt + 1)],
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", state.result)
        return result

    def close(self) -> None:
        """Close the background connection (tests; a process exit does it too)."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is not None:
            with contextlib.suppress(AqueueError):
                portal.call(self._queue.aclose)
            portal.call(portal.stop)


def _start_portal() -> BlockingPortal:
    """An event loop in a daemon thread (a process exit never waits for it)."""
    ready = threading.Event()
    holder: list[BlockingPortal] = []

    async def serve() -> None:
        async with BlockingPortal() as portal:
            holder.append(portal)
            ready.set()
            await portal.sleep_until_stopped()

    thread = threading.Thread(target=anyio.run, args=(serve,), name="aqueue-django", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise ImproperlyConfigured("the aqueue background event loop did not start")
    return holder[0]


def run_in_worker(task: Task[Any, Any], alias: str) -> Callable[..., Any]:
    """The function the worker runs for a job of Django task `task` (in a worker thread).

    Before and after each job the thread's stale database connections are closed (those
    past ``CONN_MAX_AGE``, or broken), as Django does around each request, so a job never
    starts on a connection the database dropped and none is held forever.
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            if task.takes_context:
                return task.call(_context(task, alias, list(args), kwargs), *args, **kwargs)
            return task.call(*args, **kwargs)
        finally:
            close_old_connections()

    run.__name__ = task.name
    run.__qualname__ = task.name
    run.__module__ = task.func.__module__
    return run


def _context(
    task: Task[Any, Any], alias: str, args: list[Any], kwargs: dict[str, Any]
) -> TaskContext[Any, Any]:
    job = current_job()
    now = timezone.now()
    result: TaskResult[Any, Any] = TaskResult(
        task=task,
        id=job.job_id,
        status=TaskResultStatus.RUNNING,
        enqueued_at=None,
        started_at=now,
        finished_at=None,
        last_attempted_at=now,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=[],
        worker_ids=[f"attempt-{n}" for n in range(1, job.attempt + 1)],
    )
    return TaskContext(task_result=result)
