"""Reading a queue without taking what is read: one full pass, in order.

AMQP 0-9-1 cannot browse a queue: a reader takes messages and gives them back, and where they
go back decides the order. Measured on RabbitMQ 3.10.8 (the dead-letters page has the numbers):

- closing the connection gives unacked messages back to the head of a classic queue in order,
  but a quorum queue scrambles more than about eight of them, and puts them behind messages
  given back earlier;
- ``reject(requeue=True)`` puts a message back where it was (classic), at the back (quorum
  without a delivery limit) or among the returned messages at the head (quorum with one);
  messages rejected one by one in the order taken keep that order, *but* a quorum queue's
  channel sends at most 32 settlements ahead of the queue and batches the rest, in no
  particular order.

So a pass takes every message the queue held when it began, then rejects the ones it still
holds in the order taken, `PUT_BACK_BATCH` at a time, waiting for the queue to have taken each
batch back before the next. The order of the queue is unchanged (a message that arrives
during the pass may end up in front of older ones); a reader that crashes gives its messages
back on its connection's close: nothing lost, but the order maybe changed. Each pass counts
one more delivery of every message (``x-delivery-count``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from aqueue._transport.base import Delivery, Transport
from aqueue.exceptions import AqueueError, ConnectionLost

__all__ = ["PUT_BACK_BATCH", "QueuePass", "queue_pass", "read_queue"]

#: Messages given back at a time: well under the 32 settlements a quorum queue's channel
#: keeps in flight before it batches them out of order.
PUT_BACK_BATCH = 16
#: Seconds to wait for one batch to be back in the queue before sending the next anyway.
PUT_BACK_BATCH_WAIT = 5.0

logger = logging.getLogger("aqueue.browse")


class QueuePass:
    """One pass over a queue on a transport of its own (see `queue_pass`)."""

    def __init__(self, transport: Transport, queue: str, total: int) -> None:
        self._transport = transport
        self._queue = queue
        #: How many messages were ready when the pass began: it never takes more.
        self.total = total
        self._taken = 0
        self._held: list[Delivery] = []

    @property
    def holding(self) -> int:
        """How many taken messages it holds (to give back when the pass ends)."""
        return len(self._held)

    async def take(self) -> Delivery | None:
        """The next message, held until the pass ends.

        None once `total` were taken or the queue is empty: a pass never sees the messages it
        gave back.
        """
        if self._taken >= self.total:
            return None
        delivery = await self._transport.get(self._queue)
        if delivery is None:
            return None
        self._taken += 1
        self._held.append(delivery)
        return delivery

    async def remove(self, delivery: Delivery) -> None:
        """Ack a taken message: it leaves the queue for good instead of going back.

        Raises:
            ConnectionLost: the connection is gone; the message goes back with the others.
        """
        await delivery.ack()
        self._held.remove(delivery)

    async def give_back(self) -> None:
        """Reject the held messages with requeue, in order, one batch at a time.

        Each batch must be back in the queue (its ready count grown by it) before the next is
        sent: a quorum queue's channel reorders settlements beyond 32 in flight.
        """
        held, self._held = self._held, []
        if not held:
            return
        try:
            base = await self._transport.message_count(self._queue)
            for start in range(0, len(held), PUT_BACK_BATCH):
                batch = held[start : start + PUT_BACK_BATCH]
                for delivery in batch:
                    await delivery.reject(requeue=True)
                await self._wait_for_count(base + start + len(batch))
        except ConnectionLost:
            # the connection holding them dropped: the broker took them all back
            return
        except AqueueError as exc:  # closing the connection gives back the rest
            logger.warning("could not give back messages of %s in order: %s", self._queue, exc)

    async def _wait_for_count(self, expected: int) -> None:
        with anyio.move_on_after(PUT_BACK_BATCH_WAIT):
            # no event tells when a rejected message is back in the queue: poll, briefly
            while await self._transport.message_count(self._queue) < expected:  # noqa: ASYNC110
                await anyio.sleep(0.002)


@asynccontextmanager
async def queue_pass(transport: Transport, queue: str) -> AsyncIterator[QueuePass]:
    """A pass over `queue` on `transport`, a connection used for nothing else.

    When the block ends, the messages still held go back in the order taken. After an error
    or a cancellation they are left for the caller's closing of `transport` to give back (to
    the head of the queue, as after a crash).

    Raises:
        QueueNotFound: the queue does not exist.
    """
    browsing = QueuePass(transport, queue, await transport.message_count(queue))
    yield browsing
    await browsing.give_back()


async def read_queue(transport: Transport, queue: str, visit: Callable[[Delivery], None]) -> None:
    """Show every message `queue` holds now to `visit`, oldest first; leave them in place."""
    async with queue_pass(transport, queue) as browsing:
        while (delivery := await browsing.take()) is not None:
            visit(delivery)
