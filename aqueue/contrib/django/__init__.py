"""Django: a backend of Django's tasks framework on RabbitMQ, the outbox, ``enqueue_on_commit``.

- `AqueueBackend`: ``TASKS = {"default": {"BACKEND": "aqueue.contrib.django.AqueueBackend",
  "OPTIONS": {"url": ..., "results": ...}, "QUEUES": [...]}}``; ``@task`` functions are then
  enqueued with ``.enqueue()`` / ``.aenqueue()``, and run by
  ``DJANGO_SETTINGS_MODULE=... aqueue worker aqueue.contrib.django:queue``.
- `outbox`: ``outbox().enqueue(task, ...)`` writes the job into the outbox table in the
  current database transaction (the app ``aqueue.contrib.django`` and its migration); the
  relay publishes it after the commit: ``aqueue outbox-relay aqueue.contrib.django:queue``.
- `enqueue_on_commit`: the simple form, with a weaker guarantee (see the Django page).

Django's tasks framework is ``django.tasks`` on Django >= 6.0 (Python >= 3.12) and the
``django-tasks`` backport (``django_tasks``) before; whichever is installed is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aqueue.contrib.django.backend import AqueueBackend
from aqueue.contrib.django.outbox import DjangoOutbox, enqueue_on_commit, outbox
from aqueue.contrib.django.worker import worker_queue

if TYPE_CHECKING:
    from aqueue._client.queue import TaskQueue

    #: The worker's TaskQueue, built from ``settings.TASKS`` on first access.
    queue: TaskQueue

__all__ = ["AqueueBackend", "DjangoOutbox", "enqueue_on_commit", "outbox", "queue", "worker_queue"]


def __getattr__(name: str) -> Any:
    """``queue``: the worker's TaskQueue (``aqueue worker aqueue.contrib.django:queue``)."""
    if name == "queue":
        return worker_queue()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
