"""Credentials are never shown: the password of a broker URL is masked wherever aqueue prints,
logs or exposes the URL (`TaskQueue.urls`, reprs, error messages, the CLI)."""

from __future__ import annotations

import pytest
import typer

from aqueue import TaskQueue
from aqueue._cli.dlq import broker_queue
from aqueue._transport import redact_url
from aqueue.exceptions import ConfigurationError

HIDDEN = "s3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:pw@host/", "amqp://user:***@host/"),
        ("amqps://user:p%40ss@host:5671/vhost?cafile=/a@b/ca.pem", None),
        ("amqp://user@host/", "amqp://user@host/"),
        ("amqp://host:5672/", "amqp://host:5672/"),
        ("amqp://:pw@host/", "amqp://:***@host/"),
        ("amqp://user:pw@[::1]:5672/", "amqp://user:***@[::1]:5672/"),
        ("amqp://user:p@ss@host/", "amqp://user:***@host/"),
        ("memory://", "memory://"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_masks_only_the_password(url: str, shown: str | None) -> None:
    """The password (between the user's colon and the last ``@`` of the authority) becomes
    ``***``; an ``@`` in the path or query is not mistaken for one."""
    expected = shown if shown is not None else "amqps://user:***@host:5671/vhost?cafile=/a@b/ca.pem"
    assert redact_url(url) == expected


def test_a_queue_shows_its_urls_masked() -> None:
    """`TaskQueue.urls` and ``repr`` never hold a password; the URLs are otherwise as given."""
    urls = [f"amqp://user:{HIDDEN}@one/", f"amqps://user:{HIDDEN}@two:5671/?cafile=/ca.pem"]
    queue = TaskQueue(urls)
    assert queue.urls == ("amqp://user:***@one/", "amqps://user:***@two:5671/?cafile=/ca.pem")
    assert HIDDEN not in repr(queue)


def test_the_dlq_cli_masks_the_password_of_a_bad_url() -> None:
    """``aqueue dlq --url`` with a URL that is not AMQP: the error shows it masked."""
    with pytest.raises(typer.BadParameter) as caught:
        broker_queue(None, f"http://user:{HIDDEN}@host/", None)
    assert "http://user:***@host/" in str(caught.value)
    assert HIDDEN not in str(caught.value)


def test_the_dlq_cli_passes_tls_urls_through() -> None:
    """``--url amqps://...?cafile=...`` reaches the queue as given (masked in `urls`)."""
    url = f"amqps://user:{HIDDEN}@host:5671/?cafile=/etc/ca.pem"
    queue = broker_queue(None, url, None)
    assert queue.urls == ("amqps://user:***@host:5671/?cafile=/etc/ca.pem",)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://user:{HIDDEN}@localhost:15672/", "'http://user:***@localhost:15672/' is not a"),
        ("redis://localhost:6379/0", "Redis is for results: RedisResultBackend"),
        ("amqp:///vhost", "has no host"),
        ("amqp://host:notaport/", "is not a valid URL"),
        (["amqp://a/", "ftp://b/"], "'ftp://b/' is not a broker URL"),
        (["memory://", "amqp://a/"], "memory:// is one in-process broker"),
    ],
)
def test_a_task_queue_refuses_a_url_that_is_not_a_broker_at_construction(
    url: str | list[str], message: str
) -> None:
    """Issue 12: ``TaskQueue("http://...")`` / ``("redis://...")`` fail where they are given,
    as the CLI's --url does, instead of connecting (or timing out) as AMQP."""
    with pytest.raises(ConfigurationError) as caught:
        TaskQueue(url)
    assert message in str(caught.value)
    assert HIDDEN not in str(caught.value)
    assert "amqp://user:password@host:port/vhost" in str(caught.value) or "memory://" in message
