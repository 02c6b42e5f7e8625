"""Publishing a batch of messages in one write: aiormq's channel internals, in one place.

aiormq's ``basic_publish`` does per message what a batch can do once: it takes the channel
lock, builds a write-queue item with its own drain future, and the connection's writer sends
it with a socket write of its own. `write_batch` takes the lock once, registers a
confirmation future per message exactly as ``basic_publish`` does (``delivery_tag``,
``confirmations``, ``message_id_delivery_tag``: aiormq's own confirm and return handling then
settles them), and puts the frames of every message in one write-queue item: one socket
write for the batch.

It relies on attributes that are not aiormq's public API, so it runs only on aiormq versions
it was checked against (`VETTED`; `supported` also checks that the attributes are there).
Elsewhere the transport publishes one message at a time, as before; the test
``tests/integration/test_amqp_batch.py::test_the_installed_aiormq_is_vetted`` fails on an
aiormq that is not vetted, so an upgrade is checked before it is trusted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from importlib.metadata import version
from typing import Any

from aiormq.abc import AbstractChannel, ChannelFrame
from pamqp import commands as spec
from pamqp.header import ContentHeader

__all__ = ["VETTED", "BatchItem", "supported", "supported_version", "write_batch"]

#: aiormq releases (major, minor) whose channel internals `write_batch` was checked against.
VETTED = ((7, 2),)
#: The attributes of an aiormq channel `write_batch` uses.
_ATTRIBUTES = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "number",
    "_split_body",
    "create_future",
    "publisher_confirms",
)
#: body, exchange, routing key, properties (with a message id)
BatchItem = tuple[bytes, str, str, spec.Basic.Properties]


def _vetted_version() -> bool:
    try:
        major, minor = (int(part) for part in version("aiormq").split(".")[:2])
    except (ValueError, TypeError):  # pragma: no cover - an odd version string
        return False
    return (major, minor) in VETTED


_VETTED_VERSION = _vetted_version()


def supported_version() -> bool:
    """Whether the installed aiormq is one `write_batch` was checked against."""
    return _VETTED_VERSION


def supported(channel: AbstractChannel) -> bool:
    """Whether `write_batch` may be used on `channel` (a vetted aiormq, confirms on)."""
    return (
        _VETTED_VERSION
        and all(hasattr(channel, name) for name in _ATTRIBUTES)
        and bool(getattr(channel, "publisher_confirms", False))
    )


def _forget(channel: Any, message_id: str | None, tag: int, _future: asyncio.Future[Any]) -> None:
    # what basic_publish does once a confirmation settles: returns are looked up by message id
    if channel.message_id_delivery_tag.get(message_id) == tag:
        channel.message_id_delivery_tag.pop(message_id)


async def write_batch(
    channel: AbstractChannel, items: Sequence[BatchItem]
) -> list[asyncio.Future[Any]]:
    """Write every message of `items` in one frame batch; their confirmation futures.

    Returns once the frames are written (drained); each future then settles as aiormq's
    own would: a ``Basic.Ack`` result, `aiormq.exceptions.DeliveryError` for a nack,
    `aiormq.exceptions.PublishError` for a return, the channel's close reason when it dies.
    A cancellation before the frames were queued leaves the channel as it was (the broker
    never saw them); after, the broker has them and the futures settle as usual.
    """
    ch: Any = channel  # aiormq's Channel, beyond its abc
    futures: list[asyncio.Future[Any]] = []
    frames: list[Any] = []
    async with ch.lock:
        first = ch.delivery_tag + 1
        drain: asyncio.Future[None] = ch.create_future()
        sent = False
        try:
            for body, exchange, routing_key, properties in items:
                ch.delivery_tag += 1
                tag = ch.delivery_tag
                message_id = properties.message_id
                future = ch.create_future()
                ch.confirmations[tag] = future
                ch.message_id_delivery_tag[message_id] = tag
                future.add_done_callback(partial(_forget, ch, message_id, tag))
                futures.append(future)
                frames.append(
                    spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
                )
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames.extend(ch._split_body(body))
            frame = ChannelFrame.marshall(
                frames=frames, channel_number=ch.number, drain_future=drain
            )
            await ch.write_queue.put(frame)
            sent = True
            await drain
        except BaseException:
            if not sent:  # the broker has not seen them: reuse their sequence numbers
                ch.delivery_tag = first - 1
                for offset, future in enumerate(futures):
                    ch.confirmations.pop(first + offset, None)
                    future.cancel()
            drain.cancel()
            raise
    return futures
