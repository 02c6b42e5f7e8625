"""A private RabbitMQ cluster for failover tests: several `RabbitNode`s joined into one.

The nodes share one Erlang cookie and one epmd of the cluster's own (on a free loopback port,
never 4369), so that ``<name>@localhost`` of one node resolves for the others and for the
``rabbitmqctl`` that joins them. Everything else is per node, as for a lone `RabbitNode`:
directory, HOME, AMQP and distribution ports, process group.

```text
<base>/                 tempfile.gettempdir()/aqueue-rabbit-XXXXXXXX (the cluster's)
├── epmd.out            the shared epmd's output (its argv[0] names <base>, for reap_stale)
└── owner.json          who owns the cluster: a later run reaps what a crashed run left
```

Each node lives in a directory of its own beside it. As with `RabbitNode`, every method is
synchronous and blocks for seconds: from an async test, call it through
``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.helpers.rabbit_node import (
    BASE_PREFIX,
    CTL_TIMEOUT,
    START_TIMEOUT,
    Epmd,
    RabbitNode,
    RabbitNodeError,
    _pause,
    free_ports,
)

LEADER_POLL = 0.2
"""Seconds between two ``list_queues`` while waiting for a leader (each takes ~0.5 s itself)."""


class RabbitCluster:
    """`size` private nodes joined into one cluster; the first node is the one others join.

    Args:
        size: how many nodes.
        config: extra ``rabbitmq.conf`` lines for every node.
    """

    def __init__(self, size: int = 3, *, config: Sequence[str] = ()) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.base_dir = Path(tempfile.mkdtemp(prefix=BASE_PREFIX))
        [epmd_port] = free_ports(1)
        self.epmd = Epmd(self.base_dir, epmd_port)
        owner = {"owner_pid": os.getpid(), "cluster": True, "epmd_port": epmd_port}
        (self.base_dir / "owner.json").write_text(json.dumps(owner))
        cookie = secrets.token_hex(16).upper()
        tag = secrets.token_hex(3)
        self.nodes: list[RabbitNode] = [
            RabbitNode(name=f"aqc{tag}n{index}", config=config, cookie=cookie, epmd=self.epmd)
            for index in range(size)
        ]
        self.start_seconds: float | None = None
        """Wall time of `start` (nodes booted and joined)."""
        self._cleaned = False

    # -- public surface ---------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """The AMQP URL of every node, in node order."""
        return [node.url for node in self.nodes]

    def urls_from(self, first: RabbitNode) -> list[str]:
        """Every node's URL, `first`'s first and the others in node order after it."""
        return [first.url, *(node.url for node in self.nodes if node is not first)]

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start every node (in parallel), join them to the first; returns the seconds it took."""
        began = time.monotonic()
        self.epmd.start()
        # Booting is mostly waiting on Erlang: three nodes in parallel take little longer than
        # one, even on two cores.
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(node.start, timeout) for node in self.nodes]:
                future.result()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.nodename)
            node.ctl("start_app")
        self.wait_running(self.nodes, timeout=timeout)
        self.start_seconds = time.monotonic() - began
        return self.start_seconds

    def running_nodes(self, asking: RabbitNode | None = None) -> list[str]:
        """The node names the cluster reports running (asked of `asking` or any live node)."""
        out = self._ask(asking).ctl("cluster_status", "--formatter", "json")
        return list(json.loads(out).get("running_nodes", []))

    def wait_running(self, nodes: Sequence[RabbitNode], timeout: float) -> None:
        """Wait until the cluster reports every one of `nodes` running."""
        deadline = time.monotonic() + timeout
        wanted = {node.nodename for node in nodes}
        while not wanted <= set(running := self.running_nodes()):
            if time.monotonic() >= deadline:
                raise RabbitNodeError(f"only {running} of {sorted(wanted)} run after {timeout} s")
            _pause(LEADER_POLL)

    def node(self, nodename: str) -> RabbitNode:
        """The node called `nodename` (``name@localhost``)."""
        for node in self.nodes:
            if node.nodename == nodename:
                return node
        raise KeyError(nodename)

    def leader_of(self, queue: str, *, asking: RabbitNode | None = None) -> RabbitNode | None:
        """The node that leads quorum queue `queue` as the cluster sees it, or None.

        Asks ``rabbitmqctl list_queues name leader`` of `asking` (any live node by default).
        None while the queue has no leader (an election under way) or does not exist.
        """
        try:
            out = self._ask(asking).ctl(
                "-q", "list_queues", "name", "leader", "--no-table-headers", timeout=CTL_TIMEOUT
            )
        except (RabbitNodeError, subprocess.TimeoutExpired):
            return None  # a node that just lost its peers may refuse for a moment
        for line in out.splitlines():
            name, _, leader = line.partition("\t")
            if name.strip() == queue:
                with contextlib.suppress(KeyError):
                    return self.node(leader.strip())
        return None

    def wait_for_leader(
        self, queue: str, *, not_on: RabbitNode | None = None, timeout: float = 60.0
    ) -> tuple[RabbitNode, float]:
        """Wait until `queue` has a leader on a running node other than `not_on`.

        Returns:
            The leader and the seconds waited (with ``list_queues`` taking about half a second,
            the figure is that coarse).
        """
        began = time.monotonic()
        while True:
            leader = self.leader_of(queue)
            if leader is not None and leader is not not_on and leader.running:
                return leader, time.monotonic() - began
            if time.monotonic() - began >= timeout:
                raise RabbitNodeError(f"{queue!r} had no leader besides {not_on} in {timeout} s")
            _pause(LEADER_POLL)

    def kill(self, node: RabbitNode) -> None:
        """SIGKILL one node's beam (a crash); the others notice at once (its links close)."""
        node.kill()

    def restart(self, node: RabbitNode, timeout: float = START_TIMEOUT) -> float:
        """Start a killed or stopped node again and wait until the cluster sees it running."""
        began = time.monotonic()
        if not node.running:
            node.start(timeout)
        else:
            node.restart(timeout)
        self.wait_running([node], timeout=timeout)
        return time.monotonic() - began

    def cleanup(self) -> None:
        """Kill every node, stop the shared epmd, remove every directory; idempotent."""
        if self._cleaned:
            return
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.cleanup()
            except Exception as exc:  # noqa: BLE001 - clean up every node, then report
                errors.append(exc)
        self.epmd.stop()
        self._cleaned = True
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def log_tail(self, lines: int = 20) -> str:
        """The end of every node's logs, for error messages."""
        return "\n".join(node.log_tail(lines) for node in self.nodes)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        names = ", ".join(f"{n.nodename}{'' if n.running else ' (down)'}" for n in self.nodes)
        return f"<RabbitCluster {names}>"

    # -- internals --------------------------------------------------------------------------

    def _ask(self, asking: RabbitNode | None) -> RabbitNode:
        if asking is not None:
            return asking
        for node in self.nodes:
            if node.running:
                return node
        raise RabbitNodeError("no node of the cluster is running")
