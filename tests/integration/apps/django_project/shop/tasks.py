"""The shop's Django tasks, run by ``aqueue worker aqueue.contrib.django:queue``."""

from __future__ import annotations

from typing import Any

from django.db import connection

from aqueue.contrib.django._compat import TaskContext
from tests.integration.apps.django_project.shop.models import Order

try:
    from django.tasks import task
except ImportError:  # Django < 6: the backport
    from django_tasks import task  # type: ignore[no-redef]


@task()
def add(a: int, b: int) -> int:
    """A plain sum."""
    return a + b


@task()
async def shout(text: str) -> str:
    """An async task."""
    return text.upper()


@task()
def mark_paid(number: int) -> dict[str, Any]:
    """Touch the ORM: mark the order paid and read it back, with the connection it used."""
    Order.objects.filter(number=number).update(status="paid")
    order = Order.objects.get(number=number)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()
    return {"status": order.status, "pid": pid[0] if pid else None}


@task()
def fail(message: str) -> None:
    """Always fails."""
    raise ValueError(message)


@task(queue_name="emails")
def email(to: str) -> str:
    """A task on another queue."""
    return f"sent to {to}"


@task(takes_context=True)
def attempt(context: TaskContext[Any, Any]) -> list[Any]:
    """Reads its context: the job's id and attempt."""
    return [context.task_result.id, context.attempt]
