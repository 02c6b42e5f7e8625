"""The worker's TaskQueue for Django: Django set up, the tasks of the ``TASKS`` backend found.

``aqueue worker aqueue.contrib.django:queue`` reads ``aqueue.contrib.django.queue``, which
calls `worker_queue`: it sets Django up (``DJANGO_SETTINGS_MODULE`` must name the settings),
picks the `AqueueBackend` of ``TASKS`` (``AQUEUE_DJANGO_BACKEND`` names one when there are
several), imports every installed app's ``tasks`` module (and ``OPTIONS["task_modules"]``),
and registers each Django task of that backend as an aqueue task of the same module path.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import Any

import django
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from aqueue._client.queue import TaskQueue
from aqueue.contrib.django._compat import Task, task_backends
from aqueue.contrib.django.backend import AqueueBackend

#: Names the ``TASKS`` alias the worker runs when several use `AqueueBackend`.
BACKEND_ENV = "AQUEUE_DJANGO_BACKEND"


@functools.cache
def worker_queue(alias: str | None = None) -> TaskQueue:
    """The TaskQueue that runs the Django tasks of the `AqueueBackend` at `alias`.

    Raises:
        ImproperlyConfigured: Django is not configured (no ``DJANGO_SETTINGS_MODULE``), no
            ``TASKS`` backend is an `AqueueBackend`, or a task module does not import.
    """
    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ImproperlyConfigured(
            "aqueue.contrib.django:queue needs Django's settings: set DJANGO_SETTINGS_MODULE"
        )
    if not apps.ready:
        django.setup()
    backend = _backend(alias or os.environ.get(BACKEND_ENV))
    queue = backend.make_queue()
    backend.register_all(queue, discover_tasks(backend))
    return queue


def _backend(alias: str | None) -> AqueueBackend:
    configured: dict[str, Any] = getattr(settings, "TASKS", {})
    ours = [
        name
        for name, params in configured.items()
        if params.get("BACKEND") == "aqueue.contrib.django.AqueueBackend"
    ]
    if alias is None:
        if not ours:
            raise ImproperlyConfigured(
                "no TASKS backend is aqueue.contrib.django.AqueueBackend: nothing to run"
            )
        alias = ours[0]
    backend = task_backends[alias]
    if not isinstance(backend, AqueueBackend):
        raise ImproperlyConfigured(
            f"TASKS[{alias!r}] is not an aqueue.contrib.django.AqueueBackend"
        )
    return backend


def discover_tasks(backend: AqueueBackend) -> list[Task[Any, Any]]:
    """The Django tasks of `backend`, sorted by module path.

    They are found in every installed app's ``tasks`` module and in
    ``OPTIONS["task_modules"]``.

    Raises:
        ImproperlyConfigured: a module does not import.
    """
    names = [
        f"{config.name}.tasks"
        for config in apps.get_app_configs()
        if _exists(f"{config.name}.tasks")
    ]
    names += list(backend.options.get("task_modules", []))
    found: dict[str, Task[Any, Any]] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ImproperlyConfigured(f"cannot import task module {name!r}: {exc}") from exc
        for value in vars(module).values():
            if isinstance(value, Task) and value.backend == backend.alias:
                found[value.module_path] = value
    return [found[path] for path in sorted(found)]


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
