"""An order, for the task that touches the ORM."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """An order that a task marks paid."""

    number: models.IntegerField[int, int] = models.IntegerField()
    status: models.CharField[str, str] = models.CharField(max_length=20, default="new")

    def __str__(self) -> str:
        return f"order {self.number} ({self.status})"
