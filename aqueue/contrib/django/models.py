"""The outbox table for the Django ORM.

It has the same columns as ``aqueue.contrib.sqlalchemy``'s, so one ``aqueue outbox-relay``
publishes it. Created by this app's migration (``python manage.py migrate aqueue``).
"""

from __future__ import annotations

from django.db import models


class OutboxEntry(models.Model):
    """One job waiting in the outbox (see `aqueue.contrib.outbox.OutboxRow`)."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    job_id: models.TextField[str, str] = models.TextField()
    task: models.TextField[str, str] = models.TextField()
    queue: models.TextField[str, str] = models.TextField()
    body: models.BinaryField[bytes, bytes] = models.BinaryField()
    options: models.TextField[str, str] = models.TextField(default="{}")
    enqueued_at_ms: models.BigIntegerField[int, int] = models.BigIntegerField()
    eta_ms: models.BigIntegerField[int | None, int | None] = models.BigIntegerField(null=True)
    expires_at_ms: models.BigIntegerField[int | None, int | None] = models.BigIntegerField(
        null=True
    )
    headers: models.TextField[str, str] = models.TextField(default="{}")

    class Meta:
        db_table = "aqueue_outbox"
        app_label = "aqueue"

    def __str__(self) -> str:
        return f"outbox job {self.job_id} ({self.task})"
