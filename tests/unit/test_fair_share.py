"""Fair share on the in-memory broker: shards, the producer's choice, the worker's consumers.

(Against RabbitMQ: tests/integration/test_flow_control.py, 20,000 jobs of one tenant.)
"""

from __future__ import annotations

import anyio
import pytest

from aqueue import Instrumentation, TaskQueue, WorkerSettings, current_job
from aqueue._client.fair import ready_info
from aqueue._core.flow import FAIR_SHARDS, fair_queue, pick_shards, tenant_shards
from aqueue._observability.hooks import JobObserver
from aqueue._transport import Delivery
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for

# "A" and "B" share shard 11: B's jobs must go to its other shard while A floods 11
A_SHARDS, B_SHARDS = (6, 11), (2, 11)


def test_tenants_hash_to_two_stable_shards() -> None:
    """The same two shards in every process (not Python's salted `hash`)."""
    assert tenant_shards("A") == A_SHARDS
    assert tenant_shards("B") == B_SHARDS
    assert all(a != b for a, b in (tenant_shards(str(n)) for n in range(200)))


def test_a_batch_fills_its_tenants_two_shards_evenly() -> None:
    """Each job goes to the emptier shard, counting the jobs picked before it."""
    ready = {11: 3}
    picked = pick_shards(["A"] * 7, ready)
    assert picked.count(6) == 5
    assert picked.count(11) == 2
    assert ready == {6: 5, 11: 5}


def test_shard_names_are_reserved_queue_names() -> None:
    """A logical queue named like a shard would collide with one: refused at decoration."""
    queue = TaskQueue("memory://")
    with pytest.raises(ConfigurationError, match="fair"):

        @queue.task(queue="orders.fair.3")
        async def job() -> None: ...


async def test_jobs_go_to_the_emptier_of_their_tenants_shards_and_count_as_ready() -> None:
    """A's flood fills its two shards evenly; B's job avoids the shard it shares with A;
    ``with_options(tenant=)`` names the tenant instead of the argument. The queue's ready
    count (the wait signal's backlog) is the shards' too."""
    queue = TaskQueue("memory://", prefix="fs")

    @queue.task(queue="orders", fair_key="tenant")
    async def work(tenant: str, n: int) -> None: ...

    async with queue, queue.session() as session:
        assert (await queue.enqueue_many(work, [("A", n) for n in range(100)])).ok
        await queue.enqueue(work, "B", 0)
        await queue.enqueue(work.with_options(tenant="B"), "not-the-tenant", 1)

        async def ready(shard: int) -> int:
            name = fair_queue(session.names, "orders", shard)
            return (await session.transport.queue_info(name)).ready

        counts = {shard: await ready(shard) for shard in range(FAIR_SHARDS)}
        assert counts[6] == counts[11] == 50
        assert counts[2] == 2
        assert sum(counts.values()) == 102
        assert (await session.transport.queue_info("fs.orders")).ready == 0
        info = await ready_info(session.transport, session.names, "orders", fair=True)
        assert info.ready == 102


async def test_a_tenants_flood_does_not_delay_another_tenant() -> None:
    """Behind 400 jobs of A, B's jobs start at once: all of them before A's 100th; on a plain
    queue the same B jobs wait behind every A job."""
    queue = TaskQueue("memory://")
    started: list[str] = []

    @queue.task(queue="fair", fair_key="tenant")
    async def fair(tenant: str, n: int) -> None:
        started.append(tenant)
        await anyio.sleep(0.001)

    @queue.task(queue="plain")
    async def plain(tenant: str, n: int) -> None:
        started.append(tenant)
        await anyio.sleep(0.001)

    settings = WorkerSettings(concurrency=4)
    for task in (fair, plain):
        started.clear()
        async with queue:
            assert (await queue.enqueue_many(task, [("A", n) for n in range(400)])).ok
            assert (await queue.enqueue_many(task, [("B", n) for n in range(5)])).ok
            async with running_worker(queue, settings) as worker:
                with anyio.fail_after(30):
                    await worker.wait_until(lambda stats: stats.succeeded == 405)
        last_b = max(i for i, tenant in enumerate(started) if tenant == "B")
        if task is fair:
            assert last_b < 100, last_b
        else:
            assert last_b >= 400, last_b


async def test_the_wait_signal_reads_the_shards_ready_count_but_not_delayed_jobs() -> None:
    """A worker running one job at a time: the backlog it reports (``queue_stats().ready``,
    what the autoscaler and ``/scale`` read) counts the jobs waiting in the shards; a job
    delayed for a minute waits in the delay levels and is not counted."""
    queue = TaskQueue("memory://")
    release = anyio.Event()

    @queue.task(queue="orders", fair_key="tenant")
    async def work(tenant: str, n: int) -> None:
        await release.wait()

    settings = WorkerSettings(concurrency=1, ready_interval=0.05)
    async with queue, running_worker(queue, settings) as worker:
        assert (await queue.enqueue_many(work, [("A", n) for n in range(10)])).ok
        await queue.enqueue_in(60, work, "A", 99)
        # one job runs, and each of A's two shards has one delivery out (prefetch 1 each)
        await wait_for(
            lambda: worker.queue_stats()["orders"].ready == 8,
            timeout=10,
            what="the shards' backlog in the wait signal",
            details=lambda: repr(worker.queue_stats()["orders"]),
        )
        release.set()
        with anyio.fail_after(10):
            await worker.wait_until(lambda stats: stats.succeeded == 10)


async def test_a_fair_jobs_retry_comes_back_to_its_shard() -> None:
    """A job of B that fails goes round the delay levels back into the shard it came from,
    not into the work queue, so its retry stays apart from A's flood too."""
    queue = TaskQueue("memory://", prefix="fr")
    seen: list[tuple[str, str]] = []

    class Where(Instrumentation):
        def job(self, delivery: Delivery, queue: str) -> JobObserver:
            seen.append((delivery.message_id or "", delivery.queue))
            return super().job(delivery, queue)

    queue.instrument(Where())

    @queue.task(queue="orders", fair_key="tenant", retries=1, backoff=0.05)
    async def flaky(tenant: str) -> None:
        if current_job().attempt == 1:
            raise ValueError("first attempt fails")

    async with queue, running_worker(queue) as worker:
        job = await queue.enqueue(flaky, "B")
        with anyio.fail_after(10):
            await worker.wait_until(lambda stats: stats.succeeded == 1)
    assert seen == [(job.job_id, "fr.orders.fair.2"), (job.job_id, "fr.orders.fair.2")]
