"""Reading the live state of an app: worker heartbeats and the work queues' broker figures.

One reader for ``aqueue stats`` and the dashboard: `HeartbeatCollector` keeps the heartbeats
of one app as they arrive on the control exchange, `queue_facts` reads each work queue's ready
messages and consumers (a passive declare), `with_rates` turns two readings into an arrival
rate; `aqueue._core.heartbeats.aggregate` makes rows of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aqueue._core.heartbeats import DROP_OUT_INTERVALS, Heartbeat, QueueFacts, Seen
from aqueue._core.topology import TopologyNames
from aqueue._serialization import loads
from aqueue._transport import Transport
from aqueue.exceptions import AqueueError, QueueNotFound

__all__ = ["HeartbeatCollector", "queue_facts", "with_rates"]


class HeartbeatCollector:
    """Heartbeats of one app (by prefix) as they arrive: a `NoticeCallback`.

    Args:
        prefix: the app's topology prefix; heartbeats of other apps are ignored.
        on_heartbeat: called with each heartbeat kept (the dashboard records history).
    """

    def __init__(self, prefix: str, on_heartbeat: Callable[[Seen], None] | None = None) -> None:
        self.prefix = prefix
        self.seen: list[Seen] = []
        self._on_heartbeat = on_heartbeat

    def __call__(self, _routing_key: str, body: bytes) -> None:
        try:
            beat = Heartbeat.from_payload(loads(body))
        except (ValueError, AqueueError):
            return  # another version, or not a heartbeat: not ours to show
        if beat.prefix == self.prefix:
            seen = Seen(beat, time.time())
            self.seen.append(seen)
            if self._on_heartbeat is not None:
                self._on_heartbeat(seen)

    def forget_old(self, now: float) -> None:
        """Drop heartbeats past what can still be shown: a worker silent this long is gone."""
        horizon = 2 * DROP_OUT_INTERVALS
        self.seen = [s for s in self.seen if now - s.received_at <= horizon * s.heartbeat.interval]


async def queue_facts(
    transport: Transport, names: TopologyNames, queues: Iterable[str]
) -> dict[str, QueueFacts]:
    """Each logical queue's ready messages and consumers; None for a queue that is missing."""
    facts = {}
    for name in queues:
        try:
            info = await transport.queue_info(names.work_queue(name))
        except QueueNotFound:
            facts[name] = QueueFacts(ready=None, consumers=None)
        else:
            facts[name] = QueueFacts(ready=info.ready, consumers=info.consumers)
    return facts


def with_rates(
    before: dict[str, QueueFacts], after: dict[str, QueueFacts], seconds: float
) -> dict[str, QueueFacts]:
    """`after` with the change of ready per second since `before` (None where unknown)."""
    merged = {}
    for name, fact in after.items():
        earlier = before.get(name)
        per_s = None
        if earlier is not None and earlier.ready is not None and fact.ready is not None:
            per_s = (fact.ready - earlier.ready) / seconds if seconds > 0 else None
        merged[name] = QueueFacts(fact.ready, fact.consumers, per_s)
    return merged
