"""Flow control on the in-memory broker: job ids, unique jobs, rate limits, concurrency caps,
and the checks at the edge. (Against RabbitMQ and Redis: tests/integration/test_flow_control.py.)"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from aqueue import JobStatus, MemoryResultBackend, TaskQueue, WorkerSettings, current_job
from aqueue._core.flow import EnqueueOptions, fair_shards, gcra, parse_rate
from aqueue._core.wire import HEADER_DEFERRED, HEADER_RATE_RESERVED, deferral_message
from aqueue._results.flow import MemoryFlowStore
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [("100/m", 100, 60.0), ("5/s", 5, 1.0), ("1000/h", 1000, 3600.0), ("10/5s", 10, 5.0)],
)
def test_rate_strings_are_read(text: str, count: int, period: float) -> None:
    """``N/s``, ``N/m``, ``N/h`` and ``N/10s`` are starts per period."""
    rate = parse_rate(text)
    assert (rate.count, rate.period, rate.burst) == (count, period, 1)


@pytest.mark.parametrize("text", ["100", "100/d", "0/s", "/s", "ten/s", 100, "5/0s"])
def test_bad_rate_strings_fail_at_decoration(text: object) -> None:
    """A rate limit that is not ``N/unit`` fails where the decorator is written, saying so."""
    decorate: Any = TaskQueue("memory://").task  # run-time input, as from a caller without mypy
    with pytest.raises(ConfigurationError, match="rate_limit"):
        decorate(rate_limit=text)


def test_bad_burst_and_lonely_keys_fail_at_decoration() -> None:
    """A burst below 1, a burst or key without its limit, a cap of 0: all refused."""
    decorate: Any = TaskQueue("memory://").task
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rate_limit": "5/s", "rate_limit_burst": 0}, "rate_limit_burst"),
        ({"rate_limit_burst": 3}, "needs a rate_limit"),
        ({"rate_limit_key": "tenant"}, "needs a rate_limit"),
        ({"concurrency_key": "tenant"}, "needs a max_concurrency"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"fair_key": "not an identifier"}, "fair_key"),
    ]
    for options, match in cases:
        with pytest.raises(ConfigurationError, match=match):
            decorate(**options)


def test_a_key_naming_no_parameter_fails_at_decoration() -> None:
    """``rate_limit_key``, ``concurrency_key`` and ``fair_key`` must name a parameter."""
    decorate: Any = TaskQueue("memory://").task
    limits: dict[str, dict[str, Any]] = {
        "rate_limit_key": {"rate_limit": "5/s"},
        "concurrency_key": {"max_concurrency": 2},
        "fair_key": {},
    }

    async def job(customer: str) -> None: ...

    for option, extra in limits.items():
        with pytest.raises(ConfigurationError, match=f"{option}='tenant' names no parameter"):
            decorate(**{option: "tenant"}, **extra)(job)


def test_gcra_spaces_starts_and_allows_the_burst() -> None:
    """Each start is reserved: a burst of `burst` at once, then one per interval."""
    tat, waits = 0.0, []
    for _ in range(5):
        wait, tat = gcra(tat, 100.0, 0.5, 2)
        waits.append(wait)
    assert waits == [0.0, 0.0, 0.5, 1.0, 1.5]


def test_fair_shards_are_two_distinct_shards() -> None:
    """Every tenant gets two different shards, and tenants spread over all of them."""
    pairs = {fair_shards(str(n), n * 2654435761) for n in range(500)}
    assert all(a != b for a, b in pairs)
    assert {a for a, _ in pairs} == set(range(16))


def test_bad_job_ids_and_unique_options_fail_at_with_options() -> None:
    """A job id with spaces or over 200 characters, a window of 0, a key without a window."""
    for options in [
        {"job_id": "has space"},
        {"job_id": "x" * 201},
        {"job_id": ""},
        {"unique_for": 0},
        {"unique_key": "k"},
    ]:
        with pytest.raises(ConfigurationError):
            EnqueueOptions(**options)  # type: ignore[arg-type]


def test_deferral_keeps_the_attempt_and_counts_the_reason() -> None:
    """The deferred copy is the same attempt, due later, with its deferrals counted."""
    from dataclasses import dataclass

    from aqueue._core.topology import TopologyNames
    from aqueue._core.types import HeaderValue

    @dataclass
    class Received:
        body: bytes
        headers: dict[str, HeaderValue]
        message_id: str
        content_type: str = "application/json"

    received = Received(
        b'{"args":[],"kwargs":{}}',
        {"aqueue-task": "t", "aqueue-attempt": 2, HEADER_DEFERRED: {"rate": 1}},
        "j1",
    )
    message = deferral_message(
        TopologyNames("p"), received, destination="q", reason="rate", delay_ms=500, now_ms=1000
    )
    assert message.headers["aqueue-attempt"] == 2
    assert message.headers["aqueue-eta"] == 1500
    assert message.headers[HEADER_DEFERRED] == {"rate": 2}
    assert message.headers[HEADER_RATE_RESERVED] == 1
    assert message.message_id == "j1"


async def test_job_id_given_with_options_is_the_jobs_id() -> None:
    """``with_options(job_id=...)`` is the job's id, seen by the task; it never reaches it."""
    queue = TaskQueue("memory://")
    seen: list[str] = []

    @queue.task
    async def charge(order: int) -> None:
        seen.append(current_job().job_id)

    async with queue, running_worker(queue) as worker:
        job = await queue.enqueue(charge.with_options(job_id="order-42"), 42)
        with anyio.fail_after(5):
            await worker.wait_until(lambda stats: stats.succeeded == 1)
    assert job.job_id == "order-42"
    assert seen == ["order-42"]


async def test_unique_job_without_a_backend_fails_before_publishing() -> None:
    """``unique_for`` without a result backend raises at enqueue; nothing is published."""
    queue = TaskQueue("memory://")

    @queue.task
    async def report(day: str) -> None: ...

    async with queue.session() as session:
        with pytest.raises(ConfigurationError, match="needs a result backend"):
            await queue.enqueue(report.with_options(unique_for=60), "monday")
        assert await session.transport.message_count(session.names.work_queue("default")) == 0


async def test_enqueue_many_refuses_one_job_options() -> None:
    """A job id or a unique window is for one enqueue: ``enqueue_many`` says so."""
    queue = TaskQueue("memory://", results=MemoryResultBackend())

    @queue.task
    async def report(day: str) -> None: ...

    async with queue:
        choices: list[dict[str, Any]] = [{"job_id": "j"}, {"unique_for": 5.0}]
        for options in choices:
            with pytest.raises(ConfigurationError, match="enqueue_many"):
                await queue.enqueue_many(report.with_options(**options), [("mon",)])


async def test_unique_job_enqueued_concurrently_is_published_once() -> None:
    """50 concurrent enqueues of one unique job: one message, one job id for every caller."""
    queue = TaskQueue("memory://", results=MemoryResultBackend())

    @queue.task
    async def report(day: str) -> None: ...

    unique = report.with_options(unique_for=60)
    ids: list[str] = []
    async with queue.session() as session:

        async def enqueue() -> None:
            ids.append((await queue.enqueue(unique, "monday")).job_id)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(enqueue)
        other = await queue.enqueue(unique, "tuesday")
        by_key = await queue.enqueue(report.with_options(unique_for=60, unique_key="k"), "a")
        again = await queue.enqueue(report.with_options(unique_for=60, unique_key="k"), "b")
        count = await session.transport.message_count(session.names.work_queue("default"))
    assert len(set(ids)) == 1
    assert other.job_id != ids[0]
    assert again.job_id == by_key.job_id
    assert count == 3


async def test_rate_limited_jobs_are_deferred_not_failed(caplog: pytest.LogCaptureFixture) -> None:
    """20 jobs at 40/s: each starts in its own slot; the deferred ones are not failures."""
    queue = TaskQueue("memory://", results=MemoryResultBackend())
    starts: list[float] = []

    @queue.task(rate_limit="40/s")
    async def call_api(n: int) -> None:
        starts.append(time.monotonic())

    caplog.set_level(logging.WARNING, logger="aqueue.worker")
    async with queue, running_worker(queue) as worker:
        batch = await queue.enqueue_many(call_api, [(n,) for n in range(20)])
        with anyio.fail_after(10):
            await worker.wait_until(lambda stats: stats.succeeded == 20)
        stats = worker.statistics()
        state = await batch.jobs[-1].state()
    assert stats.failed == 0
    assert stats.deferred_rate >= 15
    assert state is not None
    assert state.status is JobStatus.SUCCEEDED
    assert state.attempt == 1
    starts.sort()
    # 19 intervals of 25 ms: the last start at least ~0.45 s after the first
    assert starts[-1] - starts[0] >= 0.4


async def test_without_backend_the_rate_limit_is_per_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No result backend: the limit still holds, per worker, and the worker says so."""
    queue = TaskQueue("memory://")

    @queue.task(rate_limit="50/s")
    async def call_api(n: int) -> None: ...

    caplog.set_level(logging.WARNING, logger="aqueue.worker")
    async with queue, running_worker(queue) as worker:
        await queue.enqueue_many(call_api, [(n,) for n in range(5)])
        with anyio.fail_after(10):
            await worker.wait_until(lambda stats: stats.succeeded == 5)
        assert worker.statistics().deferred_rate >= 3
    assert "holds per worker process" in caplog.text


async def test_concurrency_cap_holds_per_key() -> None:
    """``max_concurrency=2`` per tenant: never more than 2 of one tenant run at once."""
    queue = TaskQueue("memory://", results=MemoryResultBackend())
    running: dict[str, int] = {}
    peak: dict[str, int] = {}

    @queue.task(max_concurrency=2, concurrency_key="tenant")
    async def export(tenant: str, n: int) -> None:
        running[tenant] = running.get(tenant, 0) + 1
        peak[tenant] = max(peak.get(tenant, 0), running[tenant])
        await anyio.sleep(0.05)
        running[tenant] -= 1

    calls = [(tenant, n) for n in range(6) for tenant in ("a", "b")]
    async with queue, running_worker(queue, WorkerSettings(concurrency=20)) as worker:
        await queue.enqueue_many(export, calls)
        with anyio.fail_after(20):
            await worker.wait_until(lambda stats: stats.succeeded == 12)
        stats = worker.statistics()
    assert peak == {"a": 2, "b": 2}
    assert stats.failed == 0
    assert stats.deferred_concurrency > 0


async def test_a_slot_of_a_dead_run_expires() -> None:
    """A slot not renewed is free again after its lease: a dead worker leaks nothing."""
    store = MemoryFlowStore()
    assert await store.take_slot("t|a", "dead", limit=1, ttl=0.1)
    assert not await store.take_slot("t|a", "next", limit=1, ttl=0.1)
    await anyio.sleep(0.15)  # the lease running out is the behaviour under test
    assert await store.take_slot("t|a", "next", limit=1, ttl=0.1)


async def test_stats_shows_each_limiters_state() -> None:
    """``aqueue stats``'s limiter rows: starts reserved ahead, and jobs running per key."""
    from aqueue._cli.stats import limiter_rows

    backend = MemoryResultBackend()
    queue = TaskQueue("memory://", results=backend)

    @queue.task(rate_limit="2/s")
    async def call_api() -> None: ...

    @queue.task(max_concurrency=3, concurrency_key="tenant")
    async def export(tenant: str) -> None: ...

    store = backend.flow_store()
    for _ in range(3):
        await store.take_rate(call_api.name, call_api.options.flow.rate)  # type: ignore[arg-type]
    await store.take_slot(f"{export.name}|acme", "run-1", limit=3, ttl=30)
    rows = await limiter_rows(queue, backend)
    by_kind = {row["kind"]: row for row in rows}
    assert by_kind["rate"]["task"] == call_api.name
    assert by_kind["rate"]["limit"] == "2/s"
    assert 1.0 <= by_kind["rate"]["value"] <= 1.5
    assert by_kind["concurrency"] == {
        "task": export.name,
        "key": "acme",
        "kind": "concurrency",
        "limit": 3,
        "value": 1,
    }


async def test_parked_jobs_of_a_stopping_worker_keep_their_reserved_start() -> None:
    """1/s: the first job runs, the next two are parked for their starts (1 s and 2 s on); the
    worker stops at once and hands them back; the next worker runs each once, not before its
    reserved start."""
    queue = TaskQueue("memory://")
    runs: list[tuple[int, float, float]] = []

    @queue.task(rate_limit="1/s")
    async def call_api(n: int) -> None:
        job = current_job()
        runs.append((n, time.time(), job.due_at))

    async with queue:
        async with running_worker(queue) as worker:
            assert (await queue.enqueue_many(call_api, [(n,) for n in range(3)])).ok
            with anyio.fail_after(10):
                await worker.wait_until(lambda s: s.succeeded == 1 and s.deferred_rate == 2)
        assert len(runs) == 1
        async with running_worker(queue) as worker:
            with anyio.fail_after(10):
                await worker.wait_until(lambda s: s.succeeded == 2)
    assert sorted(n for n, _, _ in runs) == [0, 1, 2]
    first_start = runs[0][1]
    for _, started, due in runs[1:]:
        assert due > first_start + 0.5  # a reserved start, not the enqueue time
        assert started >= due - 0.003  # released within 2 ms of its start (PARK_AT_LEAST)
