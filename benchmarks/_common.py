"""What both sides share: sizes, names, the broker topology and small measuring helpers."""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field

import aio_pika

from aqueue._core.config import QueueSettings
from aqueue._core.queues import queue_topology, work_queue_arguments
from aqueue._core.topology import TopologyNames

#: The logical queue every scenario uses (broker name ``<prefix>.bench`` on both sides).
QUEUE = "bench"
#: Unacked deliveries per consumer, and the worker's concurrency, on both sides.
PREFETCH = 200
#: Unconfirmed publishes in flight when pipelining: aqueue's default ``max_in_flight``.
WINDOW = 1000
#: Seconds each job of the IO-bound scenario sleeps.
SLEEP = 0.05
#: No scenario may take longer than this (seconds): a stuck run fails instead of hanging.
SCENARIO_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Sizes:
    """How many jobs each scenario uses."""

    enqueue_many: int = 20_000
    #: one confirm round trip per job (about 1,200/s here): 5,000 keep ``--repeat 5`` short
    enqueue_one: int = 5_000
    drain: int = 20_000
    io_bound: int = 2_000
    latency: int = 300
    web: int = 1_000
    warmup: int = 1_000
    #: jobs of the aqueue-only scenarios: plain drains and the chord's members
    workflow: int = 10_000


FULL = Sizes()
QUICK = Sizes(
    enqueue_many=2_000,
    enqueue_one=500,
    drain=2_000,
    io_bound=400,
    latency=50,
    web=100,
    warmup=200,
    workflow=1_000,
)


@dataclass(slots=True)
class Stopwatch:
    """Wall-clock and this process's CPU time since it was made."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)

    def rate(self, count: int) -> dict[str, float]:
        """Jobs per second, the client's CPU time per job in microseconds, and the seconds."""
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return {"rate": count / wall, "cpu": cpu / count * 1e6, "seconds": wall}


def unique_prefix(scenario: str, side: str) -> str:
    """A fresh name prefix: every scenario run gets queues and exchanges of its own."""
    return f"bench-{uuid.uuid4().hex[:8]}-{scenario}-{side}"


def names(prefix: str) -> TopologyNames:
    """aqueue's names for `prefix`; the raw side uses the same ones."""
    return TopologyNames(prefix)


def raw_queue_arguments(prefix: str) -> dict[str, str | int | bool]:
    """The arguments aqueue gives its quorum work queue, so the broker does the same work."""
    return dict(work_queue_arguments(names(prefix), QUEUE, QueueSettings("quorum")))


def job_body(index: int) -> bytes:
    """The body aqueue sends for ``noop(index)``; the raw side sends the same bytes."""
    return b'{"args":[%d],"kwargs":{}}' % index


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) of `samples`, interpolated between the closest ranks."""
    if len(samples) == 1:
        return samples[0]
    cuts = statistics.quantiles(samples, n=1000, method="inclusive")
    return cuts[round(fraction * 1000) - 1]


async def delete_topology(url: str, prefix: str) -> None:
    """Delete every queue and exchange a scenario may have declared under `prefix`."""
    topology = queue_topology(names(prefix), QUEUE, QueueSettings("quorum"))
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-admin"})
    async with connection:
        channel = await connection.channel()
        for queue in topology.queues:
            await channel.queue_delete(queue.name)
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange.name)


async def message_count(url: str, prefix: str) -> int:
    """Ready messages in the work queue of `prefix`."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-admin"})
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names(prefix).work_queue(QUEUE), passive=True)
        return queue.declaration_result.message_count or 0


async def broker_version(url: str) -> tuple[str, str]:
    """RabbitMQ's product and version, as the server announces them on connect."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-admin"})
    async with connection:
        transport = connection.transport
        if transport is None:
            raise RuntimeError("connected, yet aio-pika has no transport")
        properties = transport.connection.server_properties
        product, version = properties.get("product", "?"), properties.get("version", "?")
        return _text(product), _text(version)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
