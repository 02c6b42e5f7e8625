"""Tier 2, the broker seam: one interface, an AMQP and an in-memory implementation.

`Transport`, `Delivery` and `Consumer` are the interface (``base``); `connector` picks the
implementation from the URLs. aio-pika enters only in ``amqp``, which is imported on first use,
so a ``memory://`` queue never loads it.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Callable, Sequence

from aqueue._transport.base import Consumer, Delivery, DeliveryCallback, OutgoingMessage, Transport
from aqueue._transport.memory import MemoryTransport
from aqueue._transport.memory_broker import MemoryBroker
from aqueue._transport.urls import check_tls, check_url, redact_url, warn_unverified
from aqueue.exceptions import ConfigurationError

__all__ = [
    "Connector",
    "Consumer",
    "Delivery",
    "DeliveryCallback",
    "OutgoingMessage",
    "Transport",
    "check_tls",
    "check_url",
    "check_urls",
    "connector",
    "redact_url",
]

#: Makes a new, unconnected transport for a role (``"publisher"``, ``"consumer"``, ...); each
#: call is a connection of its own.
Connector = Callable[[str], Transport]

#: Named in-memory brokers: every ``memory://name`` in a process shares one, as two
#: applications share a vhost; ``memory://`` alone is private to its connector.
_NAMED_BROKERS: weakref.WeakValueDictionary[str, MemoryBroker] = weakref.WeakValueDictionary()


def check_urls(url: object) -> tuple[str, ...]:
    """The broker URLs as a tuple (one URL, or a list of them for a cluster), each checked.

    Raises:
        ConfigurationError: not a URL or a non-empty list of URLs; a URL that is neither
            ``amqp://`` nor ``amqps://`` with a host, nor ``memory://`` (the only one then).
    """
    # run-time input: not every caller runs mypy
    urls = (url,) if isinstance(url, str) else tuple(url) if isinstance(url, Sequence) else ()
    if not urls or not all(isinstance(u, str) and "://" in u for u in urls):
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise ConfigurationError(f"url must be an AMQP URL or a list of them, not {shown!r}")
    for one in urls:
        check_url(one)
    if len(urls) > 1 and any(u.startswith("memory://") for u in urls):
        raise ConfigurationError("memory:// is one in-process broker: give it alone")
    return tuple(str(u) for u in urls)


def connector(
    urls: Sequence[str], *, name: str, ssl_context: ssl.SSLContext | None = None
) -> Connector:
    """A factory of transports to `urls`, each connection named ``{name}-{role}``.

    ``memory://`` (private) or ``memory://NAME`` (shared in the process) is the in-memory
    broker; anything else is RabbitMQ, through the AMQP transport. `ssl_context`, for
    ``amqps://`` URLs only, replaces the one aio-pika would build from the URLs' parameters.

    Raises:
        ConfigurationError: `ssl_context` is not a context, or comes with a URL that is not
            ``amqps://`` (``memory://`` included).
    """
    warn_unverified(urls, check_tls(urls, ssl_context))
    broker = _memory_broker(urls[0])
    if broker is not None:
        shared = broker

        def memory(role: str) -> Transport:
            return MemoryTransport(shared, connection_name=f"{name}-{role}")

        return memory

    from aqueue._transport.amqp import AmqpTransport  # aio-pika on first use only

    def amqp(role: str) -> Transport:
        return AmqpTransport(urls, connection_name=f"{name}-{role}", ssl_context=ssl_context)

    return amqp


def _memory_broker(url: str) -> MemoryBroker | None:
    if not url.startswith("memory://"):
        return None
    name = url.removeprefix("memory://").strip("/")
    if not name:
        return MemoryBroker()
    broker = _NAMED_BROKERS.get(name)
    if broker is None:
        broker = _NAMED_BROKERS[name] = MemoryBroker()
    return broker
