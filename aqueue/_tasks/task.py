"""Tasks (registered functions) and the registry that maps names to them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from typing_extensions import Unpack

from aqueue._core.config import (
    TASK_OPTION_NAMES,
    WITH_OPTION_NAMES,
    TaskOptions,
    TaskOptionsDict,
    WithOptionsDict,
    check_option_names,
)
from aqueue._core.flow import ENQUEUE_OPTION_NAMES, FLOW_OPTION_NAMES, EnqueueOptions, FlowLimits
from aqueue._core.types import JSONScalar
from aqueue._workflows import Signature
from aqueue.exceptions import ConfigurationError

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")


class Call(Generic[P]):
    """The arguments of one job of a task, for `TaskQueue.enqueue_many`.

    Made by `Task.call`, so a type checker checks them against the task's signature.
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"<Call args={self.args!r} kwargs={dict(self.kwargs)!r}>"


class Task(Generic[P, R]):
    """A function registered with a `TaskQueue`; enqueue it with ``await queue.enqueue(task, ...)``.

    `P` is the function's parameters and `R` its result (for an async function, the awaited
    result), so ``queue.enqueue(task, ...)`` is checked against the function's signature.
    """

    __slots__ = ("enqueue_options", "fn", "is_async", "name", "options", "overrides")

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        name: str,
        options: TaskOptions,
        overrides: Mapping[str, JSONScalar] | None = None,
        enqueue_options: EnqueueOptions | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.options = options
        #: options changed by `with_options` that the worker must see (sent with each job)
        self.overrides: Mapping[str, JSONScalar] = overrides or {}
        #: how `with_options` set the enqueue itself: a job id, deduplication, a tenant
        self.enqueue_options = enqueue_options or EnqueueOptions()
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue!r}>"

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[P]:
        """The arguments of one job, for `enqueue_many` (checked like `enqueue`'s)."""
        return Call(args, kwargs)

    # Typed both ways: with every argument (a workflow's first step, a group member), or with
    # all but the first, which the previous step's result fills in.
    @overload
    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature: ...
    @overload
    def s(self: Task[Concatenate[Any, Q], R], *args: Q.args, **kwargs: Q.kwargs) -> Signature: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature for a workflow; the previous step's result is prepended to `args`."""
        return Signature(self.name, self.options.queue, args, kwargs, options=self.overrides)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """An immutable signature: it ignores the previous step's result."""
        # JSON is checked when the workflow is enqueued
        arguments: tuple[Any, ...] = args
        keywords: dict[str, Any] = kwargs
        return Signature(
            self.name,
            self.options.queue,
            arguments,
            keywords,
            immutable=True,
            options=self.overrides,
        )

    def with_options(self, **options: Unpack[WithOptionsDict]) -> Task[P, R]:
        """A copy of this task with other options for the jobs enqueued through it.

        The copy has the same name, so the same worker code runs it; changed run-time options
        (timeout, retries, backoff, on_expire) travel with each job. ``expires`` (seconds
        after each enqueue, or an aware datetime) becomes each job's deadline. The enqueue
        options set the enqueue itself: ``job_id`` (the job's id, instead of a fresh one),
        ``unique_for`` and ``unique_key`` (deduplication: see the flow-control page),
        ``tenant`` (fair share).

        Raises:
            ConfigurationError: an unknown option, or a bad value (an ``expires`` in the past).
        """
        check_option_names(options, WITH_OPTION_NAMES, where="with_options()")
        run: dict[str, Any] = {
            key: value for key, value in options.items() if key not in ENQUEUE_OPTION_NAMES
        }
        enqueue: dict[str, Any] = {
            key: value for key, value in options.items() if key in ENQUEUE_OPTION_NAMES
        }
        changed = dataclasses.replace(self.options, **run)
        expires = run.get("expires")
        if isinstance(expires, dt.datetime) and expires.timestamp() <= time.time():
            raise ConfigurationError(
                f"expires={expires.isoformat()} is in the past: the job could never run"
            )
        overrides = {**self.overrides, **changed.overrides(run)}
        enqueue_options = dataclasses.replace(self.enqueue_options, **enqueue)
        if enqueue_options.tenant is not None and self.options.flow.fair_key is None:
            raise ConfigurationError(
                f"with_options(tenant=...): task {self.name} has no fair share; give "
                "@queue.task(fair_key=...) the parameter that names the tenant"
            )
        return Task(
            self.fn,
            name=self.name,
            options=changed,
            overrides=overrides,
            enqueue_options=enqueue_options,
        )


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
    settings = {
        key: value
        for key, value in options.items()
        if key != "name" and key not in FLOW_OPTION_NAMES
    }
    name: object = options.get("name") or task_name(fn)
    if not isinstance(name, str):
        raise ConfigurationError(f"task name must be a string, not {name!r}")
    flow = FlowLimits.from_options(options)
    check_key_parameters(fn, flow)
    task_options = TaskOptions(**settings, flow=flow)  # type: ignore[arg-type]
    check_redacted_parameters(fn, task_options.redact)
    if task_options.executor == "process":
        check_process_function(fn)
    return Task(fn, name=name, options=task_options)


def check_key_parameters(fn: Callable[..., Any], flow: FlowLimits) -> None:
    """Check that every key option names a parameter of `fn`.

    Raises:
        ConfigurationError: a key names no parameter (and `fn` takes no ``**kwargs``).
    """
    names = flow.key_names()
    if not names:
        return
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for option, name in names.items():
        if name not in parameters or parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            known = ", ".join(parameters) or "none"
            raise ConfigurationError(
                f"{option}={name!r} names no parameter of {task_name(fn)} (its parameters: {known})"
            )


def check_redacted_parameters(fn: Callable[..., Any], redact: bool | tuple[str, ...]) -> None:
    """Check that every name of ``redact=`` is a parameter of `fn`.

    Raises:
        ConfigurationError: a name is no parameter (and `fn` takes no ``**kwargs``).
    """
    if isinstance(redact, bool):
        return
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for name in redact:
        if name not in parameters:
            known = ", ".join(parameters) or "none"
            raise ConfigurationError(
                f"redact names {name!r}, no parameter of {task_name(fn)} (its parameters: {known})"
            )


def key_argument(
    fn: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> object:
    """The value a job passes for parameter `name` (its default if not passed); None if unbound."""
    if name in kwargs:
        return kwargs[name]
    try:
        bound = _signature(fn).bind(*args, **kwargs)
    except TypeError:  # the call itself would fail: it fails in the task, keyed as None
        return None
    bound.apply_defaults()
    return bound.arguments.get(name)


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def check_process_function(fn: Callable[..., Any]) -> None:
    """Check that a pool process can find `fn` by its module and name.

    The function itself is not pickled: once decorated, its module-level name is bound to the
    `Task`, so pickle's lookup by name would not find the function. The pool process imports
    the module and takes the function out of the `Task` instead (`call_in_process`), which
    needs a plain function defined at a module's top level.

    Raises:
        ConfigurationError: an async function, or one a process cannot import.
    """
    where = task_name(fn)
    if inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            f"{where} is async: executor='process' is for plain (sync) functions; an async "
            "task runs on the worker's event loop"
        )
    if not inspect.isfunction(fn) or fn.__name__ == "<lambda>":
        raise ConfigurationError(
            f"executor='process' needs a function defined with def at a module's top level "
            f"(a pool process imports it by name), not {fn!r}"
        )
    if "<locals>" in fn.__qualname__ or "." in fn.__qualname__:
        raise ConfigurationError(
            f"{where} is defined inside another function or class: executor='process' needs "
            "it at a module's top level, where a pool process can import it by name"
        )
    if fn.__module__ == "__main__":
        raise ConfigurationError(
            f"{fn.__qualname__} is defined in __main__: executor='process' needs it in an "
            "importable module (a pool process imports it by name)"
        )


def call_in_process(module: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run the function `module`.`name` (a task's, once decorated) in a pool process.

    Importing the app's module in the pool process registers its tasks again on a `TaskQueue`
    that is never opened there; nothing connects.
    """
    target: object = getattr(importlib.import_module(module), name)
    fn = target.fn if isinstance(target, Task) else target
    if not callable(fn):
        raise TypeError(f"{module}.{name} is not a function in the pool process")
    return fn(*args, **kwargs)


class TaskRegistry(Mapping[str, "Task[Any, Any]"]):
    """Task names to tasks, for one `TaskQueue` (a read-only mapping, plus `add`)."""

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

    def __getitem__(self, name: str) -> Task[Any, Any]:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def queues(self) -> set[str]:
        """Every logical queue a registered task uses."""
        return {task.options.queue for task in self._tasks.values()}
