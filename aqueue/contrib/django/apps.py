"""The Django app of aqueue: the outbox table's model and migration.

``INSTALLED_APPS += ["aqueue.contrib.django"]``, then ``python manage.py migrate aqueue``.
"""

from __future__ import annotations

from django.apps import AppConfig


class AqueueConfig(AppConfig):
    """aqueue's Django app, label ``aqueue``."""

    name = "aqueue.contrib.django"
    label = "aqueue"
    verbose_name = "aqueue"
    default_auto_field = "django.db.models.BigAutoField"
