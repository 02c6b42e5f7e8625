"""The worker's heartbeat: a small JSON notice every few seconds on the control exchange.

Best effort by design: a heartbeat is a notice (`Transport.notify`: transient, unconfirmed,
dropped when no reader listens), bounded by a short timeout, and any failure is logged at
debug. Nothing here can block or fail the worker. The payload is `aqueue._core.heartbeats`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Mapping

import anyio

from aqueue._client.fair import ready_info
from aqueue._core.heartbeats import (
    Heartbeat,
    QueueFigures,
    control_exchange,
    rate,
)
from aqueue._core.topology import ExchangeSpec, Topology, TopologyNames
from aqueue._serialization import dumps
from aqueue._transport import Transport
from aqueue.exceptions import AqueueError

logger = logging.getLogger("aqueue.worker")

#: Bound on one heartbeat (written, not confirmed) and on one passive declare for `ready`.
SEND_TIMEOUT = 1.0


def control_topology(names: TopologyNames) -> Topology:
    """The control exchange: durable, topic (heartbeats are ``heartbeat.{worker_id}``)."""
    return Topology(exchanges=(ExchangeSpec(control_exchange(names.prefix), "topic"),))


class HeartbeatSender:
    """Publishes a worker's heartbeats; `run` until cancelled, then `send_stopping`.

    Args:
        transport: the connection to publish on (the worker's publishing connection).
        names: the app's broker names (the control exchange, the work queues).
        concurrency: jobs run at once per queue.
        interval: seconds between heartbeats.
        figures: the worker's per-queue figures now; the sender adds the rates over its last
            interval and, where the figures have none, ``ready`` by a passive declare.
        counters: the worker's counters now (`Worker.statistics()` as a mapping).
    """

    def __init__(
        self,
        transport: Transport,
        names: TopologyNames,
        *,
        concurrency: int,
        interval: float,
        figures: Callable[[], Mapping[str, QueueFigures]],
        counters: Callable[[], Mapping[str, int]],
        fair: Collection[str] = (),
    ) -> None:
        self._transport, self._names = transport, names
        self._fair = fair  # queues whose jobs wait in fair-share shards too
        self._concurrency, self.interval = concurrency, interval
        self._figures, self._counters = figures, counters
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self._exchange = control_exchange(names.prefix)
        # per queue: (monotonic time, received, settled) at the previous heartbeat
        self._previous: dict[str, tuple[float, int, int]] = {}
        self._declared = False

    async def run(self) -> None:
        """Send a heartbeat at once, then every `interval` seconds, until cancelled."""
        while True:
            await self.send()
            await anyio.sleep(self.interval)

    async def send_stopping(self) -> None:
        """The last heartbeat: ``stopping: true``, so readers drop this worker at once."""
        with anyio.CancelScope(shield=True):
            await self.send(stopping=True)

    async def send(self, *, stopping: bool = False) -> None:
        """Publish one heartbeat; a failure is logged at debug, never raised."""
        try:
            with anyio.fail_after(SEND_TIMEOUT * 3):
                if not self._declared:
                    await self._transport.declare(control_topology(self._names))
                    self._declared = True
                beat = await self.heartbeat(stopping=stopping)
                await self._transport.notify(
                    self._exchange, beat.routing_key, dumps(beat.to_payload()), timeout=SEND_TIMEOUT
                )
        except (AqueueError, TimeoutError) as exc:
            logger.debug("heartbeat not sent: %s", exc)

    async def heartbeat(self, *, stopping: bool = False) -> Heartbeat:
        """The heartbeat as of now (with the rates since the previous one)."""
        now = time.monotonic()
        queues = {}
        for name, figures in self._figures().items():
            previous = self._previous.get(name)
            self._previous[name] = (now, figures.received, figures.settled)
            if previous is not None and figures.received_per_s is None:
                span = now - previous[0]
                figures = dataclasses.replace(
                    figures,
                    received_per_s=rate(previous[1], figures.received, span),
                    settled_per_s=rate(previous[2], figures.settled, span),
                )
            if figures.ready is None:
                figures = dataclasses.replace(figures, ready=await self._ready(name))
            queues[name] = figures
        return Heartbeat(
            worker_id=self.worker_id,
            host=self.host,
            pid=self.pid,
            prefix=self._names.prefix,
            concurrency=self._concurrency,
            started_at=self.started_at,
            sent_at=time.time(),
            interval=self.interval,
            queues=queues,
            counters=dict(self._counters()),
            stopping=stopping,
        )

    async def _ready(self, queue: str) -> int | None:
        try:
            with anyio.fail_after(SEND_TIMEOUT):
                info = await ready_info(
                    self._transport, self._names, queue, fair=queue in self._fair
                )
        except (AqueueError, TimeoutError):
            return None
        return info.ready
