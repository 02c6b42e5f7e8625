"""Flow control on the shared RabbitMQ and Redis (issue 11): unique jobs, a global rate limit
across two ``aqueue worker`` processes, a per-key concurrency cap that survives a SIGKILLed
worker, and fair share across tenants.

The tasks (``tests/integration/apps/flow.py``) append what they did to a file, one JSON line
each, with the time and their pid.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pytest

from aqueue import TaskQueue
from aqueue._cli.stats import limiter_rows
from aqueue._client.fair import ready_info
from tests.helpers.polling import wait_for
from tests.helpers.worker_process import WorkerProcess, apps_env
from tests.helpers.workers import delete_topology
from tests.integration.apps import flow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FLOW_APP = "tests.integration.apps.flow:queue"
#: Jobs of tenant A's flood in the fair-share tests (the issue's figure), and of tenant B
FLOOD_JOBS = int(os.environ.get("AQUEUE_TEST_FLOOD_JOBS", "20000"))
TENANT_B_JOBS = 20
#: A file the fair-share tests append their figures to, one JSON line each (else printed only)
FIGURES = os.environ.get("AQUEUE_TEST_FIGURES")
#: Jobs of the rate-limit test: the issue's 1,000, 50 s at 20/s (AQUEUE_TEST_FLOW_JOBS=400
#: for a shorter run while working on it).
RATE_JOBS = int(os.environ.get("AQUEUE_TEST_FLOW_JOBS", "1000"))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The file the tasks record to."""
    path = tmp_path / "flow.jsonl"
    path.touch()
    return path


@pytest.fixture
def env(amqp_url: str, redis_url: str, prefix: str, out: Path) -> dict[str, str]:
    """Environment for worker subprocesses: this test's broker, Redis, prefix and record file."""
    return {**apps_env(amqp_url, prefix, out), "AQUEUE_TEST_REDIS_URL": redis_url}


@pytest.fixture
async def queue(amqp_url: str, redis_url: str, prefix: str) -> AsyncIterator[TaskQueue]:
    """The app's queue, open; afterwards its topology and Redis keys are deleted."""
    made = flow.make_queue(amqp_url, prefix, redis_url)
    try:
        async with made:
            yield made
    finally:
        logical = ("default", "limited", "capped", "fair", "unfair")
        beside = [f"{prefix}.{queue}.deferred" for queue in logical]
        beside += [f"{prefix}.fair.fair.{i}" for i in range(16)]
        queues = (*logical, *beside)
        await delete_topology(amqp_url, prefix, queues)
        import redis.asyncio as redis  # integration tests only

        client = redis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker subprocesses made by `spawn`; every one still running is SIGKILLed afterwards."""
    made: list[WorkerProcess] = []
    yield made
    for worker in made:
        worker.cleanup()


async def spawn(
    workers: list[WorkerProcess], env: dict[str, str], tmp_path: Path, *args: str
) -> WorkerProcess:
    """Start a worker subprocess of the flow app and wait until it consumes."""
    worker = WorkerProcess(FLOW_APP, args, env=env, log=tmp_path / f"worker{len(workers)}.log")
    workers.append(worker)
    worker.start()
    await worker.wait_started(timeout=30)
    return worker


def records(out: Path) -> list[dict[str, Any]]:
    """Every line the tasks wrote, in order (not a line a task is writing right now)."""
    *complete, _partial = out.read_bytes().split(b"\n")
    return [orjson.loads(line) for line in complete if line]


def unacked(prefix: str, queue: str) -> int:
    """Unacked deliveries of a work queue and its deferred queue (``rabbitmqctl``)."""
    result = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "--no-table-headers",
            "list_queues",
            "name",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    total = 0
    for line in result.stdout.splitlines():
        name, _, count = line.partition("\t")
        if name.strip() in (f"{prefix}.{queue}", f"{prefix}.{queue}.deferred"):
            total += int(count)
    return total


async def test_unique_job_enqueued_50_times_concurrently_is_published_once(
    queue: TaskQueue, prefix: str
) -> None:
    """50 concurrent enqueues of one unique job: one message, the same job id for all."""
    unique = flow.limited.with_options(unique_for=30)
    ids: list[str] = []

    async def enqueue() -> None:
        ids.append((await queue.enqueue(unique, 7)).job_id)

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(enqueue)
    async with queue.session() as session:
        ready = (await session.transport.queue_info(f"{prefix}.limited")).ready
    assert len(ids) == 50
    assert len(set(ids)) == 1
    assert ready == 1


@pytest.mark.serial
async def test_rate_limit_holds_across_two_worker_processes(
    queue: TaskQueue,
    env: dict[str, str],
    workers: list[WorkerProcess],
    tmp_path: Path,
    out: Path,
    prefix: str,
) -> None:
    """20/s over two workers: every 5 s window within 10 % of 20/s, none lost or failed, and
    no worker holds more than its prefetch (the rest waits in the broker's delay levels).

    Holds on a loaded machine because the broker only carries the wait up to the last two
    seconds before each reserved start, which the job spends in its worker's parking: the
    delay levels' lateness under load (up to ~2 s measured here) no longer moves starts."""
    # runners enough to defer the flood quickly: a reserved copy comes back into the work
    # queue behind the originals not yet looked at (see the flow-control page)
    for _ in range(2):
        await spawn(
            workers, env, tmp_path, "-Q", "limited", "--concurrency", os.environ.get("XC", "50")
        )
    batch = await queue.enqueue_many(flow.limited, [(n,) for n in range(RATE_JOBS)])
    assert batch.ok
    # `aqueue stats` shows the limiter's backlog, read from Redis, once the flood is reserved
    async with queue.session() as session:
        backend = session.states.backend

        async def reserved_ahead() -> bool:
            rows = await limiter_rows(flow.queue, backend)  # the app's tasks, this test's Redis
            return any(row["kind"] == "rate" and row["value"] > 5 for row in rows)

        await wait_for(reserved_ahead, timeout=30, what="the limiter's backlog")
    held: list[int] = []
    done = anyio.Event()

    async def sample() -> None:
        while not done.is_set():
            held.append(await anyio.to_thread.run_sync(unacked, prefix, "limited"))
            await anyio.sleep(0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        await wait_for(
            lambda: len(records(out)) >= RATE_JOBS,
            timeout=RATE_JOBS / flow.RATE + 30,
            what=f"{RATE_JOBS} starts",
            details=lambda: f"{len(records(out))} started\n{workers[0].output_tail()}",
        )
        done.set()
    starts = sorted(record["t"] for record in records(out))
    assert sorted({record["n"] for record in records(out)}) == list(range(RATE_JOBS))
    rates = [
        sum(1 for t in starts if begin <= t < begin + 5) / 5
        for begin in (starts[0] + i * 0.5 for i in range(int((starts[-1] - starts[0] - 5) * 2)))
    ]
    print(f"5 s window start rates: min {min(rates):.2f}/s, max {max(rates):.2f}/s")
    late = sorted(r["t"] - r["due"] for r in records(out))
    print(
        f"start after its reserved time: p50 {late[len(late) // 2] * 1000:.0f} ms, "
        f"p99 {late[len(late) * 99 // 100] * 1000:.0f} ms, max {late[-1] * 1000:.0f} ms"
    )
    if FIGURES:
        figures = {"test": "rate", "jobs": RATE_JOBS, "min": min(rates), "max": max(rates)}
        async with await anyio.open_file(FIGURES, "a") as file:
            await file.write(orjson.dumps(figures).decode() + "\n")
    assert all(0.9 * flow.RATE <= rate <= 1.1 * flow.RATE for rate in rates), rates
    assert len({record["pid"] for record in records(out)}) == 2  # both workers ran jobs
    assert max(held) <= 2 * 2 * 50, held  # two workers, two consumers each, prefetch 50
    async with queue.session() as session:
        dead = (await session.transport.queue_info(f"{prefix}.limited.dlq")).ready
    assert dead == 0
    assert len(records(out)) == RATE_JOBS  # each ran once: no failed attempt, no retry


async def test_concurrency_cap_per_key_across_two_workers_and_a_sigkill(
    queue: TaskQueue,
    env: dict[str, str],
    workers: list[WorkerProcess],
    tmp_path: Path,
    out: Path,
) -> None:
    """``max_concurrency=3`` per tenant over two workers: never more than 3 of a tenant run at
    once; a SIGKILLed worker's slots are free again within the lease time (3 s here)."""
    lease = 3.0
    args = ("-Q", "capped", "--concurrency", "10", "--lease-ttl", str(lease))
    for _ in range(2):
        await spawn(workers, env, tmp_path, *args)
    calls = [(tenant, n, 0.2) for n in range(15) for tenant in ("a", "b")]
    assert (await queue.enqueue_many(flow.capped, calls)).ok
    await wait_for(
        lambda: sum(r["event"] == "end" for r in records(out)) == len(calls),
        timeout=60,
        what="every capped job to end",
        details=lambda: workers[0].output_tail(),
    )
    for tenant in ("a", "b"):
        assert _peak(records(out), tenant) == flow.CAP, tenant

    # three long jobs of tenant "k" take its three slots on the worker about to be killed
    victim = workers[0]
    await workers[1].terminate()
    for n in range(3):
        await queue.enqueue(flow.capped, "k", n, 3600.0)
    await wait_for(
        lambda: sum(r.get("tenant") == "k" for r in records(out)) == 3,
        timeout=30,
        what="3 long jobs of tenant k",
        details=lambda: victim.output_tail(),
    )
    survivor = await spawn(workers, env, tmp_path, *args)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    await queue.enqueue(flow.capped, "k", 99, 0.0)
    await wait_for(
        lambda: any(r.get("n") == 99 and r["event"] == "end" for r in records(out)),
        timeout=60,
        what="a job of tenant k after the kill",
        details=lambda: survivor.output_tail(),
    )
    started = next(r["t"] for r in records(out) if r.get("n") == 99)
    print(f"a slot of the killed worker was free again {started - killed_at:.2f} s after")
    # the three slots were the killed worker's: job 99 only ran once a lease expired, within
    # the lease time (+ the concurrency backoff of at most 2 s between two asks)
    assert started - killed_at <= lease + 3.0
    # the jobs that came back ran at most 3 at once too (the killed runs never ended: left out)
    after = [r for r in records(out) if r["pid"] != victim.pid]
    assert _peak(after, "k") <= flow.CAP


@pytest.mark.timeout(600)
@pytest.mark.serial
@pytest.mark.parametrize("fair_share", [True, False], ids=["fair", "unfair"])
async def test_a_tenants_flood_does_not_delay_another_tenant(
    queue: TaskQueue,
    env: dict[str, str],
    workers: list[WorkerProcess],
    tmp_path: Path,
    out: Path,
    prefix: str,
    fair_share: bool,
) -> None:
    """Tenant A enqueues 20,000 jobs of 50 ms, then tenant B 20: with fair share B's jobs start
    within 2 s (p95) while A's backlog drains; on a plain queue the same B jobs wait behind
    A's. No job is lost either way. The figures are printed (and appended to `FIGURES`)."""
    task, name = (flow.fair, "fair") if fair_share else (flow.unfair, "unfair")
    await spawn(workers, env, tmp_path, "-Q", name, "--concurrency", "100")
    began = time.time()
    assert (await queue.enqueue_many(task, [("A", n) for n in range(FLOOD_JOBS)])).ok
    flooded = time.time()
    assert (await queue.enqueue_many(task, [("B", n) for n in range(TENANT_B_JOBS)])).ok

    def started(tenant: str) -> list[dict[str, Any]]:
        return [r for r in records(out) if r["tenant"] == tenant]

    await wait_for(
        lambda: len(started("B")) == TENANT_B_JOBS,
        timeout=FLOOD_JOBS / 100 + 60,  # behind A at worst: 100 at once of 50 ms each
        what="tenant B's jobs to start",
        details=lambda: workers[0].output_tail(),
    )
    last_b = max(r["t"] for r in started("B"))
    a_before_b = sum(1 for r in started("A") if r["t"] <= last_b)
    waits = sorted(r["t"] - r["enq"] for r in started("B"))
    p95 = waits[math.ceil(0.95 * len(waits)) - 1]
    # A's backlog as the wait signal, heartbeats and `aqueue stats` read it: the shards'
    async with queue.session() as session:
        backlog = await ready_info(session.transport, session.names, name, fair=fair_share)
        in_work_queue = (await session.transport.queue_info(f"{prefix}.{name}")).ready
    await wait_for(
        lambda: len(records(out)) >= FLOOD_JOBS + TENANT_B_JOBS,
        timeout=FLOOD_JOBS / 100 + 120,
        what="tenant A's backlog to drain",
        details=lambda: f"{len(records(out))} started\n{workers[0].output_tail()}",
    )
    drained = max(r["t"] for r in records(out))
    figures = {
        "queue": name,
        "a_jobs": FLOOD_JOBS,
        "enqueue_a_s": round(flooded - began, 2),
        "b_wait_p50_s": round(waits[len(waits) // 2], 3),
        "b_wait_p95_s": round(p95, 3),
        "b_wait_max_s": round(waits[-1], 3),
        "a_started_before_last_b": a_before_b,
        "a_ready_after_b": backlog.ready,
        "drain_s": round(drained - began, 2),
    }
    print(f"fair share figures: {figures}")
    if FIGURES:
        async with await anyio.open_file(FIGURES, "a") as file:
            await file.write(orjson.dumps(figures).decode() + "\n")
    # none lost, none twice
    assert sorted(r["n"] for r in started("A")) == list(range(FLOOD_JOBS))
    assert sorted(r["n"] for r in started("B")) == list(range(TENANT_B_JOBS))
    async with queue.session() as session:
        assert (await session.transport.queue_info(f"{prefix}.{name}.dlq")).ready == 0
    if fair_share:
        assert p95 < 2.0, figures
        assert a_before_b < FLOOD_JOBS  # B ran while A's backlog was still draining
        assert in_work_queue == 0  # A's jobs wait in its shards, and are counted there
        assert backlog.ready > 0, figures
    else:
        assert a_before_b >= 0.95 * FLOOD_JOBS, figures  # B waited behind (nearly) all of A


def _peak(lines: list[dict[str, Any]], tenant: str) -> int:
    """The most jobs of `tenant` running at once, from their start and end records."""
    running = peak = 0
    events = sorted(
        (r["t"], 1 if r["event"] == "start" else -1) for r in lines if r.get("tenant") == tenant
    )
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak
