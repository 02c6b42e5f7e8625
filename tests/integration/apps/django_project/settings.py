"""Settings of the Django project the Django tests run (``tests/integration/test_django.py``).

Everything external comes from the environment the pytest test sets: the broker, Redis, the
topology prefix, PostgreSQL and the name of the test database (unique per run).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

_pg = urlsplit(
    os.environ.get("AQUEUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
)

SECRET_KEY = "tests-only"  # noqa: S105
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "tests.integration.apps.django_project.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "aqueue.contrib.django",
    "tests.integration.apps.django_project.shop",
]
if __import__("importlib").util.find_spec("django.tasks") is None:
    INSTALLED_APPS.insert(0, "django_tasks")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        # the worker subprocess is pointed at the test database the test runner made
        "NAME": os.environ.get("AQUEUE_TEST_DJANGO_DB", (_pg.path or "/test").lstrip("/")),
        "USER": _pg.username or "postgres",
        "HOST": _pg.hostname or "127.0.0.1",
        "PORT": str(_pg.port or 5432),
        # closed after each request (and, in the worker, after each job)
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"application_name": os.environ.get("AQUEUE_TEST_DJANGO_APP", "django")},
        "TEST": {"NAME": os.environ.get("AQUEUE_TEST_DJANGO_TEST_DB", "test_aqueue_django")},
    }
}
TASKS = {
    "default": {
        "BACKEND": "aqueue.contrib.django.AqueueBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {
            "url": os.environ.get("AQUEUE_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            "results": os.environ.get("AQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
            "prefix": os.environ.get("AQUEUE_TEST_PREFIX", "aqueue-django"),
        },
    }
}
