"""Schedules of tasks: `queue.periodic` and `queue.schedule` build them here, checked."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from aqueue._core.schedules import Misfire, Schedule, trigger
from aqueue._serialization import encode_arguments
from aqueue._tasks.task import Task
from aqueue.exceptions import ConfigurationError, EncodeError


def make_schedule(
    task: Task[Any, Any],
    *,
    cron: str | None = None,
    every: float | dt.timedelta | None = None,
    timezone: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
    misfire: Misfire = "once",
    overlap: bool = True,
) -> Schedule:
    """A schedule of `task`, every part checked now.

    Raises:
        ConfigurationError: not a task; a bad cron expression, interval, time zone, misfire
            or name; arguments the task cannot take, or that are not JSON.
    """
    if not isinstance(task, Task):
        raise ConfigurationError(
            f"schedule() needs a task registered with @queue.task, not {task!r}"
        )
    when = trigger(cron, every, timezone)
    kwargs = dict(kwargs or {})
    try:
        inspect.signature(task.fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"schedule of {task.name}: the arguments do not fit: {exc}"
        ) from exc
    try:
        encode_arguments(args, kwargs)
    except EncodeError as exc:
        raise ConfigurationError(f"schedule of {task.name}: {exc}") from exc
    return Schedule(
        name=task.name if name is None else name,
        task=task.name,
        queue=task.options.queue,
        trigger=when,
        args=tuple(args),
        kwargs=kwargs,
        misfire=misfire,
        overlap=overlap,
        options=dict(task.overrides),
        store_result=task.options.store_result,
        result_ttl=task.options.result_ttl,
    )
