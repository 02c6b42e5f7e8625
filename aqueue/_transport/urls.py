"""Broker URLs at the edge: the TLS settings that go with them, and their printable form.

Pure functions on strings (no aio-pika): `TaskQueue`, the connector and the CLI check and print
URLs before any transport exists.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from aqueue.exceptions import ConfigurationError

__all__ = ["MASK", "check_tls", "check_url", "redact_url", "warn_unverified"]

log = logging.getLogger(__name__)

MASK = "***"
"""What a password is shown as wherever a URL is printed, logged or kept on a public attribute."""


def redact_url(url: str) -> str:
    """`url` with its password, if any, replaced by `MASK`; everything else unchanged.

    Works on the text, so even a URL that does not parse keeps nothing after the user name's
    colon up to the ``@``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # the authority ends at the first "/", "?" or "#" (RFC 3986); a password holding one of
    # them unencoded is not a valid URL, and the broker would not see it either
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}://{user}:{MASK}@{host}{tail}"


#: What a broker URL looks like, for error messages.
URL_FORM = "amqp://user:password@host:port/vhost (amqps:// for TLS; memory:// in tests)"


def check_url(url: str) -> str:
    """`url`, checked to be a broker URL: ``amqp://`` or ``amqps://`` with a host, or ``memory://``.

    ``http://``, ``redis://``, ... are refused here, where they are given: aio-pika would
    connect to an http:// URL's host as AMQP, and time out on a redis:// one.

    Raises:
        ConfigurationError: any other scheme, or an AMQP URL without a host; the message
            shows the URL with its password masked.
    """
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError as exc:  # a bad port, an unclosed [IPv6 literal
        raise ConfigurationError(
            f"{redact_url(url)!r} is not a valid URL ({exc}): use {URL_FORM}"
        ) from exc
    if parts.scheme == "memory":
        return url
    if parts.scheme not in ("amqp", "amqps"):
        hint = {"redis": " (Redis is for results: RedisResultBackend)"}.get(parts.scheme, "")
        raise ConfigurationError(f"{redact_url(url)!r} is not a broker URL{hint}: use {URL_FORM}")
    if not host:
        raise ConfigurationError(f"{redact_url(url)!r} has no host: use {URL_FORM}")
    return url


def check_tls(urls: Sequence[str], context: object) -> ssl.SSLContext | None:
    """The TLS context for `urls`, checked: an `ssl.SSLContext` is for ``amqps://`` URLs only.

    A context with an ``amqp://`` URL would be dropped without a word by aio-pika (it speaks
    plain TCP there), so it is refused; so is one for the in-memory broker.

    Raises:
        ConfigurationError: `context` is not an `ssl.SSLContext` or None; or it is given with
            a URL that is not ``amqps://``.
    """
    if context is None:
        return None
    if not isinstance(context, ssl.SSLContext):
        raise ConfigurationError(f"ssl must be an ssl.SSLContext or None, not {context!r}")
    plain = [redact_url(url) for url in urls if urlsplit(url).scheme != "amqps"]
    if plain:
        raise ConfigurationError(
            f"ssl= is for amqps:// URLs, but {', '.join(plain)} "
            f"{'is' if len(plain) == 1 else 'are'} not: use amqps://host:5671/ (RabbitMQ's "
            "TLS port), or leave ssl= out"
        )
    return context


def warn_unverified(urls: Sequence[str], context: ssl.SSLContext | None) -> None:
    """Log a warning when TLS would not verify the broker: allowed (a test rig), never quiet."""
    if context is not None and context.verify_mode == ssl.CERT_NONE:
        log.warning(
            "TLS certificate verification is off (the ssl= context has verify_mode "
            "CERT_NONE): anyone on the path can impersonate the broker"
        )
    elif context is not None and not context.check_hostname:
        log.warning(
            "TLS host name checking is off (the ssl= context has check_hostname=False): any "
            "certificate its CAs signed is accepted for any broker"
        )
    elif context is None:  # an explicit context wins over the URL parameters
        for url in urls:
            parts = urlsplit(url)
            # as aiormq reads it: the first value, and anything but "0" (even "") turns it off
            query = parse_qs(parts.query, keep_blank_values=True)
            if parts.scheme == "amqps" and query.get("no_verify_ssl", ["0"])[0] != "0":
                log.warning(
                    "TLS certificate verification is off for %s (no_verify_ssl): anyone on "
                    "the path can impersonate the broker",
                    redact_url(url),
                )
