"""Transactional enqueue for the Django ORM: the outbox, and `enqueue_on_commit`.

- ``outbox().enqueue(task, ...)`` writes the job into the outbox table (`OutboxEntry`, made
  by this app's migration) through Django's connection, in the current transaction: it is
  published by ``aqueue outbox-relay`` once that commits, and never if it rolls back; a
  relay that dies mid-batch publishes the rows again (same job ids).
- ``enqueue_on_commit(task, ...)`` publishes from ``transaction.on_commit``: no table, no
  relay, but a process that dies between the commit and the publish loses the job, and a
  broker that refuses it then raises after the data is committed.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone

from aqueue.contrib.django._compat import Task, TaskResult
from aqueue.contrib.django.backend import AqueueBackend
from aqueue.contrib.outbox import make_row
from aqueue.exceptions import ConfigurationError


class DjangoOutbox:
    """Enqueue Django tasks of an `AqueueBackend` into the outbox table of database `using`."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using

    def enqueue(self, task: Task[Any, Any], /, *args: Any, **kwargs: Any) -> TaskResult[Any, Any]:
        """Write a job of `task` into the outbox in the current transaction.

        Returns:
            The job's `TaskResult` (status READY; its id is the job's).

        Raises:
            ConfigurationError: `task` does not use an `AqueueBackend`; a unique job.
            aqueue.exceptions.EncodeError: an argument is not JSON; nothing was written.
        """
        backend = _aqueue_backend(task)
        backend.validate_task(task)
        eta: dt.datetime | None = task.run_after
        if eta is not None and timezone.is_naive(eta):
            eta = timezone.make_aware(eta)
        row = make_row(
            backend.make_queue_for_rows(),
            backend.aqueue_task(task),
            args,
            kwargs,
            eta=eta,
        )
        from aqueue.contrib.django.models import OutboxEntry

        OutboxEntry.objects.using(self.using).create(**row.columns())
        return backend.ready_result(task, row.job_id, args, kwargs)


def outbox(using: str = DEFAULT_DB_ALIAS) -> DjangoOutbox:
    """The outbox of database `using` (``outbox().enqueue(task, ...)``)."""
    return DjangoOutbox(using)


def enqueue_on_commit(task: Task[Any, Any], /, *args: Any, **kwargs: Any) -> None:
    """Enqueue `task` when the current transaction of the default database commits.

    Outside a transaction (autocommit) it enqueues at once. Weaker than `outbox`: the job is
    published after the commit, so a crash in between loses it, and a publish error is
    raised after the data is committed.

    Raises:
        ConfigurationError: `task` is not a Django task.
    """
    if not isinstance(task, Task):
        raise ConfigurationError(f"enqueue_on_commit() needs a Django task, not {task!r}")
    task.get_backend().validate_task(task)  # bad input fails now, not after the commit
    transaction.on_commit(partial(task.enqueue, *args, **kwargs))


def _aqueue_backend(task: object) -> AqueueBackend:
    if not isinstance(task, Task):
        raise ConfigurationError(f"the outbox needs a Django task (@task), not {task!r}")
    backend = task.get_backend()
    if not isinstance(backend, AqueueBackend):
        raise ConfigurationError(
            f"the outbox needs a task of an aqueue.contrib.django.AqueueBackend; "
            f"{task.module_path} uses {type(backend).__name__}"
        )
    return backend
