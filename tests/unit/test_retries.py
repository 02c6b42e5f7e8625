"""Retries and delays on the in-memory broker: they live in the broker, not in the worker."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from aqueue import Retry, TaskQueue, Worker, WorkerSettings, WorkerStatistics, current_job
from aqueue._core import topology as t
from aqueue._core.topology import TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._core.wire import Envelope, read_headers
from aqueue._transport import Delivery
from aqueue._worker.settle import Outcome, retry_message
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker
from tests.unit.test_worker import WAIT


def running(queue: TaskQueue, **settings: object) -> AbstractAsyncContextManager[Worker]:
    return running_worker(queue, WorkerSettings(**settings))  # type: ignore[arg-type]


async def until(worker: Worker, condition: Callable[[WorkerStatistics], bool]) -> None:
    with anyio.fail_after(WAIT):
        await worker.wait_until(condition)


async def test_fails_twice_then_succeeds_with_backoff_gaps() -> None:
    """With retries=2 a task failing twice runs 3 times, the gaps following the backoff."""
    queue = TaskQueue("memory://", prefix="t")
    runs: list[tuple[int, float]] = []

    @queue.task(retries=2, backoff=0.1, jitter=0)
    async def flaky() -> str:
        runs.append((current_job().attempt, time.monotonic()))
        if len(runs) < 3:
            raise ConnectionError("try again")
        return "ok"

    async with queue, running(queue) as worker:
        await queue.enqueue(flaky)
        await until(worker, lambda s: s.succeeded == 1)
    assert [attempt for attempt, _ in runs] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(runs)]
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2
    assert worker.statistics().retried == 2


async def test_exhausted_retries_dead_letter_with_history() -> None:
    """After the last attempt the job is dead-lettered once, carrying every attempt's failure."""
    queue = TaskQueue("memory://", prefix="t")

    @queue.task(retries=2, backoff=0.01)
    async def always_fails(n: int) -> None:
        raise ValueError(f"attempt {current_job().attempt}")

    async with queue, running(queue) as worker:
        job = await queue.enqueue(always_fails, 1)
        await until(worker, lambda s: s.dead_lettered == 1)
        dead = await queue.transport.get(queue.names.dead_letter_queue("default"))
        assert dead is not None
        assert await queue.transport.get(queue.names.dead_letter_queue("default")) is None
    assert dead.message_id == job.job_id
    assert dead.headers[t.HEADER_DEAD_ATTEMPTS] == 3
    history = read_headers(dead.headers).history
    assert [(f.attempt, f.type, f.message) for f in history] == [
        (1, "ValueError", "attempt 1"),
        (2, "ValueError", "attempt 2"),
        (3, "ValueError", "attempt 3"),
    ]
    assert dead.headers[t.HEADER_DEAD_FIRST_FAILED_AT] == history[0].at_ms
    assert "x-death" not in dead.headers


async def test_only_listed_exceptions_are_retried() -> None:
    """An exception outside retry_on is dead-lettered after its first attempt."""
    queue = TaskQueue("memory://", prefix="t")
    attempts = 0

    @queue.task(retries=5, backoff=0.01, retry_on=(ConnectionError,))
    async def wrong_input() -> None:
        nonlocal attempts
        attempts += 1
        raise KeyError("no such user")

    async with queue, running(queue) as worker:
        await queue.enqueue(wrong_input)
        await until(worker, lambda s: s.dead_lettered == 1)
    assert attempts == 1


async def test_retry_signal_sets_the_delay_and_counts_attempts() -> None:
    """raise Retry(delay=...) reruns after that delay, until the retries are used up."""
    queue = TaskQueue("memory://", prefix="t")
    runs: list[float] = []

    @queue.task(retries=1, backoff=100)
    async def poll() -> None:
        runs.append(time.monotonic())
        raise Retry(delay=0.15, reason="not ready")

    async with queue, running(queue) as worker:
        await queue.enqueue(poll)
        await until(worker, lambda s: s.dead_lettered == 1)
        dead = await queue.transport.get(queue.names.dead_letter_queue("default"))
    assert len(runs) == 2
    assert runs[1] - runs[0] >= 0.15
    assert dead is not None
    assert dead.headers[t.HEADER_DEAD_EXC_TYPE] == "aqueue.exceptions.Retry"


async def test_options_set_at_enqueue_travel_with_the_job() -> None:
    """with_options(retries=...) changes how the worker treats that job only."""
    queue = TaskQueue("memory://", prefix="t")
    attempts: list[int] = []

    @queue.task
    async def sometimes() -> None:
        attempts.append(current_job().attempt)
        raise OSError("down")

    async with queue, running(queue) as worker:
        await queue.enqueue(sometimes.with_options(retries=2, backoff=0.01))
        await until(worker, lambda s: s.dead_lettered == 1)
        await queue.enqueue(sometimes)
        await until(worker, lambda s: s.dead_lettered == 2)
    assert attempts == [1, 2, 3, 1]


async def test_delayed_job_is_not_early() -> None:
    """enqueue_in and enqueue_at jobs start no earlier than due."""
    queue = TaskQueue("memory://", prefix="t")
    started: dict[str, float] = {}

    @queue.task
    async def mark(label: str) -> None:
        started[label] = time.time()

    async with queue, running(queue) as worker:
        sent = time.time()
        await queue.enqueue_in(0.3, mark, "in")
        await queue.enqueue_at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2), mark, "at")
        await queue.enqueue_in(dt.timedelta(0), mark, "now")
        await until(worker, lambda s: s.succeeded == 3)
    assert started["in"] - sent >= 0.3
    assert started["at"] - sent >= 0.2
    assert started["now"] < started["at"] < started["in"]


async def test_long_delay_does_not_hold_back_a_short_one() -> None:
    """A one-hour delay published first does not delay a short one published after it."""
    queue = TaskQueue("memory://", prefix="t")
    ran = anyio.Event()

    @queue.task
    async def job(label: str) -> None:
        if label == "short":
            ran.set()

    async with queue, running(queue):
        await queue.enqueue_in(3600, job, "long")
        await queue.enqueue_in(0.05, job, "short")
        with anyio.fail_after(WAIT):
            await ran.wait()


@pytest.mark.parametrize(
    ("delay", "message"),
    [(-1, "delay must be"), (float("nan"), "delay must be"), (40 * 86400, "longest delay")],
)
async def test_bad_delays_are_refused(delay: float, message: str) -> None:
    """Negative, NaN and too-long delays fail at enqueue, before publishing."""
    queue = TaskQueue("memory://", prefix="t")

    @queue.task
    async def job() -> None: ...

    async with queue:
        with pytest.raises(ConfigurationError, match=message):
            await queue.enqueue_in(delay, job)
        with pytest.raises(ConfigurationError, match="naive"):
            await queue.enqueue_at(dt.datetime.now(), job)  # noqa: DTZ005 - the point of the test
        with pytest.raises(ConfigurationError, match="not both"):
            await queue.enqueue_many(job, [()], delay=1, eta=dt.datetime.now(dt.UTC))


async def test_delayed_jobs_wait_in_the_broker_not_the_worker() -> None:
    """While a job waits, no worker holds it: it sits in a delay level queue."""
    queue = TaskQueue("memory://", prefix="t")

    @queue.task
    async def later() -> None: ...

    async with queue, running(queue) as worker:
        await queue.enqueue_in(60, later)
        waiting = [
            await queue.transport.message_count(queue.names.delay_queue(level))
            for level in range(t.DELAY_LEVELS)
        ]
        assert sum(waiting) == 1
        assert worker.statistics().in_flight == 0


class _StoredDelivery(Delivery):
    """A delivery built by hand, for the message builders (which never settle it)."""

    def __init__(self, headers: dict[str, HeaderValue]) -> None:
        self.body = b'{"args": [], "kwargs": {}}'
        self.headers = headers
        self.message_id = "job-1"
        self.routing_key = "ignored"
        self.queue = "t.q"
        self.redelivered = False

    async def ack(self) -> None:
        raise NotImplementedError

    async def reject(self, *, requeue: bool) -> None:
        raise NotImplementedError


def test_retry_message_is_fresh() -> None:
    """A retry copy drops broker headers and rebuilds its routing key from scratch."""
    headers = Envelope(job_id="job-1", task="x", queue="q", attempt=2).headers()
    headers |= {"x-death": [{"count": 1}], "x-first-death-reason": "expired", "x-delivery-count": 3}
    delivery = _StoredDelivery(headers)
    names = TopologyNames("t")
    message = retry_message(
        names,
        delivery,
        "q",
        read_headers(delivery.headers),
        attempt=2,
        outcome=Outcome("failed", ValueError("boom")),
        delay_ms=1000,
        now_ms=5_000,
    )
    assert not set(message.headers) & t.BROKER_HEADERS
    assert message.headers[t.HEADER_ATTEMPT] == 3
    assert message.headers[t.HEADER_ETA] == 6_000
    assert message.exchange == names.delay_entry_exchange
    assert message.routing_key == t.delay_routing_key(100, "q")
