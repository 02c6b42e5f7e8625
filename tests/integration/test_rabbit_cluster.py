"""The private-cluster helper does what failover tests rely on; the shared broker is untouched."""

from __future__ import annotations

import os
import subprocess
import uuid

import aio_pika
import anyio
import anyio.to_thread
import pytest

from tests.helpers.rabbit_cluster import RabbitCluster
from tests.helpers.rabbit_node import processes_of

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

SHARED_EPMD_PORT = 4369


def _epmd_names(port: int) -> str:
    """What the epmd on ``port`` has registered (a read-only query)."""
    env = {**os.environ, "ERL_EPMD_PORT": str(port)}
    done = subprocess.run(
        ["epmd", "-names"], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    return done.stdout + done.stderr


async def _declare_and_publish(url: str, queue: str) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        message = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, queue, mandatory=True, timeout=10)


async def _get_body(url: str, queue: str) -> bytes:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        message = await declared.get(timeout=10, fail=True)
        assert message is not None
        await message.ack()
        return message.body


async def test_cluster_forms_survives_its_leader_and_leaves_nothing(
    rabbit_cluster: RabbitCluster,
) -> None:
    """Three nodes on one private epmd form a cluster; the leader's kill moves the leader;
    the restarted node rejoins; cleanup ends every process and removes every directory."""
    cluster = rabbit_cluster
    names = {node.nodename for node in cluster.nodes}
    assert set(await anyio.to_thread.run_sync(cluster.running_nodes)) == names
    registered = _epmd_names(cluster.epmd.port)
    assert all(node.name in registered for node in cluster.nodes), registered
    assert not any(node.name in _epmd_names(SHARED_EPMD_PORT) for node in cluster.nodes)
    assert len({node.port for node in cluster.nodes}) == len(cluster.nodes)

    # The declaring connection's node leads the queue (client-local placement).
    queue = f"aqtest-cluster-{uuid.uuid4().hex[:8]}"
    second = cluster.nodes[1]
    await _declare_and_publish(second.url, queue)
    leader, _ = await anyio.to_thread.run_sync(lambda: cluster.wait_for_leader(queue, timeout=30))
    assert leader is second

    await anyio.to_thread.run_sync(cluster.kill, leader)
    assert not leader.running
    new_leader, waited = await anyio.to_thread.run_sync(
        lambda: cluster.wait_for_leader(queue, not_on=leader, timeout=30)
    )
    assert new_leader is not leader
    assert new_leader.running
    print(f"\nnew leader {new_leader.nodename} seen {waited:.2f} s after the kill")

    await anyio.to_thread.run_sync(cluster.restart, leader)
    assert set(await anyio.to_thread.run_sync(cluster.running_nodes)) == names
    # the confirmed message survived the leader's death, readable through the returned node
    assert await _get_body(leader.url, queue) == b"kept"

    dirs = [cluster.base_dir, *(node.base_dir for node in cluster.nodes)]
    await anyio.to_thread.run_sync(cluster.cleanup)
    assert not any(path.exists() for path in dirs)
    assert not any(processes_of(path) for path in dirs)
    assert cluster.epmd.pid is None
