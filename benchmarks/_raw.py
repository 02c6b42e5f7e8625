"""The floor: each scenario written directly on aio-pika, the idiomatic fast way.

Same broker, same quorum queue arguments, same direct exchange, same bodies and message ids,
same prefetch and in-flight window as the aqueue side; nothing else (no headers but the one the
latency scenario needs, no envelope, no middleware).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from benchmarks._common import (
    PREFETCH,
    QUEUE,
    SCENARIO_TIMEOUT,
    SLEEP,
    WINDOW,
    Stopwatch,
    delete_topology,
    job_body,
    message_count,
    names,
    percentile,
    raw_queue_arguments,
    unique_prefix,
)

Figures = dict[str, float]
OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Publisher:
    url: str
    prefix: str
    connection: AbstractRobustConnection
    exchange: AbstractExchange


async def _connect(url: str, role: str) -> AbstractRobustConnection:
    return await aio_pika.connect_robust(
        url, client_properties={"connection_name": f"bench-raw-{role}"}
    )


@asynccontextmanager
async def _publisher(url: str, scenario: str) -> AsyncIterator[_Publisher]:
    """A publishing connection and a fresh exchange + quorum queue, deleted afterwards."""
    prefix = unique_prefix(scenario, "raw")
    n = names(prefix)
    connection = await _connect(url, "publisher")
    try:
        async with connection:
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
            yield _Publisher(url, prefix, connection, exchange)
    finally:
        await delete_topology(url, prefix)


def _message(index: int, *, sent_ns: int | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        job_body(index),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=uuid.uuid4().hex,
        headers=None if sent_ns is None else {"sent-ns": sent_ns},
    )


async def _publish_pipelined(exchange: AbstractExchange, count: int) -> None:
    """Publish `count` messages with at most `WINDOW` unconfirmed at once."""
    window = asyncio.Semaphore(WINDOW)

    async def one(index: int) -> None:
        try:
            await exchange.publish(_message(index), routing_key=QUEUE, mandatory=True)
        finally:
            window.release()

    async with asyncio.TaskGroup() as tg:
        for index in range(count):
            await window.acquire()
            tg.create_task(one(index))


async def _check_count(publisher: _Publisher, expected: int) -> None:
    found = await message_count(publisher.url, publisher.prefix)
    if found != expected:
        print(f"  !! raw: {found} messages in the queue, expected {expected}")


async def enqueue_many(url: str, count: int) -> Figures:
    """Pipelined confirmed publishes, `WINDOW` in flight."""
    async with _publisher(url, "many") as publisher:
        watch = Stopwatch()
        await _publish_pipelined(publisher.exchange, count)
        figures = watch.rate(count)
        await _check_count(publisher, count)
    return figures


async def enqueue_one(url: str, count: int) -> Figures:
    """Each confirmed publish awaited before the next."""
    async with _publisher(url, "one") as publisher:
        watch = Stopwatch()
        for index in range(count):
            await publisher.exchange.publish(_message(index), routing_key=QUEUE, mandatory=True)
        figures = watch.rate(count)
        await _check_count(publisher, count)
    return figures


@asynccontextmanager
async def _consuming(url: str, prefix: str, on_message: OnMessage) -> AsyncIterator[None]:
    """A consuming connection of its own, subscribed with manual acks and `PREFETCH`."""
    async with await _connect(url, "consumer") as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(names(prefix).work_queue(QUEUE), ensure=False)
        await queue.consume(on_message, no_ack=False)  # returns on consume-ok
        yield


async def _drain(url: str, count: int, scenario: str, sleep: float) -> Figures:
    """Pre-fill `count` messages, then time consumer subscribed → last ack."""
    async with _publisher(url, scenario) as publisher:
        await _publish_pipelined(publisher.exchange, count)
        acked = 0
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acked
            if sleep:
                await asyncio.sleep(sleep)
            await message.ack()
            acked += 1
            if acked == count:
                done.set()

        async with _consuming(url, publisher.prefix, on_message):
            watch = Stopwatch()
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                await done.wait()
            figures = watch.rate(count)
    return figures


async def drain(url: str, count: int) -> Figures:
    """No-op messages: consume and ack."""
    return await _drain(url, count, "drain", 0.0)


async def io_bound(url: str, count: int) -> Figures:
    """Each message handled in its own task (aiormq spawns one) that sleeps, then acks."""
    return await _drain(url, count, "io", SLEEP)


async def latency(url: str, count: int) -> Figures:
    """Publish one at a time (confirmed) to an idle consumer; publish time → handler start."""
    async with _publisher(url, "latency") as publisher:
        samples: list[float] = []
        started = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            now = time.perf_counter_ns()
            sent = message.headers["sent-ns"]
            if not isinstance(sent, int):
                raise TypeError(f"bad sent-ns header: {sent!r}")
            samples.append((now - sent) / 1e6)
            await message.ack()
            started.set()

        async with (
            _consuming(url, publisher.prefix, on_message),
            asyncio.timeout(SCENARIO_TIMEOUT),
        ):
            for index in range(count):
                started.clear()
                message = _message(index, sent_ns=time.perf_counter_ns())
                await publisher.exchange.publish(message, routing_key=QUEUE, mandatory=True)
                await started.wait()  # the consumer is idle again before the next one
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99)}
