"""One enqueue from a FastAPI handler on a warm connection: p50 and p99, aqueue and raw.

The app runs in-process behind httpx's ASGI transport (no server, no socket for HTTP), so
the figure is the handler's path: FastAPI routing, the enqueue (or raw publish) and its
confirm, the response. The connection is opened once, before the clock, as in a web app's
lifespan; `WARM_UP` requests run first, untimed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import httpx
from fastapi import FastAPI

from aqueue import TaskQueue
from benchmarks._common import (
    QUEUE,
    delete_topology,
    job_body,
    names,
    percentile,
    raw_queue_arguments,
    unique_prefix,
)

Figures = dict[str, float]
#: Untimed requests before the measured ones.
WARM_UP = 50


def _app(enqueue: Callable[[int], Awaitable[str]]) -> FastAPI:
    app = FastAPI()

    @app.post("/jobs/{index}")
    async def create(index: int) -> dict[str, str]:
        return {"id": await enqueue(index)}

    return app


async def _timed(app: FastAPI, count: int) -> Figures:
    transport = httpx.ASGITransport(app=app)
    samples: list[float] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for index in range(WARM_UP + count):
            began = time.perf_counter()
            response = await client.post(f"/jobs/{index}")
            elapsed = (time.perf_counter() - began) * 1000
            response.raise_for_status()
            if index >= WARM_UP:
                samples.append(elapsed)
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99)}


async def raw(url: str, count: int) -> Figures:
    """The handler publishes with aio-pika (confirmed, mandatory, persistent)."""
    prefix = unique_prefix("web", "raw")
    n = names(prefix)
    try:
        async with await aio_pika.connect_robust(url) as connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.declare_exchange(
                n.exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            await channel.declare_exchange(
                n.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            queue = await channel.declare_queue(
                n.work_queue(QUEUE), durable=True, arguments=raw_queue_arguments(prefix)
            )
            await queue.bind(exchange, routing_key=QUEUE)

            async def enqueue(index: int) -> str:
                message_id = uuid.uuid4().hex
                message = aio_pika.Message(
                    job_body(index),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message_id,
                )
                await exchange.publish(message, routing_key=QUEUE, mandatory=True)
                return message_id

            return await _timed(_app(enqueue), count)
    finally:
        await delete_topology(url, prefix)


async def aqueue(url: str, count: int) -> Figures:
    """The handler does ``await queue.enqueue(noop, index)``."""
    prefix = unique_prefix("web", "aqueue")
    queue = TaskQueue(url, prefix=prefix, name="bench-aqueue")

    @queue.task(queue=QUEUE, name="noop")
    async def noop(index: int) -> None:
        return None

    async def enqueue(index: int) -> str:
        return (await queue.enqueue(noop, index)).job_id

    try:
        async with queue:
            return await _timed(_app(enqueue), count)
    finally:
        await delete_topology(url, prefix)
