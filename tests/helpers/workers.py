"""Waiting on an in-process `Worker` in a test, and reading a broker's queues around it.

A test runs its worker with `aqueue.testing.running_worker` and waits on it with `wait_until`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio

from aqueue import Worker, WorkerStatistics
from aqueue._core.config import QueueSettings
from aqueue._core.delays import delay_topology
from aqueue._core.queues import queue_topology
from aqueue._core.topology import TopologyNames
from aqueue._transport import Delivery, Transport

#: Bound on a wait for the worker: generous for a loaded CI machine, never a sleep.
WAIT = 10.0


async def wait_until(
    worker: Worker, condition: Callable[[WorkerStatistics], bool], *, timeout: float = WAIT
) -> None:
    """Wait (at most `timeout` seconds) until `condition(worker.statistics())` holds.

    Raises:
        TimeoutError: it did not hold in time; the message shows the worker's statistics.
    """
    try:
        with anyio.fail_after(timeout):
            await worker.wait_until(condition)
    except TimeoutError as exc:
        raise TimeoutError(f"after {timeout:g} s the worker is at {worker.statistics()}") from exc


async def drain(transport: Transport, queue: str, *, ack: bool = True) -> list[Delivery]:
    """Take every ready message of a broker queue, in order; ack each unless ``ack=False``."""
    taken: list[Delivery] = []
    while (delivery := await transport.get(queue)) is not None:
        if ack:
            await delivery.ack()
        taken.append(delivery)
    return taken


async def delete_topology(url: str, prefix: str, queues: Sequence[str] = ("default",)) -> None:
    """Delete everything aqueue declares under `prefix` for the logical `queues` (test cleanup).

    That is each queue's topology and the delay levels, as ``aqueue._core.queues`` and
    ``aqueue._core.delays`` describe them (deleting what was never declared is harmless). A
    name in `queues` that starts with ``prefix + "."`` is a broker queue of the test's own,
    deleted as is.
    """
    import aio_pika  # integration tests only

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
