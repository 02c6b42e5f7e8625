"""The instrumentation seam: publish hooks, job observers, and the job metrics they feed."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from types import TracebackType

import pytest

from aqueue import Instrumentation, JobContext, JobMetrics, JobObserver, TaskQueue
from aqueue._observability.hooks import NO_OBSERVER, Settlement, observe_job
from aqueue._observability.metrics import Counter, Gauge, Histogram
from aqueue._transport import Delivery, OutgoingMessage
from aqueue.exceptions import ConfigurationError, PublishError
from aqueue.testing import running_worker
from tests.helpers.jobs import publish_job
from tests.helpers.workers import wait_until


class Recorder(Instrumentation):
    """Writes down every hook call, under its name."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def publish(self, message: OutgoingMessage) -> AbstractContextManager[OutgoingMessage]:
        return self._publish(message)

    @contextmanager
    def _publish(self, message: OutgoingMessage) -> Iterator[OutgoingMessage]:
        seen = ",".join(str(message.headers.get(k)) for k in ("a", "b"))
        self.log.append(f"{self.name} publish {seen}")
        try:
            yield replace(message, headers={**message.headers, self.name: "x"})
        except Exception as exc:
            self.log.append(f"{self.name} publish failed {type(exc).__name__}")
            raise
        self.log.append(f"{self.name} published")

    def job(self, delivery: Delivery, queue: str) -> JobObserver:
        return _RecordingObserver(self.name, self.log)


class _RecordingObserver(JobObserver):
    __slots__ = ("log", "name")

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def __enter__(self) -> JobObserver:
        self.log.append(f"{self.name} enter")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.log.append(f"{self.name} exit")

    def started(self, job: JobContext) -> None:
        self.log.append(f"{self.name} started {job.task}")

    def finished(self, job: JobContext, error: BaseException | None, duration: float) -> None:
        assert duration >= 0
        self.log.append(f"{self.name} finished {type(error).__name__}")

    def settled(self, settlement: Settlement, error: BaseException | None) -> None:
        self.log.append(f"{self.name} {settlement}")


def test_no_instrumentation_observes_with_the_shared_no_op() -> None:
    """No hooks: no observer is made per job."""
    assert observe_job((), None, "default") is NO_OBSERVER  # type: ignore[arg-type]
    with NO_OBSERVER as observer:
        observer.settled("succeeded", None)


async def test_hooks_see_publishes_in_order_each_given_the_previous_message() -> None:
    """Publish hooks nest: the second sees what the first returned; the broker gets the last."""
    log: list[str] = []
    queue = TaskQueue(
        "memory://",
        prefix="t",
        telemetry=False,
        instrumentation=[Recorder("a", log), Recorder("b", log)],
    )

    @queue.task(name="job")
    async def job() -> None:
        return None

    async with queue.session() as session:
        await queue.enqueue(job)
        got = await session.transport.get("t.default")
        assert got is not None
        await got.ack()
        with pytest.raises(PublishError):
            await session.producer.publish(OutgoingMessage("no-such-exchange", "x", b"{}", "id"))
    assert got.headers["a"] == got.headers["b"] == "x"
    assert log == [
        "a publish None,None",
        "b publish x,None",
        "b published",
        "a published",
        "a publish None,None",
        "b publish x,None",
        "b publish failed Unroutable",
        "a publish failed Unroutable",
    ]


async def test_observers_follow_a_job_from_arrival_to_settlement() -> None:
    """Entered in order, told started → finished → settled, exited in reverse."""
    log: list[str] = []
    queue = TaskQueue("memory://", prefix="t", telemetry=False)
    queue.instrument(Recorder("a", log))
    queue.instrument(Recorder("b", log))

    @queue.task(name="fails", retries=0)
    async def fails() -> None:
        raise ValueError("no")

    async with queue, running_worker(queue) as worker:
        await queue.enqueue(fails)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
    jobs = [line for line in log if "publish" not in line]
    assert jobs == [
        "a enter",
        "b enter",
        "a started fails",
        "b started fails",
        "a finished ValueError",
        "b finished ValueError",
        "a dead-lettered",
        "b dead-lettered",
        "b exit",
        "a exit",
    ]


def test_instrument_refuses_what_is_not_an_instrumentation() -> None:
    """A clear error at the edge."""
    queue = TaskQueue("memory://", prefix="t", telemetry=False)
    with pytest.raises(ConfigurationError, match=r"must be an aqueue\.Instrumentation"):
        queue.instrument(object())  # type: ignore[arg-type]


async def test_an_instrumentation_added_to_an_open_queue_sees_its_publishes() -> None:
    """`instrument` reaches the producer of a queue that is open already."""
    log: list[str] = []
    queue = TaskQueue("memory://", prefix="t", telemetry=False)

    @queue.task(name="job")
    async def job() -> None:
        return None

    async with queue:
        queue.instrument(Recorder("late", log))
        await queue.enqueue(job)
    assert log == ["late publish None,None", "late published"]


class TallySink:
    """A `MetricSink` that counts in memory."""

    def __init__(self) -> None:
        self.counts: Tally[tuple[Counter, str]] = Tally()
        self.observed: Tally[tuple[Histogram, str]] = Tally()
        self.running: Tally[str] = Tally()
        self.peak = 0
        self.gauges: dict[tuple[Gauge, str], float] = {}

    def count(self, counter: Counter, task: str, queue: str) -> None:
        assert queue == "default"
        self.counts[counter, task] += 1

    def observe(self, histogram: Histogram, seconds: float, task: str, queue: str) -> None:
        assert seconds >= 0
        self.observed[histogram, task] += 1

    def in_flight(self, delta: int, task: str, queue: str) -> None:
        self.running[task] += delta
        self.peak = max(self.peak, sum(self.running.values()))

    def gauge(self, gauge: Gauge, value: float, queue: str) -> None:
        self.gauges[gauge, queue] = value


async def test_job_metrics_after_a_known_run() -> None:
    """5 succeed, 2 fail for good, 1 is retried once then succeeds, 1 names no known task."""
    sink = TallySink()
    queue = TaskQueue("memory://", prefix="t", telemetry=False, instrumentation=[JobMetrics(sink)])
    attempts = {"n": 0}

    @queue.task(name="ok")
    async def ok() -> None:
        return None

    @queue.task(name="bad", retries=0)
    async def bad() -> None:
        raise RuntimeError("bad")

    @queue.task(name="flaky", retries=1, backoff=0.01, jitter=0)
    async def flaky() -> None:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("once")

    async with queue.session() as session:
        await queue.enqueue_many(ok, [()] * 5)
        await queue.enqueue_many(bad, [()] * 2)
        await queue.enqueue(flaky)
        await publish_job(session, "ghost")
        async with running_worker(queue) as worker:
            await wait_until(worker, lambda s: s.succeeded == 6 and s.dead_lettered == 3)
    assert sink.counts == {
        ("started", "ok"): 5,
        ("succeeded", "ok"): 5,
        ("started", "bad"): 2,
        ("failed", "bad"): 2,
        ("dead_lettered", "bad"): 2,
        ("started", "flaky"): 2,
        ("failed", "flaky"): 1,
        ("retried", "flaky"): 1,
        ("succeeded", "flaky"): 1,
        ("failed", "ghost"): 1,
        ("dead_lettered", "ghost"): 1,
    }
    assert sink.observed == {
        ("duration", "ok"): 5,
        ("queue_wait", "ok"): 5,
        ("duration", "bad"): 2,
        ("queue_wait", "bad"): 2,
        ("duration", "flaky"): 2,
        ("queue_wait", "flaky"): 2,
    }
    assert set(sink.running.values()) == {0}
    assert sink.peak >= 1
