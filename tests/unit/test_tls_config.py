"""TLS settings and credentials at the edge: what `TaskQueue` refuses, warns about and shows.

Nothing here connects; the handshakes themselves are in tests/integration/test_tls.py.
"""

from __future__ import annotations

import itertools
import logging
import ssl

import pytest

from aqueue import TaskQueue
from aqueue._transport.amqp import _tls_refusal
from aqueue.exceptions import ConfigurationError

HIDDEN = "s3cret"


def context() -> ssl.SSLContext:
    return ssl.create_default_context()


@pytest.mark.parametrize("value", ["amqps", True, {"cafile": "ca.pem"}, ssl.SSLSocket])
def test_ssl_must_be_an_ssl_context(value: object) -> None:
    """`ssl=` takes an `ssl.SSLContext` (or None), nothing that only looks like TLS settings."""
    with pytest.raises(ConfigurationError, match=r"ssl must be an ssl\.SSLContext or None"):
        TaskQueue("amqps://broker/", ssl=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "amqp://broker/",
        ["amqps://one/", "amqp://two/"],
        "memory://",
        "memory://shared",
    ],
)
def test_ssl_needs_amqps_urls(url: str | list[str]) -> None:
    """aio-pika would drop a context given with a plain URL without a word: refused here."""
    with pytest.raises(ConfigurationError, match=r"ssl= is for amqps:// URLs"):
        TaskQueue(url, ssl=context())


def test_ssl_with_amqps_urls_is_accepted() -> None:
    """The same context with every URL ``amqps://`` builds a queue (nothing connects yet)."""
    queue = TaskQueue(["amqps://one/", "amqps://two:5671/"], ssl=context())
    assert queue.urls == ("amqps://one/", "amqps://two:5671/")


def test_the_refusal_of_a_plain_url_masks_its_password() -> None:
    """The error names the offending URL, without its password."""
    with pytest.raises(ConfigurationError) as caught:
        TaskQueue(f"amqp://user:{HIDDEN}@broker/", ssl=context())
    assert "amqp://user:***@broker/" in str(caught.value)
    assert HIDDEN not in str(caught.value)


def _no_verification() -> ssl.SSLContext:
    unverified = context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return unverified


def _no_hostname_check() -> ssl.SSLContext:
    unchecked = context()
    unchecked.check_hostname = False
    return unchecked


@pytest.mark.parametrize(
    ("url", "make_context", "warning"),
    [
        ("amqps://host/", _no_verification, "certificate verification is off"),
        ("amqps://host/", _no_hostname_check, "host name checking is off"),
        ("amqps://host/?no_verify_ssl=1", None, "certificate verification is off for"),
        ("amqps://host/?no_verify_ssl=", None, "certificate verification is off for"),
        ("amqps://host/", context, None),
        ("amqps://host/?no_verify_ssl=0", None, None),
        ("amqps://host/?no_verify_ssl=1", context, None),  # the context wins
    ],
)
def test_turning_verification_off_is_logged(
    url: str,
    make_context: object,
    warning: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Allowed (a test rig), never quiet: a warning when the broker would not be verified."""
    caplog.set_level(logging.WARNING, logger="aqueue")
    tls = make_context() if callable(make_context) else None
    TaskQueue(url, ssl=tls)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("aqueue")]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1
        assert warning in messages[0]


def _chain(*errors: BaseException) -> BaseException:
    """`errors[0]` caused by `errors[1]`, caused by ..., as aiormq wraps handshake errors."""
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    return errors[0]


def test_a_tls_refusal_is_found_behind_aiormqs_wrapper() -> None:
    """A certificate error under a connection error is a refusal; a TLS EOF (the peer went
    away) and a plain connection error are not; a loop in the chain ends the search."""
    verdict = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert _tls_refusal(_chain(ConnectionError("wrapped"), verdict)) is verdict
    assert _tls_refusal(_chain(ConnectionError("wrapped"), ssl.SSLEOFError(8, "eof"))) is None
    assert _tls_refusal(ConnectionRefusedError(111, "refused")) is None
    looped = ConnectionError("a")
    looped.__cause__ = ConnectionError("b")
    looped.__cause__.__cause__ = looped
    assert _tls_refusal(looped) is None
