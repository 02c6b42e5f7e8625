"""Test your tasks without RabbitMQ: an in-memory broker with RabbitMQ's semantics.

`MemoryBroker` is one RabbitMQ virtual host held in memory; `MemoryTransport` is one connection
to it. Give every part of your application under test a transport on the *same* broker, as
they would share a vhost in production::

    from aqueue._testing import MemoryBroker, MemoryTransport

    broker = MemoryBroker()
    producer = MemoryTransport(broker, connection_name="web")
    worker = MemoryTransport(broker, connection_name="worker")

The fake is faithful, not forgiving: it passes the same conformance suite as the AMQP transport.
Publishing is confirmed and mandatory (`Unroutable`, `PublishNacked` for a full queue with
``x-overflow: reject-publish``); consumers get at most ``prefetch`` unsettled deliveries,
round-robin, through a callback run on the event loop; a rejected message is requeued (marked
redelivered; counted in ``x-delivery-count`` by quorum queues, and dead-lettered past
``x-delivery-limit``) or dead-lettered with RabbitMQ's ``x-death`` headers; ``x-message-ttl``
expires messages at the head of their queue, on real timers, so broker-side delays really
happen while the event loop runs. A delivery settles once, and only on the connection that
delivered it.

What a real broker makes hard to test is one call away:

- ``transport.simulate_connection_loss(reconnect_after=0.0)`` drops the connection as a
  network failure would: unsettled deliveries are requeued and void, operations raise
  `ConnectionLost`, and after ``reconnect_after`` seconds the transport re-declares its
  topology and resumes its consumers (``None``: stay down until ``simulate_reconnect()``).
  ``broker.drop_connections()`` does that to every connection at once.
- ``MemoryBroker(clock=...)`` takes a monotonic clock for TTLs: advance a fake clock past an
  hour-long delay, call ``broker.run_timers()``, and the message has moved.

Everything runs on the event loop of the code that uses it; there are no threads, and nothing
to start or stop besides ``connect()`` and ``aclose()`` of each transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from aqueue._client.queue import TaskQueue
from aqueue._core.config import WorkerSettings
from aqueue._transport.memory import MemoryBroker, MemoryTransport
from aqueue._worker.worker import Worker

__all__ = ["MemoryBroker", "MemoryTransport", "running_worker"]


@asynccontextmanager
async def running_worker(
    queue: TaskQueue, settings: WorkerSettings | None = None, *, start_timeout: float = 10.0
) -> AsyncIterator[Worker]:
    """Run a `Worker` for `queue` in the background for the ``async with`` block.

    The worker consumes before the block starts and is stopped gracefully when it ends; wait
    for what you expect with ``await worker.wait_until(lambda stats: ...)`` inside the block::

        async with queue, running_worker(queue) as worker:
            await queue.enqueue(send_welcome, 42)
            with anyio.fail_after(5):
                await worker.wait_until(lambda stats: stats.succeeded == 1)

    Raises:
        TimeoutError: the worker did not start consuming within `start_timeout` seconds.
    """
    worker = Worker(queue, settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(start_timeout):
            await worker.wait_started()
        try:
            yield worker
        finally:
            worker.stop()
