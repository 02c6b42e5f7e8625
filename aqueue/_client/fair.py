"""Fair share on the producer side: each job of a tenant to the emptier of its two shards.

A task with ``fair_key=`` (or a job given ``with_options(tenant=...)``) is published to one of
`FAIR_SHARDS` sub-queues of its queue (``{prefix}.{queue}.fair.{n}``) instead of the work queue:
the emptier of the two its tenant hashes to (`tenant_shards`). The ready counts are read with a
passive declare at most once a second per shard, and every job sent since is counted on top,
so a batch of one tenant fills its two shards evenly. The worker's side (a consumer per shard,
each with half the queue's prefetch) is in `aqueue._worker.worker`; the design and its bounds
are on the flow-control page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio

from aqueue._client.producer import Producer
from aqueue._core.config import QueueSettings
from aqueue._core.flow import (
    FAIR_SHARDS,
    fair_queue,
    key_value,
    pick_shards,
    tenant_shards,
)
from aqueue._core.queues import fair_topology
from aqueue._core.topology import TopologyNames
from aqueue._tasks.task import Task, key_argument
from aqueue._transport import Transport
from aqueue._transport.base import QueueInfo
from aqueue.exceptions import AqueueError, TransportError

logger = logging.getLogger("aqueue.producer")

#: Seconds a shard's ready count is trusted before it is read again (one passive declare).
READY_READ_INTERVAL = 1.0


def is_fair(task: Task[Any, Any]) -> bool:
    """Whether `task`'s jobs go to fair-share shards."""
    return task.options.flow.fair_key is not None


def fair_queues(tasks: Iterable[Task[Any, Any]]) -> set[str]:
    """The logical queues with a fair-share task: they have shards beside the work queue."""
    return {task.options.queue for task in tasks if is_fair(task)}


def tenant_of(task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The tenant of a job of a fair-share task: ``with_options(tenant=)``, else its key."""
    given = task.enqueue_options.tenant
    if given is not None:
        return given
    name = task.options.flow.fair_key
    if name is None:  # pragma: no cover - only called for fair tasks
        raise ValueError(f"task {task.name} has no fair_key")
    return key_value(key_argument(task.fn, name, args, kwargs))


class FairShare:
    """Picks the shard of each fair-share job, declaring a queue's shards on first use."""

    def __init__(
        self,
        producer: Producer,
        transport: Transport,
        names: TopologyNames,
        queue_settings: QueueSettings,
    ) -> None:
        self._producer = producer
        self._transport = transport
        self._names = names
        self._queue_settings = queue_settings
        self._declared: set[str] = set()
        #: per logical queue: the ready count of each shard (plus the jobs sent since it was
        #: read), and when each was read
        self._ready: dict[str, dict[int, int]] = {}
        self._read_at: dict[tuple[str, int], float] = {}
        self._lock = anyio.Lock()

    async def shards(self, queue: str, tenants: Sequence[str]) -> list[int]:
        """The shard of each job (in order) of `queue` whose tenants are `tenants`.

        Raises:
            ConnectionLost: the shards could not be declared within ``publish_deadline``.
        """
        async with self._lock:
            if queue not in self._declared:
                await self._producer.declare(
                    fair_topology(self._names, queue, self._queue_settings)
                )
                self._declared.add(queue)
            ready = self._ready.setdefault(queue, {})
            now = anyio.current_time()
            wanted = {shard for tenant in set(tenants) for shard in tenant_shards(tenant)}
            for shard in sorted(wanted):
                if now - self._read_at.get((queue, shard), -READY_READ_INTERVAL) < (
                    READY_READ_INTERVAL
                ):
                    continue
                try:
                    info = await self._transport.queue_info(fair_queue(self._names, queue, shard))
                except TransportError as exc:  # keep the last figure: the job goes all the same
                    logger.debug("could not read the ready count of a shard: %s", exc)
                    continue
                ready[shard] = info.ready
                self._read_at[(queue, shard)] = now
            return pick_shards(tenants, ready)


async def ready_info(
    transport: Transport, names: TopologyNames, queue: str, *, fair: bool
) -> QueueInfo:
    """The ready count of a logical queue (its shards' included) and its consumers.

    What the wait signal, the autoscaler, heartbeats and ``aqueue stats`` read: a fair-share
    queue's jobs wait in its shards. Its delay levels and deferred queue are not counted: the
    jobs there are not due. The consumers are the work queue's (a worker consumes every shard
    too).

    Raises:
        QueueNotFound: the work queue does not exist.
        TransportError: the broker could not be asked.
    """
    info = await transport.queue_info(names.work_queue(queue))
    if not fair:
        return info
    ready = info.ready
    for shard in range(FAIR_SHARDS):
        try:
            ready += (await transport.queue_info(fair_queue(names, queue, shard))).ready
        except AqueueError as exc:  # not declared yet (no fair job was ever sent): none there
            logger.debug("could not read the ready count of a shard of %s: %s", queue, exc)
    return QueueInfo(ready=ready, consumers=info.consumers)
