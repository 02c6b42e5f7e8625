"""The quarantine: jobs that came back unacked run one at a time, with nothing else held.

A job that kills its worker (a segfault, ``os._exit``, the OOM killer) takes every delivery the
worker held with it: they all come back unacked, and a quorum queue counts a delivery against
each of them. Counted that way, a crash loop dead-letters innocent neighbours. So the job
runner never runs a job that came back among others: it sends a copy to the queue's
quarantine queue (``{prefix}.{queue}.quarantine``) and acks the original. This module is the
other half: it watches the quarantine queues and, when one holds jobs, it pauses the worker's
consumers, waits until the worker holds nothing, and runs the quarantined jobs one by one,
each taken with ``basic.get``. A job that crashes the worker now comes back alone, so each
crash counts against the job that caused it only; past the crash limit it is dead-lettered
with reason ``crashed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import anyio

from aqueue._client.session import Session
from aqueue._transport import Delivery, Transport
from aqueue.exceptions import TransportError

logger = logging.getLogger("aqueue.worker")

#: Seconds between looks at the quarantine queues (one passive declare per queue); a job
#: this worker quarantined itself is looked at at once.
CHECK_INTERVAL = 2.0


class QuarantineHost(Protocol):
    """What the quarantine needs from its worker."""

    async def pause(self) -> None:
        """Stop every consumer: no new deliveries."""

    async def resume(self) -> None:
        """Start the consumers again."""

    async def wait_idle(self) -> None:
        """Return once the worker holds no delivery (none waiting, none running)."""

    async def handle(self, delivery: Delivery, queue: str) -> None:
        """Run and settle one delivery of the logical `queue`."""


class Quarantine:
    """Runs the quarantined jobs of `queues`, alone, whenever there are some."""

    def __init__(
        self, session: Session, transport: Transport, queues: Sequence[str], host: QuarantineHost
    ) -> None:
        self._session = session
        self._transport = transport
        self._queues = tuple(queues)
        self._host = host
        self._nudged = anyio.Event()

    def nudge(self) -> None:
        """Look at the quarantine queues now (this worker just quarantined a job)."""
        self._nudged.set()

    async def run(self) -> None:
        """Watch and drain the quarantine queues until cancelled."""
        while True:
            with anyio.move_on_after(CHECK_INTERVAL):
                await self._nudged.wait()
            self._nudged = anyio.Event()
            waiting = await self._waiting()
            if waiting:
                await self._drain(waiting)

    async def _waiting(self) -> list[str]:
        names = self._session.names
        waiting = []
        for queue in self._queues:
            try:
                count = await self._session.transport.message_count(names.quarantine_queue(queue))
            except TransportError as exc:  # a reconnect is under way: look again later
                logger.debug("could not look at the quarantine of %s: %s", queue, exc)
                continue
            if count:
                waiting.append(queue)
        return waiting

    async def _drain(self, queues: Sequence[str]) -> None:
        logger.info("quarantine: pausing consumers to run jobs of %s alone", ", ".join(queues))
        await self._host.pause()
        try:
            await self._host.wait_idle()
            ran = 0
            for queue in queues:
                broker_queue = self._session.names.quarantine_queue(queue)
                while (delivery := await self._transport.get(broker_queue)) is not None:
                    await self._host.handle(delivery, queue)
                    ran += 1
            logger.info("quarantine: ran %d job(s) alone; resuming consumers", ran)
        except TransportError as exc:
            logger.warning("quarantine interrupted (%s); resuming consumers", exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._host.resume()
