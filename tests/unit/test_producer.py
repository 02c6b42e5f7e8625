"""The producer's retry loop, against transports that misbehave in ways the broker can make them."""

from __future__ import annotations

import anyio
import pytest

from aqueue._client.producer import Producer
from aqueue._core.config import ProducerSettings, QueueSettings
from aqueue._core.topology import TopologyNames
from aqueue._observability.hooks import Instruments
from aqueue._transport import OutgoingMessage
from aqueue._transport.memory import MemoryTransport
from aqueue.exceptions import ConnectionLost


class StaleTransport(MemoryTransport):
    """Says it is connected, yet every publish raises ConnectionLost without yielding.

    The AMQP transport does this between a broker-side close and its close callback: the
    publishing channel is already closed, the "connected" flag not yet cleared.
    """

    publishes = 0

    async def publish(self, message: OutgoingMessage, *, timeout: float) -> None:
        self.publishes += 1
        raise ConnectionLost("the publishing channel is closed")


async def test_retry_loop_yields_and_keeps_its_deadline() -> None:
    """A publish that keeps losing its connection raises at publish_deadline; the loop yields."""
    transport = StaleTransport()
    await transport.connect(timeout=1)
    producer = Producer(
        transport,
        TopologyNames("t"),
        QueueSettings(),
        ProducerSettings(publish_deadline=0.5),
        Instruments(),
    )
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            began = anyio.current_time()
            with anyio.fail_after(5), pytest.raises(ConnectionLost, match="publish_deadline"):
                await producer.publish(OutgoingMessage("t", "default", b"{}", "job-1"))
            elapsed = anyio.current_time() - began
            tg.cancel_scope.cancel()
    finally:
        await transport.aclose()
    assert 0.5 <= elapsed < 1.5
    assert ticks >= 10  # the event loop ran other tasks meanwhile
    assert transport.publishes < 20  # retried with a pause, not in a tight loop
