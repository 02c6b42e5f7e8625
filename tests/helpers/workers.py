"""Running an in-process `Worker` in a test, and reading a broker's queues around it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import aio_pika
import anyio

from aqueue import Worker, WorkerStatistics
from aqueue._core.topology import QueueSettings, TopologyNames, delay_topology, queue_topology
from aqueue._transport import Delivery, Transport


@asynccontextmanager
async def running(worker: Worker, *, timeout: float = 20.0) -> AsyncIterator[Worker]:
    """Run `worker` in the background; stop it gracefully (and wait for it) on the way out."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(timeout):
            await worker.wait_started()
        try:
            yield worker
        finally:
            worker.stop()


async def wait_until(
    worker: Worker, condition: Callable[[WorkerStatistics], bool], *, timeout: float
) -> None:
    """Wait (at most `timeout` seconds) until `condition(worker.statistics())` holds."""
    try:
        with anyio.fail_after(timeout):
            await worker.wait_until(condition)
    except TimeoutError as exc:
        raise TimeoutError(f"after {timeout:g} s the worker is at {worker.statistics()}") from exc


async def drain(transport: Transport, queue: str) -> list[Delivery]:
    """Take (and ack) every ready message of a broker queue, in order."""
    taken: list[Delivery] = []
    while (delivery := await transport.get(queue)) is not None:
        await delivery.ack()
        taken.append(delivery)
    return taken


async def delete_topology(url: str, prefix: str, queues: Sequence[str] = ("default",)) -> None:
    """Delete everything aqueue declares under `prefix` for the logical `queues` (test cleanup).

    That is each queue's topology and the delay levels, as ``aqueue._core.topology`` describes them
    (deleting what was never declared is harmless). A name in `queues` that starts with
    ``prefix + "."`` is a broker queue of the test's own, deleted as is.
    """
    names = TopologyNames(prefix)
    settings = QueueSettings()
    topology = delay_topology(names, settings)
    extra: list[str] = []
    for queue in queues:
        if queue.startswith(f"{prefix}."):
            extra.append(queue)
        else:
            topology += queue_topology(names, queue, settings)
    connection = await aio_pika.connect(
        url, timeout=10, client_properties={"connection_name": f"{prefix}-cleanup"}
    )
    async with connection:
        channel = await connection.channel()
        for name in [*extra, *(spec.name for spec in topology.queues)]:
            await channel.queue_delete(name)
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange.name)
