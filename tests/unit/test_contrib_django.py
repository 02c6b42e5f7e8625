"""`AqueueBackend`'s configuration and status mapping, checked without a broker (the behaviour
against the real broker is in ``tests/integration/test_django.py``)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from aqueue import JobStatus
from aqueue.contrib.django import AqueueBackend
from aqueue.contrib.django._compat import TaskResultStatus
from aqueue.contrib.django.backend import STATUSES

URL = "amqp://guest:guest@127.0.0.1:5672/"


def test_every_aqueue_status_maps_to_a_django_one() -> None:
    """No aqueue status is left out (a new one must be mapped), and finals map to finals."""
    assert set(STATUSES) == set(JobStatus)
    for status, django_status in STATUSES.items():
        finished = django_status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        assert finished == status.is_final, status


def test_the_backend_says_what_it_supports() -> None:
    """Defer and async tasks always; results only with a result backend; never priorities."""
    plain = AqueueBackend("default", {"OPTIONS": {"url": URL}})
    with_results = AqueueBackend(
        "default", {"OPTIONS": {"url": URL, "results": "redis://127.0.0.1:6379/15"}}
    )
    assert (plain.supports_defer, plain.supports_async_task, plain.supports_priority) == (
        True,
        True,
        False,
    )
    assert (plain.supports_get_result, with_results.supports_get_result) == (False, True)
    with pytest.raises(NotImplementedError, match="OPTIONS\\['results'\\]"):
        plain.get_result("some-id")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"OPTIONS": {}}, "needs 'url'"),
        ({"OPTIONS": {"url": URL, "rsults": "redis://x"}}, "unknown keys ['rsults']"),
        ({"OPTIONS": {"url": URL}, "QUEUES": ["ok", "not ok"]}, "QUEUES"),
        ({"OPTIONS": {"url": "http://broker"}}, "OPTIONS"),
    ],
)
def test_bad_settings_are_refused_when_the_backend_loads(
    params: dict[str, object], message: str
) -> None:
    """A missing URL, an unknown option, a queue name aqueue cannot use, a URL that is not
    AMQP: ImproperlyConfigured, naming the setting."""
    with pytest.raises(ImproperlyConfigured, match=message.replace("[", "\\[").replace("]", "\\]")):
        AqueueBackend("default", params)
