"""Fair-share shards behave alike on the in-memory and the AMQP transport.

A fair-share queue has `FAIR_SHARDS` sub-queues declared like its work queue; a job routed to
``{queue}.fair.{n}`` reaches shard n and nothing else, straight or through the delay levels,
and a shard's dead letters go to the logical queue's dead-letter queue.
"""

from __future__ import annotations

import time

from aqueue._core.config import QueueSettings
from aqueue._core.delays import delay_topology, job_route
from aqueue._core.flow import FAIR_SHARDS, fair_destination, fair_queue
from aqueue._core.queues import fair_topology, queue_topology, work_queue_arguments
from aqueue._core.topology import TopologyNames
from aqueue._core.wire import Envelope
from aqueue._transport.base import OutgoingMessage
from tests.conformance.helpers import WAIT, Inbox, TransportFactory

QUEUE = "tenants"
SHARD = 3


def shard_job(names: TopologyNames, job_id: str, delay_ms: int) -> OutgoingMessage:
    """A job for shard `SHARD` of `QUEUE`, through the delay levels if `delay_ms` > 0."""
    exchange, routing_key = job_route(names, fair_destination(QUEUE, SHARD), delay_ms)
    headers = Envelope(job_id=job_id, task="tasks.note", queue=QUEUE).headers()
    return OutgoingMessage(exchange, routing_key, b'{"args": [], "kwargs": {}}', job_id, headers)


def test_shards_are_declared_like_the_work_queue() -> None:
    """16 shards, each with the work queue's arguments (quorum, delivery limit, DLX)."""
    names, settings = TopologyNames("p"), QueueSettings()
    topology = fair_topology(names, QUEUE, settings)
    assert [q.name for q in topology.queues] == [f"p.{QUEUE}.fair.{n}" for n in range(FAIR_SHARDS)]
    expected = work_queue_arguments(names, QUEUE, settings)
    assert expected["x-queue-type"] == "quorum"
    assert all(dict(q.arguments) == expected for q in topology.queues)


async def test_a_job_for_a_shard_reaches_that_shard_only_and_dead_letters_to_the_dlq(
    transport_factory: TransportFactory, names: TopologyNames
) -> None:
    """Straight or delayed, a job routed to shard 3 arrives there, not in the work queue nor in
    another shard; rejected, it lands in the logical queue's dead-letter queue."""
    settings = QueueSettings()
    transport = await transport_factory()
    for topology in (
        delay_topology(names, settings),
        queue_topology(names, QUEUE, settings),
        fair_topology(names, QUEUE, settings),
    ):
        await transport_factory.declare(transport, topology)
    shard, work, dead = Inbox(), Inbox(), Inbox()
    await transport.consume(fair_queue(names, QUEUE, SHARD), prefetch=10, on_delivery=shard)
    await transport.consume(names.work_queue(QUEUE), prefetch=10, on_delivery=work)
    await transport.consume(names.dead_letter_queue(QUEUE), prefetch=10, on_delivery=dead)

    sent = time.monotonic()
    await transport.publish(shard_job(names, "straight", 0), timeout=5)
    await transport.publish(shard_job(names, "delayed", 150), timeout=5)
    arrived = await shard.take(2, timeout=WAIT)
    assert [d.message_id for d in arrived] == ["straight", "delayed"]
    assert time.monotonic() - sent >= 0.15  # the delayed one waited its delay first
    for other in range(FAIR_SHARDS):
        if other != SHARD:
            info = await transport.queue_info(fair_queue(names, QUEUE, other))
            assert info.ready == 0
    assert (await transport.queue_info(names.work_queue(QUEUE))).ready == 0
    assert not work.deliveries

    await arrived[0].reject(requeue=False)
    await arrived[1].ack()
    (dead_letter,) = await dead.take(1, timeout=WAIT)
    assert dead_letter.message_id == "straight"
    await dead_letter.ack()
