"""The private-node helper does what fault tests rely on, and never touches the shared broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import anyio
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from tests.helpers.rabbit_node import RabbitNode, _pause, processes_of, reap_stale, still_running

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

SHARED_EPMD_PORT = 4369
SHARED_AMQP_PORT = 5672
QUORUM_SETTLE = 2.0
"""Seconds between declaring a quorum queue and killing its single node (see the kill test)."""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


def _epmd_names(port: int) -> str:
    """What the epmd on ``port`` has registered (a read-only query)."""
    env = {**os.environ, "ERL_EPMD_PORT": str(port)}
    done = subprocess.run(
        ["epmd", "-names"], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    return done.stdout + done.stderr


@asynccontextmanager
async def _channel(node: RabbitNode, name: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(
        node.url, timeout=10, client_properties={"connection_name": name}
    )
    try:
        yield await connection.channel(publisher_confirms=True, on_return_raises=True)
    finally:
        await connection.close()


async def _quorum_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    return await channel.declare_queue(
        name, durable=True, arguments={"x-queue-type": "quorum"}, timeout=10
    )


async def _publish(channel: AbstractChannel, queue: str, body: bytes, timeout: float = 10) -> None:
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await channel.default_exchange.publish(message, queue, mandatory=True, timeout=timeout)


async def _get_body(channel: AbstractChannel, queue: str) -> bytes:
    declared = await _quorum_queue(channel, queue)
    message = await declared.get(timeout=10, fail=True)
    assert message is not None
    await message.ack()
    return message.body


async def test_node_serves_amqp_on_its_own_ports(
    rabbit_node: RabbitNode, request: pytest.FixtureRequest
) -> None:
    """A started node answers AMQP on its own port and registers only with its own epmd."""
    node = rabbit_node
    assert node.running
    assert node.pid is not None
    assert node.port not in {SHARED_AMQP_PORT, SHARED_EPMD_PORT}
    assert node.epmd.port != SHARED_EPMD_PORT
    assert 0 < node.start_seconds[0] < 60
    async with _channel(node, request.node.name) as channel:
        queue = await _quorum_queue(channel, "smoke")
        await _publish(channel, "smoke", b"hello")
        assert await _get_body(channel, queue.name) == b"hello"
    assert f"name {node.name} at port {node.dist_port}" in _epmd_names(node.epmd.port)
    assert node.name not in _epmd_names(SHARED_EPMD_PORT)
    listed = await anyio.to_thread.run_sync(node.ctl, "list_queues", "name", "type")
    assert "smoke\tquorum" in listed


async def test_durable_quorum_message_survives_restart(
    rabbit_node: RabbitNode, request: pytest.FixtureRequest
) -> None:
    """A confirmed persistent message in a durable quorum queue is there after a restart."""
    async with _channel(rabbit_node, request.node.name) as channel:
        await _quorum_queue(channel, "durable")
        await _publish(channel, "durable", b"kept")
    pid_before = rabbit_node.pid
    await anyio.to_thread.run_sync(rabbit_node.restart)
    assert rabbit_node.pid not in {None, pid_before}
    async with _channel(rabbit_node, request.node.name) as channel:
        assert await _get_body(channel, "durable") == b"kept"


async def test_kill_then_start_keeps_confirmed_messages(
    rabbit_node: RabbitNode, request: pytest.FixtureRequest
) -> None:
    """After kill -9 the port is dead; start() brings the node back with its data."""
    async with _channel(rabbit_node, request.node.name) as channel:
        await _quorum_queue(channel, "crash")
        # Measured on 3.10.8: a quorum queue declared less than ~1 s before its only node is
        # killed comes back without a leader, for good. Confirmed messages are not at risk.
        await anyio.sleep(QUORUM_SETTLE)
        await _publish(channel, "crash", b"fsynced")
        beam = rabbit_node.pid
        assert beam is not None
        await anyio.to_thread.run_sync(rabbit_node.kill)  # right after the confirm
    assert not rabbit_node.running
    assert not _answers(rabbit_node.port)
    with pytest.raises(ProcessLookupError):
        os.kill(beam, 0)
    await anyio.to_thread.run_sync(rabbit_node.start)
    async with _channel(rabbit_node, request.node.name) as channel:
        assert await _get_body(channel, "crash") == b"fsynced"


async def test_memory_alarm_blocks_publishing(
    rabbit_node: RabbitNode, request: pytest.FixtureRequest
) -> None:
    """While the memory alarm is on a publish gets no confirm; once it is off, publishing works."""
    async with _channel(rabbit_node, request.node.name) as channel:
        await _quorum_queue(channel, "alarm")
        await _publish(channel, "alarm", b"before")
        await anyio.to_thread.run_sync(rabbit_node.set_memory_alarm, True)
        await anyio.sleep(0.5)  # connection.blocked arrives ~80 ms after the alarm
        with pytest.raises(TimeoutError):
            await _publish(channel, "alarm", b"during", timeout=2)
        await anyio.to_thread.run_sync(rabbit_node.set_memory_alarm, False)
        await _publish(channel, "alarm", b"after")
        queue = await _quorum_queue(channel, "alarm")
        # "during" may or may not have been stored (an unconfirmed publish is ambiguous).
        assert queue.declaration_result.message_count in {2, 3}


async def test_close_all_connections_closes_clients(
    rabbit_node: RabbitNode, request: pytest.FixtureRequest
) -> None:
    """close_all_connections() makes the broker close every client connection."""
    connection = await aio_pika.connect(
        rabbit_node.url, timeout=10, client_properties={"connection_name": request.node.name}
    )
    try:
        closed = anyio.Event()
        connection.close_callbacks.add(lambda _connection, _exc: closed.set())
        channel = await connection.channel()
        assert not channel.is_closed
        await anyio.to_thread.run_sync(rabbit_node.close_all_connections)
        with anyio.fail_after(10):
            await closed.wait()
    finally:
        await connection.close()


def test_cleanup_leaves_nothing_behind(make_rabbit_node: Callable[[], RabbitNode]) -> None:
    """cleanup() ends every process of the node and its epmd, frees its ports, removes its dir."""
    shared_names = _epmd_names(SHARED_EPMD_PORT)
    shared_up = _answers(SHARED_AMQP_PORT)
    node = make_rabbit_node()
    node.start()
    processes = node.processes()
    epmd = node.epmd.pid
    assert epmd is not None
    assert node.pid in processes
    assert len(processes) >= 2  # the rabbitmq-server script and its beam, at least
    assert set(processes_of(node.base_dir)) == {node.pid, epmd}

    node.cleanup()

    assert still_running(processes) == []
    with pytest.raises(ProcessLookupError):
        os.kill(epmd, 0)
    assert processes_of(node.base_dir) == []
    assert not node.base_dir.exists()
    for port in (node.port, node.dist_port, node.epmd.port):
        assert not _answers(port)
    node.cleanup()  # idempotent
    assert _answers(SHARED_AMQP_PORT) == shared_up
    assert _epmd_names(SHARED_EPMD_PORT) == shared_names


OWNER_SCRIPT = """
import sys, time
from tests.helpers.rabbit_node import RabbitNode
node = RabbitNode()
node.start()
print(node.base_dir, node.port, flush=True)
time.sleep(600)
"""


def test_reap_stale_ends_nodes_of_a_killed_run(request: pytest.FixtureRequest) -> None:
    """A node whose owning process was SIGKILLed (no cleanup ran) is reaped by the next run."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT],
        cwd=request.config.rootpath,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        base, port = owner.stdout.readline().split()
        assert _answers(int(port))
        assert processes_of(Path(base))
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    assert Path(base) in reap_stale()
    assert processes_of(Path(base)) == []
    assert not Path(base).exists()
    # the killed node's listener goes with its last process; the kernel may take a moment
    deadline = time.monotonic() + 10
    while _answers(int(port)) and time.monotonic() < deadline:
        _pause(0.1)
    assert not _answers(int(port))
