"""Retries and delays on the in-memory broker: they live in the broker, not in the worker."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import anyio
import pytest

from aqueue import Retry, TaskQueue, current_job
from aqueue._core import delays
from aqueue._core import wire as t
from aqueue._core.config import RETRY_SIGNAL_RETRIES
from aqueue._core.topology import TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._core.wire import Envelope, read_headers, retry_message
from aqueue._transport import Delivery
from aqueue._worker.outcome import Outcome
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker
from tests.helpers.workers import WAIT, wait_until


async def test_fails_twice_then_succeeds_with_backoff_gaps(memory_queue: TaskQueue) -> None:
    """With retries=2 a task failing twice runs 3 times, the gaps following the backoff."""
    runs: list[tuple[int, float]] = []

    @memory_queue.task(retries=2, backoff=0.1, jitter=0)
    async def flaky() -> str:
        runs.append((current_job().attempt, time.monotonic()))
        if len(runs) < 3:
            raise ConnectionError("try again")
        return "ok"

    async with memory_queue, running_worker(memory_queue) as worker:
        await memory_queue.enqueue(flaky)
        await wait_until(worker, lambda s: s.succeeded == 1)
    assert [attempt for attempt, _ in runs] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(runs)]
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2
    assert worker.statistics().retried == 2


async def test_exhausted_retries_dead_letter_with_history(memory_queue: TaskQueue) -> None:
    """After the last attempt the job is dead-lettered once, carrying every attempt's failure."""

    @memory_queue.task(retries=2, backoff=0.01)
    async def always_fails(n: int) -> None:
        raise ValueError(f"attempt {current_job().attempt}")

    async with memory_queue.session() as session, running_worker(memory_queue) as worker:
        job = await memory_queue.enqueue(always_fails, 1)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        dead = await session.transport.get(session.names.dead_letter_queue("default"))
        assert dead is not None
        assert await session.transport.get(session.names.dead_letter_queue("default")) is None
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


async def test_only_listed_exceptions_are_retried(memory_queue: TaskQueue) -> None:
    """An exception outside retry_on is dead-lettered after its first attempt."""
    attempts = 0

    @memory_queue.task(retries=5, backoff=0.01, retry_on=(ConnectionError,))
    async def wrong_input() -> None:
        nonlocal attempts
        attempts += 1
        raise KeyError("no such user")

    async with memory_queue, running_worker(memory_queue) as worker:
        await memory_queue.enqueue(wrong_input)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
    assert attempts == 1


async def test_retry_signal_sets_the_delay_and_counts_attempts(memory_queue: TaskQueue) -> None:
    """raise Retry(delay=...) reruns after that delay, until the retries are used up."""
    runs: list[float] = []

    @memory_queue.task(retries=1, backoff=100)
    async def poll() -> None:
        runs.append(time.monotonic())
        raise Retry(delay=0.15, reason="not ready")

    async with memory_queue.session() as session, running_worker(memory_queue) as worker:
        await memory_queue.enqueue(poll)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        dead = await session.transport.get(session.names.dead_letter_queue("default"))
    assert len(runs) == 2
    assert runs[1] - runs[0] >= 0.15
    assert dead is not None
    assert dead.headers[t.HEADER_DEAD_EXC_TYPE] == "aqueue.exceptions.Retry"


async def test_retry_signal_retries_under_the_default_settings(memory_queue: TaskQueue) -> None:
    """retries unset: a failure is not retried, but raise Retry() is, up to the documented cap."""
    asked: list[int] = []
    failed: list[int] = []

    @memory_queue.task
    async def poll() -> None:
        asked.append(current_job().attempt)
        raise Retry(delay=0.01)

    @memory_queue.task
    async def broken() -> None:
        failed.append(current_job().attempt)
        raise ValueError("not retried by default")

    async with memory_queue, running_worker(memory_queue) as worker:
        await memory_queue.enqueue(poll)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        await memory_queue.enqueue(broken)
        await wait_until(worker, lambda s: s.dead_lettered == 2)
    assert asked == list(range(1, RETRY_SIGNAL_RETRIES + 2))  # the first run, then 3 retries
    assert failed == [1]


async def test_retries_zero_never_retries_even_when_asked(memory_queue: TaskQueue) -> None:
    """retries=0 means never: an explicit Retry() is dead-lettered at once too."""
    asked: list[int] = []

    @memory_queue.task(retries=0)
    async def poll() -> None:
        asked.append(current_job().attempt)
        raise Retry(delay=0.01)

    async with memory_queue, running_worker(memory_queue) as worker:
        await memory_queue.enqueue(poll)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
    assert asked == [1]


async def test_options_set_at_enqueue_travel_with_the_job(memory_queue: TaskQueue) -> None:
    """with_options(retries=...) changes how the worker treats that job only."""
    attempts: list[int] = []

    @memory_queue.task
    async def sometimes() -> None:
        attempts.append(current_job().attempt)
        raise OSError("down")

    async with memory_queue, running_worker(memory_queue) as worker:
        await memory_queue.enqueue(sometimes.with_options(retries=2, backoff=0.01))
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        await memory_queue.enqueue(sometimes)
        await wait_until(worker, lambda s: s.dead_lettered == 2)
    assert attempts == [1, 2, 3, 1]


async def test_delayed_job_is_not_early(memory_queue: TaskQueue) -> None:
    """enqueue_in and enqueue_at jobs start no earlier than due."""
    started: dict[str, float] = {}

    @memory_queue.task
    async def mark(label: str) -> None:
        started[label] = time.time()

    async with memory_queue, running_worker(memory_queue) as worker:
        sent = time.time()
        await memory_queue.enqueue_in(0.3, mark, "in")
        await memory_queue.enqueue_at(
            dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2), mark, "at"
        )
        await memory_queue.enqueue_in(dt.timedelta(0), mark, "now")
        await wait_until(worker, lambda s: s.succeeded == 3)
    assert started["in"] - sent >= 0.3
    assert started["at"] - sent >= 0.2
    assert started["now"] < started["at"] < started["in"]


async def test_long_delay_does_not_hold_back_a_short_one(memory_queue: TaskQueue) -> None:
    """A one-hour delay published first does not delay a short one published after it."""
    ran = anyio.Event()

    @memory_queue.task
    async def job(label: str) -> None:
        if label == "short":
            ran.set()

    async with memory_queue, running_worker(memory_queue):
        await memory_queue.enqueue_in(3600, job, "long")
        await memory_queue.enqueue_in(0.05, job, "short")
        with anyio.fail_after(WAIT):
            await ran.wait()


@pytest.mark.parametrize(
    ("delay", "message"),
    [(-1, "delay must be"), (float("nan"), "delay must be"), (40 * 86400, "longest delay")],
)
async def test_bad_delays_are_refused(delay: float, message: str, memory_queue: TaskQueue) -> None:
    """Negative, NaN and too-long delays fail at enqueue, before publishing."""

    @memory_queue.task
    async def job() -> None: ...

    async with memory_queue:
        with pytest.raises(ConfigurationError, match=message):
            await memory_queue.enqueue_in(delay, job)
        with pytest.raises(ConfigurationError, match="naive"):
            await memory_queue.enqueue_at(dt.datetime.now(), job)  # noqa: DTZ005 - the point of the test
        with pytest.raises(ConfigurationError, match="not both"):
            await memory_queue.enqueue_many(job, [()], delay=1, eta=dt.datetime.now(dt.UTC))


async def test_delayed_jobs_wait_in_the_broker_not_the_worker(memory_queue: TaskQueue) -> None:
    """While a job waits, no worker holds it: it sits in a delay level queue."""

    @memory_queue.task
    async def later() -> None: ...

    async with memory_queue.session() as session, running_worker(memory_queue) as worker:
        await memory_queue.enqueue_in(60, later)
        waiting = [
            await session.transport.message_count(session.names.delay_queue(level))
            for level in range(delays.DELAY_LEVELS)
        ]
        assert sum(waiting) == 1
        assert worker.statistics().in_flight == 0


class _StoredDelivery(Delivery):
    """A delivery built by hand, for the message builders (which never settle it)."""

    def __init__(self, headers: dict[str, HeaderValue]) -> None:
        self.body = b'{"args": [], "kwargs": {}}'
        self.headers = headers
        self.message_id = "job-1"
        self.content_type = "application/json"
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
        read_headers(delivery.headers),
        queue="q",
        attempt=2,
        failure=Outcome("failed", ValueError("boom")).failure(2, 5_000),
        delay_ms=1000,
        now_ms=5_000,
    )
    assert not set(message.headers) & t.BROKER_HEADERS
    assert message.headers[t.HEADER_ATTEMPT] == 3
    assert message.headers[t.HEADER_ETA] == 6_000
    assert message.exchange == delays.entry_exchange(names)
    assert message.routing_key == delays.delay_routing_key(delays.delay_units(1_000), "q")
