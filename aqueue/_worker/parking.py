"""The parking: rate-limited jobs wait here for the last seconds before their reserved start.

A job over its rate limit holds a reserved start (see `aqueue._worker.flow`). The broker's
delay levels run late when the broker is busy (each hop is a dead-lettering on TTL expiry:
up to two seconds late was measured on a loaded 2-core machine, most of all while a flood of
jobs is being deferred), and a start moved by the broker's load bunches with the next ones.
So the broker carries the wait except its last `RATE_LANDING_LEAD` seconds:

- a job whose reserved start is further off is deferred through the delay levels, due back
  `RATE_LANDING_LEAD` seconds early, and waits here from its arrival until its start;
- a job whose reserved start is closer than that waits here at once, the delivery itself
  (`ReservedDelivery`), with no copy and no round trip through the broker.

A parked job is unacked and in no runner; at its start it goes to the front of the intake,
like any deferred job whose time has come. A copy that arrives late goes there at once.
A worker holds at most its consumers' prefetch, each for at most the lead: far inside
RabbitMQ's ``consumer_timeout``. A worker that stops hands parked jobs back like every
delivery it did not start (fresh copies that keep their reservation); one that dies leaves
them unacked and the broker delivers them again.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Mapping

import anyio

from aqueue._core.types import HeaderValue
from aqueue._core.wire import HEADER_RATE_RESERVED, deferral_headers, due_at_ms
from aqueue._transport import Delivery

#: A start closer than this is not parked: the event loop's timers cannot do better.
PARK_AT_LEAST = 0.002


class Parking:
    """Holds deliveries until their due time, then hands each to `release`.

    Args:
        release: what takes a delivery whose time has come (the intake's ``put_first``).
        clock: wall-clock seconds (``time.time``); the due times are Unix milliseconds.
    """

    def __init__(
        self, release: Callable[[Delivery], None], clock: Callable[[], float] = time.time
    ) -> None:
        self._release = release
        self._clock = clock
        self._parked: list[tuple[int, int, Delivery]] = []
        self._order = itertools.count()  # ties in due time keep their arrival order
        self._changed = anyio.Event()
        self._closed = False

    def put(self, delivery: Delivery) -> None:
        """Park a rate-reserved delivery due later; release any other at once (callback)."""
        due = due_at_ms(delivery.headers)
        if (
            self._closed
            or HEADER_RATE_RESERVED not in delivery.headers
            or due is None
            or due / 1000 - self._clock() < PARK_AT_LEAST
        ):
            self._release(delivery)
            return
        first = self._parked[0][0] if self._parked else None
        heapq.heappush(self._parked, (due, next(self._order), delivery))
        if first is None or due < first:
            self._changed.set()

    def sorter(self, otherwise: Callable[[Delivery], None]) -> Callable[[Delivery], None]:
        """A work queue's delivery callback: reserved jobs park here, the rest go `otherwise`.

        A stopping worker hands its parked jobs back to the work queue, reservation and all:
        the worker that receives one keeps it here until its start, not a moment before.
        """

        def sort(delivery: Delivery) -> None:
            if HEADER_RATE_RESERVED in delivery.headers:
                self.put(delivery)
            else:
                otherwise(delivery)

        return sort

    def parked(self) -> int:
        """Deliveries waiting for their time."""
        return len(self._parked)

    async def run(self) -> None:
        """Release each parked delivery at its due time, until cancelled."""
        while True:
            self._changed = anyio.Event()
            now = self._clock()
            while self._parked and self._parked[0][0] / 1000 - now < PARK_AT_LEAST:
                self._release(heapq.heappop(self._parked)[2])
            if not self._parked:
                await self._changed.wait()
                continue
            with anyio.move_on_after(self._parked[0][0] / 1000 - now):
                await self._changed.wait()

    def close(self) -> None:
        """Release every parked delivery now, and every later one on arrival (stopping).

        The intake they go to is closed: they stay there unstarted, and are handed back.
        """
        self._closed = True
        while self._parked:
            self._release(heapq.heappop(self._parked)[2])


class ReservedDelivery(Delivery):
    """A delivery whose start is reserved for `eta_ms`: it waits in the parking, not run yet.

    Its headers say so (the reservation, its due time, the deferral counted), so when the
    parking releases it the worker runs it without asking the limiter again, and a worker that
    stops hands it back with them. Settling it settles the delivery it wraps.
    """

    def __init__(self, inner: Delivery, *, eta_ms: int) -> None:
        self._inner = inner
        self.body = inner.body
        headers: Mapping[str, HeaderValue] = deferral_headers(
            inner.headers, reason="rate", eta_ms=eta_ms
        )
        # the broker's own headers too (the delivery count tells a redelivery)
        self.headers = {**inner.headers, **headers}
        self.message_id = inner.message_id
        self.content_type = inner.content_type
        self.routing_key = inner.routing_key
        self.exchange = inner.exchange
        self.queue = inner.queue
        self.redelivered = inner.redelivered
        self.undecodable = inner.undecodable

    def __repr__(self) -> str:
        return f"<ReservedDelivery {self._inner!r}>"

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        self._inner.on_lost(callback)

    async def ack(self) -> None:
        await self._inner.ack()

    async def reject(self, *, requeue: bool) -> None:
        await self._inner.reject(requeue=requeue)
