"""Django's tasks framework: ``django.tasks`` (Django >= 6.0), else the backport.

The ``django-tasks`` backport (``django_tasks``) has the same API on Django 4.2 to 5.2, for
Python 3.11.

The type checker reads django-stubs' ``django.tasks``; at run time whichever is installed is
used. The backport names its invalid-task error ``InvalidTaskError``; Django 6 ``InvalidTask``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.tasks import DEFAULT_TASK_QUEUE_NAME, Task, TaskContext, TaskResult, task_backends
    from django.tasks import TaskResultStatus as TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
else:
    try:
        _tasks = importlib.import_module("django.tasks")
        _base = importlib.import_module("django.tasks.base")
        _backends = importlib.import_module("django.tasks.backends.base")
        _exceptions = importlib.import_module("django.tasks.exceptions")
        InvalidTask = _exceptions.InvalidTask
    except ImportError:
        _tasks = importlib.import_module("django_tasks")
        _base = importlib.import_module("django_tasks.base")
        _backends = importlib.import_module("django_tasks.backends.base")
        _exceptions = importlib.import_module("django_tasks.exceptions")
        InvalidTask = _exceptions.InvalidTaskError
    DEFAULT_TASK_QUEUE_NAME = _tasks.DEFAULT_TASK_QUEUE_NAME
    task_backends = _tasks.task_backends
    Task = _base.Task
    TaskContext = _base.TaskContext
    TaskError = _base.TaskError
    TaskResult = _base.TaskResult
    TaskResultStatus = _base.TaskResultStatus
    BaseTaskBackend = _backends.BaseTaskBackend
    TaskResultDoesNotExist = _exceptions.TaskResultDoesNotExist

#: Which tasks framework is in use: ``"django.tasks"`` or ``"django_tasks"`` (the backport).
FRAMEWORK = Task.__module__.removesuffix(".base")

__all__ = [
    "DEFAULT_TASK_QUEUE_NAME",
    "FRAMEWORK",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task_backends",
]
