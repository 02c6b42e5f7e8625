"""The outbox table (``aqueue_outbox``)."""

from __future__ import annotations

from typing import ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):
    """Create the outbox table."""

    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.CreateModel(
            name="OutboxEntry",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("job_id", models.TextField()),
                ("task", models.TextField()),
                ("queue", models.TextField()),
                ("body", models.BinaryField()),
                ("options", models.TextField(default="{}")),
                ("enqueued_at_ms", models.BigIntegerField()),
                ("eta_ms", models.BigIntegerField(null=True)),
                ("expires_at_ms", models.BigIntegerField(null=True)),
                ("headers", models.TextField(default="{}")),
            ],
            options={"db_table": "aqueue_outbox"},
        ),
    ]
