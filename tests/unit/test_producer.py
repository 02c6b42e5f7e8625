"""The producer's retry loop, against transports that misbehave in ways the broker can make them."""

from __future__ import annotations

import itertools

import anyio
import pytest

from aqueue._client.producer import REFUSED_PAUSE_MAX, Producer
from aqueue._core.config import ProducerSettings, QueueSettings
from aqueue._core.topology import QueueSpec, Topology, TopologyNames
from aqueue._observability.hooks import Instruments
from aqueue._transport import OutgoingMessage
from aqueue._transport.memory import MemoryTransport
from aqueue.exceptions import (
    BrokerBlocked,
    ConnectionLost,
    PublishError,
    PublishNacked,
    PublishTimeout,
    Unroutable,
)


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


class ScriptedTransport(MemoryTransport):
    """Raises the errors of `script` on its first publishes, then publishes for real.

    Each call is recorded with the message and the timeout it was given.
    """

    def __init__(self, script: list[PublishError]) -> None:
        super().__init__()
        self.script = script
        self.calls: list[tuple[OutgoingMessage, float, float]] = []

    async def publish(self, message: OutgoingMessage, *, timeout: float) -> None:
        self.calls.append((message, timeout, anyio.current_time()))
        if self.script:
            raise self.script.pop(0)
        await super().publish(message, timeout=timeout)


def producer_on(
    transport: MemoryTransport, *, publish_deadline: float = 30.0, publish_timeout: float = 10.0
) -> Producer:
    settings = ProducerSettings(publish_timeout=publish_timeout, publish_deadline=publish_deadline)
    return Producer(transport, TopologyNames("t"), QueueSettings(), settings, Instruments())


def job_message() -> OutgoingMessage:
    return OutgoingMessage("", "t.q", b'{"args":[]}', "job-1", headers={"aqueue-task": "x"})


@pytest.mark.parametrize(
    "error", [PublishNacked("nack"), PublishTimeout("no confirm")], ids=["nack", "timeout"]
)
async def test_nacked_or_unconfirmed_publish_is_sent_again_until_confirmed(
    error: PublishError,
) -> None:
    """After a nack or a confirm timeout the same message is published again, after a pause."""
    transport = ScriptedTransport([error, error])
    await transport.connect(timeout=1)
    try:
        await transport.declare(Topology(queues=(QueueSpec("t.q"),)))
        message = job_message()
        await producer_on(transport).publish(message)
        assert await transport.message_count("t.q") == 1
    finally:
        await transport.aclose()
    assert [call[0] for call in transport.calls] == [message] * 3  # same id, same headers
    times = [call[2] for call in transport.calls]
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(times))


@pytest.mark.serial  # a 10 ms bound on the deadline: measured alone
async def test_a_publish_nacked_for_good_raises_within_its_deadline() -> None:
    """A publish nacked on every attempt raises PublishNacked by publish_deadline, not after."""
    transport = ScriptedTransport([PublishNacked(f"nack {i}") for i in range(1000)])
    await transport.connect(timeout=1)
    deadline = 1.0
    try:
        began = anyio.current_time()
        with anyio.fail_after(5), pytest.raises(PublishNacked):
            await producer_on(transport, publish_deadline=deadline, publish_timeout=10).publish(
                job_message()
            )
        elapsed = anyio.current_time() - began
    finally:
        await transport.aclose()
    assert deadline - REFUSED_PAUSE_MAX <= elapsed <= deadline
    assert len(transport.calls) >= 5  # retried, with pauses growing to REFUSED_PAUSE_MAX
    for _, timeout, at in transport.calls:  # no attempt may wait past the deadline
        assert at + timeout <= began + deadline + 0.01


@pytest.mark.parametrize(
    "error", [BrokerBlocked("blocked"), Unroutable("no route")], ids=["blocked", "unroutable"]
)
async def test_blocked_or_unroutable_publish_is_not_retried(error: PublishError) -> None:
    """A blocked connection or a returned message raises at once: retrying cannot help."""
    transport = ScriptedTransport([error])
    await transport.connect(timeout=1)
    try:
        with pytest.raises(type(error)):
            await producer_on(transport).publish(job_message())
    finally:
        await transport.aclose()
    assert len(transport.calls) == 1
