"""Pytest fixtures for private RabbitMQ nodes (registered through ``pytest_plugins``).

``rabbit_node`` gives a test a started node of its own; ``make_rabbit_node`` makes more (for
side-by-side brokers); ``rabbit_cluster`` is a started three-node cluster. All of them always
clean up: every node is stopped (SIGKILLed if it will not stop), its epmd stopped, and its
directory removed, whatever the test did to it. Nodes left behind by a run that was killed
outright are reaped once per session.

When RabbitMQ is not installed the fixtures skip, or fail under ``AQUEUE_REQUIRE_BROKER=1``,
as the ``amqp_url`` fixture does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.rabbit_cluster import RabbitCluster
from tests.helpers.rabbit_node import RABBITMQ_BIN, RabbitNode, reap_stale


@pytest.fixture(scope="session")
def rabbit_node_support() -> None:
    """Check that private nodes can run here, and reap what crashed runs left behind."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        reason = f"RabbitMQ is not installed ({RABBITMQ_BIN}/rabbitmq-server is missing)"
        if os.environ.get("AQUEUE_REQUIRE_BROKER") == "1":
            pytest.fail(f"{reason} and AQUEUE_REQUIRE_BROKER=1", pytrace=False)
        pytest.skip(reason)
    reap_stale()


@pytest.fixture
def make_rabbit_node(rabbit_node_support: None) -> Iterator[Callable[[], RabbitNode]]:
    """A factory of private nodes (not started); every node it made is cleaned up after the test."""
    nodes: list[RabbitNode] = []

    def make() -> RabbitNode:
        node = RabbitNode()
        nodes.append(node)
        return node

    yield make
    errors: list[BaseException] = []
    for node in reversed(nodes):
        try:
            node.cleanup()
        except Exception as exc:  # noqa: BLE001 - clean up every node, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def rabbit_node(make_rabbit_node: Callable[[], RabbitNode]) -> RabbitNode:
    """A started private RabbitMQ node, cleaned up after the test."""
    node = make_rabbit_node()
    node.start()
    return node


@pytest.fixture
def make_rabbit_cluster(
    rabbit_node_support: None,
) -> Iterator[Callable[..., RabbitCluster]]:
    """A factory of private clusters (``make(size=3, config=())``, not started); cleaned up."""
    clusters: list[RabbitCluster] = []

    def make(size: int = 3, config: tuple[str, ...] = ()) -> RabbitCluster:
        cluster = RabbitCluster(size, config=config)
        clusters.append(cluster)
        return cluster

    yield make
    errors: list[BaseException] = []
    for cluster in reversed(clusters):
        try:
            cluster.cleanup()
        except Exception as exc:  # noqa: BLE001 - clean up every cluster, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def rabbit_cluster(make_rabbit_cluster: Callable[..., RabbitCluster]) -> RabbitCluster:
    """A started three-node cluster of private nodes, cleaned up after the test."""
    cluster = make_rabbit_cluster(3)
    cluster.start()
    return cluster
