"""The worker on the in-memory transport: settle rules, dead letters, concurrency, shutdown."""

from __future__ import annotations

import threading

import anyio
import pytest

from aqueue import JobContext, TaskQueue, Worker, WorkerSettings, current_job
from aqueue._core import wire as t
from aqueue._tasks.middleware import CallNext
from aqueue._transport import Delivery, OutgoingMessage
from aqueue._worker.runner import JobRunner
from aqueue._worker.threads import ThreadBudgets
from aqueue.exceptions import ConfigurationError, EncodeError
from aqueue.testing import running_worker
from tests.helpers.jobs import job_envelope
from tests.helpers.workers import WAIT, drain, wait_until


async def wait_event(event: anyio.Event) -> None:
    with anyio.fail_after(WAIT):
        await event.wait()


async def test_async_and_sync_tasks_run_and_are_acked(memory_queue: TaskQueue) -> None:
    """Async tasks run on the loop, sync tasks in a thread; both are acked."""
    seen: list[tuple[str, object]] = []
    loop_thread = threading.get_ident()

    @memory_queue.task
    async def add(a: int, b: int) -> int:
        seen.append(("add", a + b))
        return a + b

    @memory_queue.task
    def blocking(x: int) -> None:
        seen.append(("thread", threading.get_ident() != loop_thread))

    async with memory_queue.session() as session:
        await memory_queue.enqueue(add, 1, 2)
        await memory_queue.enqueue(blocking, 1)
        async with running_worker(memory_queue) as worker:
            await wait_until(worker, lambda s: s.succeeded == 2)
        assert sorted(seen) == [("add", 3), ("thread", True)]
        assert await session.transport.message_count("t.default") == 0


async def test_current_job_inside_sync_and_async_tasks(memory_queue: TaskQueue) -> None:
    """current_job() gives the job id and attempt inside both kinds of task."""
    ids: list[tuple[str, int]] = []

    @memory_queue.task
    async def a() -> None:
        ids.append((current_job().job_id, current_job().attempt))

    @memory_queue.task
    def s() -> None:
        ids.append((current_job().job_id, current_job().attempt))

    async with memory_queue, running_worker(memory_queue) as worker:
        jobs = [await memory_queue.enqueue(a), await memory_queue.enqueue(s)]
        await wait_until(worker, lambda s: s.succeeded == 2)
    assert sorted(ids) == sorted((job.job_id, 1) for job in jobs)
    with pytest.raises(LookupError, match="outside"):
        current_job()


async def _dead_letters(queue: TaskQueue, logical: str = "default") -> list[dict[str, object]]:
    """Take (and ack) the dead letters of a logical queue: body, id and headers of each."""
    async with queue.session() as session:
        taken = await drain(session.transport, session.names.dead_letter_queue(logical))
    return [{"body": d.body, "id": d.message_id, **d.headers} for d in taken]


async def _only_dead_letter(queue: TaskQueue) -> dict[str, object]:
    """Run `queue`'s worker until one job is dead-lettered; return that dead letter."""
    async with running_worker(queue) as worker:
        await wait_until(worker, lambda s: s.dead_lettered == 1)
    [dead] = await _dead_letters(queue)
    return dead


async def test_failure_goes_to_dead_letter_queue_with_reason(memory_queue: TaskQueue) -> None:
    """A task that raises is dead-lettered once, with type, message, traceback and attempts."""

    @memory_queue.task
    async def broken(x: int) -> None:
        raise ValueError(f"bad {x}")

    async with memory_queue:
        job = await memory_queue.enqueue(broken, 7)
        dead = await _only_dead_letter(memory_queue)
    assert dead["id"] == job.job_id
    assert dead[t.HEADER_DEAD_REASON] == "failed"
    assert dead[t.HEADER_DEAD_EXC_TYPE] == "ValueError"
    assert dead[t.HEADER_DEAD_EXC_MESSAGE] == "bad 7"
    assert "raise ValueError" in str(dead[t.HEADER_DEAD_TRACEBACK])
    assert dead[t.HEADER_DEAD_ATTEMPTS] == 1
    assert dead[t.HEADER_DEAD_QUEUE] == "default"
    assert dead[t.HEADER_TASK] == broken.name


async def test_timeout_cancels_the_job_and_dead_letters_it(memory_queue: TaskQueue) -> None:
    """A job over its timeout is cancelled and dead-lettered with reason 'timeout'."""
    cancelled = anyio.Event()

    @memory_queue.task(timeout=0.05)
    async def slow() -> None:
        try:
            await anyio.sleep(WAIT)
        finally:
            cancelled.set()

    async with memory_queue:
        await memory_queue.enqueue(slow)
        dead = await _only_dead_letter(memory_queue)
    assert cancelled.is_set()
    assert dead[t.HEADER_DEAD_REASON] == "timeout"


async def test_own_timeout_error_counts_as_failure_not_timeout(memory_queue: TaskQueue) -> None:
    """A TimeoutError raised by the task itself is a plain failure."""

    @memory_queue.task(timeout=30)
    async def raises() -> None:
        raise TimeoutError("upstream")

    async with memory_queue:
        await memory_queue.enqueue(raises)
        dead = await _only_dead_letter(memory_queue)
    assert dead[t.HEADER_DEAD_REASON] == "failed"


async def test_garbage_and_unknown_tasks_are_dead_lettered_and_worker_goes_on(
    memory_queue: TaskQueue,
) -> None:
    """Undecodable bodies and unknown task names are dead-lettered; good jobs still run."""
    ran = anyio.Event()

    @memory_queue.task
    async def good() -> None:
        ran.set()

    async with memory_queue.session() as session, running_worker(memory_queue) as worker:
        publish = session.transport.publish
        headers = {t.HEADER_TASK: good.name}
        await publish(OutgoingMessage("t", "default", b"\x00garbage", "g", headers), timeout=5)
        unknown = {t.HEADER_TASK: "nobody.knows"}
        await publish(OutgoingMessage("t", "default", b"{}", "u", unknown), timeout=5)
        await memory_queue.enqueue(good)
        await wait_until(worker, lambda s: s.dead_lettered == 2 and ran.is_set())
        dead = {d["id"]: d for d in await _dead_letters(memory_queue)}
    assert dead["g"][t.HEADER_DEAD_REASON] == "decode-error"
    assert dead["g"]["body"] == b"\x00garbage"
    assert dead["u"][t.HEADER_DEAD_REASON] == "unknown-task"
    assert dead["u"][t.HEADER_DEAD_EXC_TYPE] == "aqueue.exceptions.UnknownTaskError"
    assert "nobody.knows" in str(dead["u"][t.HEADER_DEAD_EXC_MESSAGE])


class _Undecodable(Delivery):
    """A delivery whose properties the AMQP transport had to salvage, delivered again."""

    def __init__(self, task: str) -> None:
        self.body = b'{"args": [], "kwargs": {}}'
        self.headers = {t.HEADER_TASK: task, "x-delivery-count": 2}
        self.message_id = "id-\\xff"
        self.content_type = "application/json"
        self.routing_key = "default"
        self.queue = "t.default"
        self.redelivered = True
        self.undecodable = "message_id b'id-\\xff' is not UTF-8"
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def reject(self, *, requeue: bool) -> None:
        self.settled.append(f"reject(requeue={requeue})")


async def test_undecodable_properties_are_dead_lettered_not_run_nor_quarantined(
    memory_queue: TaskQueue,
) -> None:
    """Even redelivered (it killed connections before the guard), it goes to the DLQ once."""
    ran: list[str] = []

    @memory_queue.task
    async def job() -> None:
        ran.append("ran")

    delivery = _Undecodable(job.name)
    async with memory_queue.session() as session:
        await session.producer.declare_queue("default")
        runner = JobRunner(session, memory_queue.tasks, (), threads=ThreadBudgets(lambda queue: 1))
        settlement = await runner.process(delivery, "default")
        quarantined = await session.transport.message_count(
            session.names.quarantine_queue("default")
        )
    assert settlement == "dead-lettered"
    assert delivery.settled == ["ack"]
    assert ran == []
    assert quarantined == 0
    [dead] = await _dead_letters(memory_queue)
    assert dead[t.HEADER_DEAD_REASON] == "undecodable-properties"
    assert dead["id"] == "id-\\xff"
    assert "is not UTF-8" in str(dead[t.HEADER_DEAD_EXC_MESSAGE])
    assert dead[t.HEADER_TASK] == job.name


async def test_concurrency_limit_is_respected(memory_queue: TaskQueue) -> None:
    """No more than `concurrency` jobs run at once, and they do overlap up to it."""
    running_now = 0
    peak = 0

    @memory_queue.task
    async def hold() -> None:
        nonlocal running_now, peak
        running_now += 1
        peak = max(peak, running_now)
        await anyio.sleep(0.02)
        running_now -= 1

    async with memory_queue:
        await memory_queue.enqueue_many(hold, [() for _ in range(40)])
        async with running_worker(memory_queue, WorkerSettings(concurrency=5)) as worker:
            await wait_until(worker, lambda s: s.succeeded == 40)
    assert peak == 5


@pytest.mark.parametrize(
    ("stops", "succeeded", "queued"),
    [
        pytest.param(1, 3, 7, id="graceful-finishes-running-jobs"),
        pytest.param(2, 0, 10, id="second-cancels-running-jobs"),
    ],
)
async def test_stop_leaves_unsettled_jobs_queued(
    memory_queue: TaskQueue, stops: int, succeeded: int, queued: int
) -> None:
    """stop() lets running jobs finish and leaves unstarted ones queued; a second stop()
    cancels running jobs, which are not acked and go back to the queue."""
    started = 0
    three_started = anyio.Event()
    release = anyio.Event()

    @memory_queue.task
    async def wait_for_release() -> None:
        nonlocal started
        started += 1
        if started == 3:
            three_started.set()
        await release.wait()

    async with memory_queue.session() as session:
        await memory_queue.enqueue_many(wait_for_release, [() for _ in range(10)])
        worker = Worker(memory_queue, WorkerSettings(concurrency=3, grace=WAIT))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await wait_event(three_started)
            for _ in range(stops):
                worker.stop()
            release.set()  # too late for cancelled jobs: they are gone from the worker
        stats = worker.statistics()
        assert (stats.succeeded, stats.failed) == (succeeded, 0)
        assert await session.transport.message_count("t.default") == queued


async def test_middleware_wraps_every_job_outermost_first() -> None:
    """Middleware run as an onion around the task and see its result."""
    calls: list[str] = []

    async def outer(job: JobContext, call_next: CallNext) -> object:
        calls.append("outer-in")
        result = await call_next()
        calls.append(f"outer-out:{result}")
        return result

    async def inner(job: JobContext, call_next: CallNext) -> object:
        calls.append(f"inner:{job.task.rsplit('.', 1)[-1]}")
        return await call_next()

    queue = TaskQueue("memory://", prefix="t", middleware=[outer, inner])

    @queue.task
    async def answer() -> int:
        calls.append("task")
        return 42

    async with queue, running_worker(queue) as worker:
        await queue.enqueue(answer)
        await wait_until(worker, lambda s: s.succeeded == 1)
    assert calls == ["outer-in", "inner:answer", "task", "outer-out:42"]


async def test_enqueue_refuses_bad_input_before_publishing() -> None:
    """Non-JSON arguments, oversized jobs and closed queues fail at enqueue; nothing is sent."""
    queue = TaskQueue("memory://", prefix="t", max_message_bytes=100)

    @queue.task
    async def take(value: object) -> None: ...

    with pytest.raises(ConfigurationError, match="not open"):
        await queue.enqueue(take, 1)
    async with queue.session() as session:
        with pytest.raises(EncodeError, match=r"args\[0\] of type set"):
            await queue.enqueue(take, {1, 2})
        with pytest.raises(EncodeError, match="over the limit"):
            await queue.enqueue(take, "x" * 200)
        with pytest.raises(EncodeError, match=r"call 1: argument args\[0\]"):
            await queue.enqueue_many(take, [(1,), (object(),)])
        assert await session.transport.message_count("t.default") == 0


async def test_enqueue_many_returns_a_handle_per_job(memory_queue: TaskQueue) -> None:
    """enqueue_many confirms every job and returns their handles in order."""

    @memory_queue.task
    async def echo(x: int, *, tag: str = "") -> None: ...

    async with memory_queue.session() as session:
        result = await memory_queue.enqueue_many(echo, [(1,), {"x": 2, "tag": "b"}, [3]])
        assert result.ok
        assert result.confirmed == 3
        assert len({job.job_id for job in result.jobs}) == 3
        assert await session.transport.message_count("t.default") == 3


async def test_a_slow_queue_does_not_starve_another(memory_queue: TaskQueue) -> None:
    """Each queue has its own runners: jobs stuck on one queue leave another's running."""
    release = anyio.Event()
    fast_done = anyio.Event()

    @memory_queue.task(queue="slow")
    async def slow() -> None:
        await release.wait()

    @memory_queue.task(queue="fast")
    async def fast() -> None:
        fast_done.set()

    async with memory_queue:
        await memory_queue.enqueue_many(slow, [() for _ in range(10)])
        settings = WorkerSettings(concurrency=2, grace=WAIT)
        async with running_worker(memory_queue, settings) as worker:
            await memory_queue.enqueue(fast)
            await wait_event(fast_done)
            release.set()
            await wait_until(worker, lambda s: s.succeeded == 11)


async def test_enqueue_many_takes_a_generator_even_when_it_declares_first(
    memory_queue: TaskQueue,
) -> None:
    """A generator of calls is read once: a first-time declaration does not empty the batch."""

    @memory_queue.task
    async def echo(x: int) -> None: ...

    async with memory_queue.session() as session:
        elsewhere = echo.with_options(queue="not-declared-at-open")
        result = await memory_queue.enqueue_many(elsewhere, ((i,) for i in range(5)))
        assert result.confirmed == 5
        assert await session.transport.message_count("t.not-declared-at-open") == 5


async def test_a_dead_letter_the_transport_refuses_is_rejected_to_the_dead_letter_queue(
    memory_queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead-letter copy cannot be sent (EncodeError): the job is rejected without requeue,
    so the broker dead-letters the original, and the worker goes on."""
    ran = anyio.Event()

    @memory_queue.task(name="bad")
    async def bad() -> None:
        raise ValueError("boom")

    @memory_queue.task(name="good")
    async def good() -> None:
        ran.set()

    async with memory_queue.session() as session:
        publish = session.producer.publish
        names = session.names

        async def refuse_dead_letters(message: OutgoingMessage, *, patient: bool = False) -> None:
            if message.exchange == names.dead_letter_exchange:
                raise EncodeError("header 'x' cannot be sent")
            await publish(message, patient=patient)

        monkeypatch.setattr(session.producer, "publish", refuse_dead_letters)
        async with running_worker(memory_queue) as worker:
            job = await memory_queue.enqueue(bad)
            await wait_until(worker, lambda s: s.dead_lettered == 1)
            await memory_queue.enqueue(good)
            await wait_event(ran)
        [letter] = await memory_queue.dead_letters().list()
    assert (letter.job_id, letter.reason, letter.source) == (job.job_id, "rejected", "broker")


async def test_a_job_that_came_back_too_big_to_quarantine_is_dead_lettered(
    memory_queue: TaskQueue,
) -> None:
    """A delivery that came back with headers too big to copy cannot run alone: it is
    dead-lettered as ``crashed``, shrunk to fit, and never runs."""
    ran: list[str] = []

    @memory_queue.task(name="good")
    async def good() -> None:
        ran.append(current_job().job_id)

    async with memory_queue.session() as session, running_worker(memory_queue) as worker:
        headers = {
            **job_envelope("x" * 125_000).headers(),
            "x-delivery-count": 1,  # it says it came back once
        }
        message = OutgoingMessage(session.names.exchange, "default", b"{}", "big", headers)
        await session.transport.publish(message, timeout=5)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        after = await memory_queue.enqueue(good)
        await wait_until(worker, lambda s: s.succeeded == 1)
        [letter] = await memory_queue.dead_letters().list()
    assert ran == [after.job_id]
    assert (letter.job_id, letter.reason) == ("big", "crashed")
    assert "cannot be quarantined" in (letter.exception_message or "")
    assert t.HEADER_TASK in str(letter.headers[t.HEADER_TRUNCATED])
