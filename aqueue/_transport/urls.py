"""Broker URLs at the edge: their printable form.

Pure functions on strings (no aio-pika): `TaskQueue`, the connector and the CLI print URLs
before any transport exists.
"""

from __future__ import annotations

__all__ = ["MASK", "redact_url"]

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
