"""The autoscaler's decisions travel in the heartbeats to ``aqueue stats`` and the Workers
screen: a real worker (``--autoscale``'s settings) on the real broker grows under a backlog."""

from __future__ import annotations

import re
import time

import anyio
import httpx
import pytest

import aqueue.dashboard
from aqueue import TaskQueue, WorkerSettings
from aqueue._cli.stats import stats_json
from aqueue._client.monitor import HeartbeatCollector
from aqueue._core.config import Autoscale
from aqueue._core.heartbeats import (
    HEARTBEAT_BINDING,
    ScaleDecision,
    aggregate,
    control_exchange,
)
from aqueue._worker.heartbeats import control_topology
from aqueue.testing import running_worker
from tests.helpers.dashboard import serving
from tests.helpers.polling import wait_for
from tests.helpers.workers import delete_topology

pytestmark = pytest.mark.integration


async def test_a_growth_decision_reaches_the_heartbeat_stats_and_the_workers_screen(
    amqp_url: str, prefix: str
) -> None:
    """A backlog of 50 ms jobs at concurrency 1 makes the autoscaler grow; the worker's next
    heartbeats carry that decision (grow, 1 -> more, its reason and time), as read by the
    monitor's collector; ``aqueue stats --json`` and the Workers screen show it."""
    queue = TaskQueue(amqp_url, prefix=prefix, name=f"{prefix}-decisions", telemetry=False)

    @queue.task(queue="naps", name="nap")
    async def nap() -> None:
        await anyio.sleep(0.05)

    settings = WorkerSettings(
        autoscale=Autoscale(1, 20, target_wait=0.2, interval=0.5),
        heartbeat_interval=0.2,
        ready_interval=0.2,
        grace=5,
    )
    try:
        async with queue, queue.session() as session:
            transport, names = session.transport, session.names
            await transport.declare(control_topology(names))
            collector = HeartbeatCollector(names.prefix)
            listener = await transport.listen(
                control_exchange(names.prefix), HEARTBEAT_BINDING, collector
            )
            began = time.time()
            await queue.enqueue_many(nap, [() for _ in range(400)])
            web = aqueue.dashboard.app(queue)
            async with running_worker(queue, settings), serving(web) as url:

                def growths() -> list[ScaleDecision]:
                    return [
                        decision
                        for seen in collector.seen
                        if "naps" in seen.heartbeat.queues
                        for decision in seen.heartbeat.queues["naps"].decisions
                        if decision.action == "grow"
                    ]

                await wait_for(
                    lambda: bool(growths()), timeout=30, what="a heartbeat with a growth"
                )
                decisions = collector.seen[-1].heartbeat.queues["naps"].decisions
                first = min(growths(), key=lambda d: d.at)
                assert first.before == 1
                assert first.after > 1
                assert first.reason
                assert began <= first.at <= time.time()
                times = [d.at for d in decisions]
                assert times == sorted(times, reverse=True)  # newest first

                now = time.time()
                document = stats_json(aggregate(collector.seen, {}, now=now), now=now, window=1)
                (worker,) = document["workers"]
                assert any(d["action"] == "grow" for d in worker["decisions"]["naps"])

                async with httpx.AsyncClient(base_url=url) as http:

                    async def shown() -> bool:  # the newest 5 are kept: maybe not 1 -> x
                        page = (await http.get("/workers")).text
                        return re.search(r"naps: grow \d+ &rarr; \d+: \S", page) is not None

                    await wait_for(shown, timeout=15, what="the growth on the Workers screen")
                    page = (await http.get("/workers")).text
                    api = (await http.get("/api/overview")).json()
            await listener.cancel()
        assert 'class="decision grow"' in page
        (api_worker,) = api["workers"]
        assert any(d["action"] == "grow" for d in api_worker["decisions"]["naps"])
    finally:
        await delete_topology(amqp_url, prefix, ["naps"])
