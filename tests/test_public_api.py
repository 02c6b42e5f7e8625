"""The public surface: what each public module exports, and what `TaskQueue` offers.

Everything else is private (an underscored module or name) and may change without notice.
"""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import aqueue

PUBLIC_MODULES = (
    "aqueue",
    "aqueue.dashboard",
    "aqueue.exceptions",
    "aqueue.telemetry",
    "aqueue.testing",
)

#: What users call on a TaskQueue; plumbing lives on its Session.
TASK_QUEUE_API = {
    "aclose",
    "cancel",
    "dead_letters",
    "enqueue",
    "enqueue_at",
    "enqueue_in",
    "enqueue_many",
    "instrument",
    "instrumentation",
    "job",
    "middleware",
    "name",
    "open",
    "outbox",
    "periodic",
    "schedule",
    "schedules",
    "session",
    "task",
    "tasks",
    "urls",
}


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in ("annotations", "TYPE_CHECKING")
    }


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_complete(name: str) -> None:
    """Each public module's `__all__` is sorted and lists exactly its public names."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    lazy = {"RedisResultBackend"} if name == "aqueue" else set()  # loaded on first use
    assert _public_names(module) | lazy == set(exported)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_export_has_a_docstring(name: str) -> None:
    """Every exported class and function documents itself (its own docstring, not a base's)."""
    module = importlib.import_module(name)
    missing = []
    for export in module.__all__:
        value = getattr(module, export)
        if inspect.isclass(value):
            documented = bool(vars(value).get("__doc__"))
        elif inspect.isfunction(value):
            documented = bool(value.__doc__)
        else:
            continue  # constants and type aliases carry no docstring of their own
        if not documented:
            missing.append(export)
    assert missing == []


def test_task_queue_offers_only_what_users_call() -> None:
    """`TaskQueue`'s public attributes are the user's verbs, no plumbing."""
    assert {name for name in dir(aqueue.TaskQueue) if not name.startswith("_")} | {
        "name"  # an instance attribute
    } == TASK_QUEUE_API


def test_a_task_queue_keeps_no_password_in_a_public_attribute() -> None:
    """Credentials are not kept in clear where logs and reprs would show them."""
    queue = aqueue.TaskQueue("amqp://user:s3cret@localhost/")
    public = {name: getattr(queue, name) for name in TASK_QUEUE_API}
    assert "s3cret" not in repr(queue)
    assert not any("s3cret" in repr(value) for value in public.values())
