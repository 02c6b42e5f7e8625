"""Tasks (registered functions) and the registry that maps names to them."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Generic, ParamSpec, TypeVar

from typing_extensions import Unpack

from aqueue._core.config import (
    OVERRIDE_OPTION_NAMES,
    PER_JOB_OPTIONS,
    TASK_OPTION_NAMES,
    TaskOptions,
    TaskOptionsDict,
    TaskOverridesDict,
    check_option_names,
)
from aqueue._core.types import JSONScalar
from aqueue._workflows import Signature
from aqueue.exceptions import ConfigurationError, UnknownTaskError

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A function registered with a `TaskQueue`; enqueue it with ``await queue.enqueue(task, ...)``.

    `P` is the function's parameters and `R` its result (for an async function, the awaited
    result), so ``queue.enqueue(task, ...)`` is checked against the function's signature.
    """

    __slots__ = ("fn", "is_async", "name", "options", "overrides")

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        name: str,
        options: TaskOptions,
        overrides: Mapping[str, JSONScalar] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.options = options
        #: options changed by `with_options` that the worker must see (sent with each job)
        self.overrides: Mapping[str, JSONScalar] = overrides or {}
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue!r}>"

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature for a workflow; the previous step's result is prepended to `args`."""
        return Signature(self.name, self.options.queue, args, kwargs, options=self.overrides)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores the previous step's result."""
        return Signature(
            self.name, self.options.queue, args, kwargs, immutable=True, options=self.overrides
        )

    def with_options(self, **options: Unpack[TaskOverridesDict]) -> Task[P, R]:
        """A copy of this task with other options for the jobs enqueued through it.

        The copy has the same name, so the same worker code runs it; changed run-time options
        (timeout, retries, backoff) travel with each job.

        Raises:
            ConfigurationError: an unknown option, or a bad value.
        """
        check_option_names(options, OVERRIDE_OPTION_NAMES, where="with_options()")
        changed = dataclasses.replace(self.options, **options)
        overrides = dict(self.overrides)
        for key in PER_JOB_OPTIONS:
            if key in options:
                overrides[key] = getattr(changed, key)
        return Task(self.fn, name=self.name, options=changed, overrides=overrides)


def task_name(fn: Callable[..., Any]) -> str:
    """The default name of a task: ``module.qualname``."""
    return f"{fn.__module__}.{fn.__qualname__}"


def make_task(fn: Callable[P, Any], options: TaskOptionsDict) -> Task[P, Any]:
    """Build a task from a function and decorator options.

    Raises:
        ConfigurationError: unknown options (with a suggestion), bad values, or something that
            is not a function.
    """
    check_option_names(options, TASK_OPTION_NAMES, where="@queue.task()")
    candidate: object = fn  # run-time input: not every caller runs mypy
    if not callable(candidate) or inspect.isclass(candidate):
        raise ConfigurationError(f"@queue.task() needs a function, not {fn!r}")
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise ConfigurationError(f"{task_name(fn)} is a generator; tasks must return a value")
    settings = {key: value for key, value in options.items() if key != "name"}
    name: object = options.get("name") or task_name(fn)
    if not isinstance(name, str):
        raise ConfigurationError(f"task name must be a string, not {name!r}")
    return Task(fn, name=name, options=TaskOptions(**settings))  # type: ignore[arg-type]


class TaskRegistry:
    """Task names to tasks, for one `TaskQueue`."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def add(self, task: Task[Any, Any]) -> None:
        """Register a task.

        Raises:
            ConfigurationError: another function is registered under the same name.
        """
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            raise ConfigurationError(
                f"task name {task.name!r} is already registered for {existing.fn!r}; "
                "pass name=... to tell them apart"
            )
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[Any, Any]:
        """The task registered under `name`.

        Raises:
            UnknownTaskError: no such task in this process.
        """
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(f"no task named {name!r} is registered here") from None

    def __iter__(self) -> Iterator[Task[Any, Any]]:
        return iter(self._tasks.values())

    def queues(self) -> set[str]:
        """Every logical queue a registered task uses."""
        return {task.options.queue for task in self._tasks.values()}
