"""Messages whose AMQP properties the client cannot decode, sent to a real worker.

Before the frame guard (``aqueue._transport.amqp_frames``), each of these shapes closed the
worker's consuming connection on every delivery: the broker delivered the message again after
the reconnect, and it closed the new connection too. On a classic queue that looped for ever
and no healthy job ran; on a quorum queue it stopped after the delivery limit, with the
healthy jobs held at the same time dead-lettered as ``crashed``. Here each one is published
raw (aio-pika refuses to encode them) among 20 healthy jobs, and the worker must run all 20
once, keep its connection, and dead-letter the bad one once with ``undecodable-properties``.
"""

from __future__ import annotations

import logging
import struct
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import anyio
import pytest

from aqueue import DeadLetter, TaskQueue, WorkerSettings
from aqueue._core.topology import QueueType, TopologyNames
from aqueue.testing import running_worker
from tests.helpers import raw_amqp as raw
from tests.helpers.worker_process import ROOT, aqueue_command, subprocess_env
from tests.helpers.workers import delete_topology, wait_until

pytestmark = pytest.mark.integration

HEALTHY = 20
TASK = b"noop"
BODY = b'{"args": [-1], "kwargs": {}}'
#: Log lines that mean a connection died or came back (aiormq's reader, aqueue's transport).
CONNECTION_EVENTS = ("reader exited abnormally", "lost its connection", "reconnected")


@dataclass(frozen=True)
class Shape:
    """One kind of undecodable message: its property bytes, routing key and salvaged id."""

    property_bytes: bytes
    job_id: str
    problem: str  # in the dead letter's exception message
    routing_key: bytes | None = None  # through a fanout exchange, as it is; None: routed


def _properties(message_id: bytes = b"poison-1", **fields: bytes) -> bytes:
    headers = fields.pop("headers", raw.table([(b"aqueue-task", b"S" + raw.long_string(TASK))]))
    return raw.properties(
        content_type=raw.short_string(b"application/json"),
        headers=headers,
        delivery_mode=b"\x02",
        message_id=raw.short_string(message_id),
        **fields,
    )


def _headers(*extra: tuple[bytes, bytes]) -> bytes:
    return raw.table([(b"aqueue-task", b"S" + raw.long_string(TASK)), *extra])


SHAPES = {
    "header-key-not-utf8": Shape(
        _properties(headers=_headers((b"bad\xff\xfe", b"S" + raw.long_string(b"v")))),
        "poison-1",
        "a key that is not UTF-8",
    ),
    "message-id-not-utf8": Shape(
        _properties(message_id=b"poison-\xff\xfe"), "poison-\\xff\\xfe", "message_id"
    ),
    "timestamp-2**62": Shape(
        _properties(timestamp=struct.pack(">Q", 2**62)), "poison-1", "timestamp"
    ),
    "headers-600-deep": Shape(
        _properties(headers=_headers((b"deep", b"F" + raw.nested_table(600)))),
        "poison-1",
        "nested deeper than",
    ),
    # RabbitMQ takes a routing key that is not UTF-8; a fanout exchange delivers it as it is
    "routing-key-not-utf8": Shape(_properties(), "poison-1", "routing_key", b"rk-\xff\xfe"),
}


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    yield None
    await delete_topology(amqp_url, prefix)
    connection = await aio_pika.connect(
        amqp_url, timeout=10, client_properties={"connection_name": f"{prefix}-cleanup"}
    )
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(TopologyNames(prefix).delay_delivery_exchange)
        await channel.exchange_delete(f"{prefix}.fanout")


async def _publish_poison(url: str, prefix: str, shape: Shape) -> None:
    """Publish the bad message into the work queue of ``default`` (which must exist)."""
    exchange, routing_key = prefix, b"default"  # aqueue's direct exchange, by queue name
    if shape.routing_key is not None:
        exchange, routing_key = f"{prefix}.fanout", shape.routing_key
        connection = await aio_pika.connect(
            url, timeout=10, client_properties={"connection_name": f"{prefix}-fanout"}
        )
        async with connection:
            channel = await connection.channel()
            fanout = await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT)
            work = await channel.get_queue(TopologyNames(prefix).work_queue("default"))
            await work.bind(fanout)

    def publish() -> None:
        raw.publish_raw(
            url,
            exchange=exchange,
            routing_key=routing_key,
            property_bytes=shape.property_bytes,
            body=BODY,
        )

    await anyio.to_thread.run_sync(publish)


async def _run_with_poison(
    url: str, prefix: str, queue_type: QueueType, shape: Shape
) -> tuple[Counter[int], list[DeadLetter]]:
    """A worker runs the bad message first and 20 healthy jobs; what ran, what died."""
    queue = TaskQueue(url, prefix=prefix, queue_type=queue_type, name=f"{prefix}-test")
    ran: Counter[int] = Counter()

    @queue.task(name=TASK.decode())
    async def noop(index: int) -> None:
        ran[index] += 1

    async with queue:
        # prefetch 5: the bad message is held with healthy neighbours, as in production
        settings = WorkerSettings(concurrency=5, grace=5)
        async with running_worker(queue, settings) as worker:
            await _publish_poison(url, prefix, shape)
            for index in range(HEALTHY):
                await queue.enqueue(noop, index)
            await wait_until(
                worker, lambda s: s.succeeded >= HEALTHY and s.dead_lettered >= 1, timeout=30
            )
            assert worker.statistics().dead_lettered == 1
        letters = await queue.dead_letters().list()
        async with queue.session() as session:
            work = session.names.work_queue("default")
            assert await session.transport.message_count(work) == 0
    return ran, letters


def _connection_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if any(event in record.getMessage() for event in CONNECTION_EVENTS)
    ]


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
@pytest.mark.parametrize("name", sorted(SHAPES))
async def test_an_undecodable_message_is_dead_lettered_once_and_the_healthy_jobs_run(
    amqp_url: str,
    prefix: str,
    cleanup: None,
    queue_type: QueueType,
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shape = SHAPES[name]
    caplog.set_level(logging.INFO)
    ran, letters = await _run_with_poison(amqp_url, prefix, queue_type, shape)
    # every healthy job exactly once: had the connection died, the broker would have
    # delivered the ones it held again (and quarantined them)
    assert ran == Counter(range(HEALTHY))
    assert _connection_events(caplog) == []
    [letter] = letters
    assert letter.reason == "undecodable-properties"
    assert letter.source == "worker"
    assert letter.job_id == shape.job_id
    assert letter.task == TASK.decode()
    assert shape.problem in (letter.exception_message or "")
    assert letter.body == BODY
    assert not any(key.startswith("x-aqueue-undecodable") for key in letter.headers)


async def test_aqueue_dlq_list_shows_the_reason(amqp_url: str, prefix: str, cleanup: None) -> None:
    await _run_with_poison(amqp_url, prefix, "classic", SHAPES["header-key-not-utf8"])
    with anyio.fail_after(60):
        done = await anyio.run_process(
            aqueue_command("dlq", "list", "default", "--url", amqp_url, "--prefix", prefix),
            cwd=ROOT,
            env=subprocess_env({}),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output
    assert "undecodable-properties" in output
    assert "poison-1" in output
    assert f"1 dead letter(s) in {prefix}.default.dlq" in output
