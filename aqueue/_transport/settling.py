"""Acks of one consumer channel, sent together: ``basic.ack`` with ``multiple=True``.

A worker settles many jobs in one turn of the event loop (deliveries arrive in batches, and
runners finish together). Sending one ``basic.ack`` frame per job costs a frame, a drain
future and, mostly, a socket write each; `ChannelAcks` gathers the acks asked for during one
turn and sends them in the next: one ``basic.ack(tag, multiple=True)`` for every pending tag
below the lowest delivery still unsettled, and a plain ``basic.ack`` for each pending tag
above it.

**Never an ack before its outcome is settled.** ``multiple=True`` acks *every* outstanding
delivery up to the tag, so the tag is chosen from what this module knows: every delivery of
the channel is registered (`delivered`) before any later one (aiormq starts the consumer
callbacks in delivery order), and leaves the registry only when it is settled (`ack`, or
`forget` once its reject is written). A multiple ack covers only tags below the
lowest one still registered, all of them settled: acked by an earlier frame (RabbitMQ skips
those), rejected, or pending in this very batch. Its own tag is pending, so it is still
unacked at the broker (RabbitMQ closes a channel on a multiple ack whose tag it does not
know). One flush at a time, frames in order: a later batch's multiple ack can never overtake
an earlier batch's plain one.

``await ack(tag)`` returns once the frames of its batch are written, as a single ack did; it
raises what the write raised (the channel closed meanwhile, say).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

__all__ = ["AckChannel", "ChannelAcks", "plan"]


class AckChannel(Protocol):
    """What `ChannelAcks` needs of a channel: aiormq's ``basic_ack``."""

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> Awaitable[None]:
        """Write one ``basic.ack`` frame."""
        ...


def plan(pending: Sequence[int], lowest_unsettled: int | None) -> list[tuple[int, bool]]:
    """The ``basic.ack`` frames that ack exactly the `pending` tags: ``(tag, multiple)``.

    `lowest_unsettled` is the lowest tag delivered and not settled (None: none is). Tags
    below it are acked by one frame (``multiple=True`` for two or more), the rest one by one.
    """
    tags = sorted(pending)
    if lowest_unsettled is None:
        covered = len(tags)
    else:
        covered = next((i for i, tag in enumerate(tags) if tag > lowest_unsettled), len(tags))
    frames: list[tuple[int, bool]] = []
    if covered:
        frames.append((tags[covered - 1], covered > 1))
    frames.extend((tag, False) for tag in tags[covered:])
    return frames


class ChannelAcks:
    """The unsettled deliveries of one consumer channel, and its acks, sent together."""

    def __init__(self, channel: AckChannel) -> None:
        self._channel = channel
        #: delivered and not settled, by tag (insertion order is tag order)
        self._unsettled: dict[int, object] = {}
        self._pending: list[int] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing: asyncio.Task[None] | None = None
        #: ``basic.ack`` frames written (tests and benchmarks read it)
        self.frames = 0
        #: called once, when the last unsettled delivery is settled (then cleared)
        self.on_empty: Callable[[], None] | None = None

    def delivered(self, tag: int, delivery: object) -> None:
        """Register a delivery as it arrives (before any later one)."""
        self._unsettled[tag] = delivery

    def forget(self, tag: int) -> None:
        """The delivery is settled another way: call once its ``basic.reject`` is written."""
        self._settled(tag)

    def _settled(self, tag: int) -> None:
        self._unsettled.pop(tag, None)
        if not self._unsettled and self.on_empty is not None:
            callback, self.on_empty = self.on_empty, None
            callback()

    def __len__(self) -> int:
        """How many deliveries are not settled yet."""
        return len(self._unsettled)

    def unsettled(self) -> list[object]:
        """The deliveries not settled yet, in delivery order."""
        return list(self._unsettled.values())

    def clear(self) -> None:
        """Forget every unsettled delivery (the channel is gone)."""
        self._unsettled.clear()

    async def ack(self, tag: int) -> None:
        """Ack `tag` in the next batch; return once that batch is written.

        Raises:
            Exception: what writing the batch raised (aiormq's, for the caller to translate).
        """
        self._settled(tag)
        self._pending.append(tag)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._flushing is None:
            # its first step runs in the next turn of the loop: after every ack of this one
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        try:
            while self._pending:
                pending, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                await self._write(pending, waiters)
        finally:
            self._flushing = None
            # asked for while this flush was cancelled: never written
            _resolve(self._waiters, ConnectionResetError("the acks were not written"))
            self._pending, self._waiters = [], []

    async def _write(self, pending: list[int], waiters: list[asyncio.Future[None]]) -> None:
        try:
            for tag, multiple in plan(pending, next(iter(self._unsettled), None)):
                await self._channel.basic_ack(tag, multiple=multiple)
                self.frames += 1
        except BaseException as exc:
            # aiormq fails the writes of a dying channel with CancelledError too: the waiters
            # get a ConnectionError, never a cancellation that is not theirs
            _resolve(
                waiters,
                exc
                if isinstance(exc, Exception)
                else ConnectionResetError(
                    f"the channel closed before the acks were written ({exc!r})"
                ),
            )
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        else:
            _resolve(waiters, None)


def _resolve(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():  # its acker was cancelled: the ack goes out all the same
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)
