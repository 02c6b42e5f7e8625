"""Results and workflows on the in-memory broker and result backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from aqueue import TaskQueue, Worker, WorkerSettings, WorkerStatistics, current_job
from aqueue._results import JobStatus, MemoryResultBackend
from aqueue._workflows import assign_ids, chain, chord, final_ids, group
from aqueue.exceptions import ConfigurationError, JobFailed, ResultTimeout

WAIT = 10.0


@asynccontextmanager
async def running(queue: TaskQueue) -> AsyncIterator[Worker]:
    worker = Worker(queue, WorkerSettings(concurrency=20))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(WAIT):
            await worker.wait_started()
        yield worker
        worker.stop()


async def until(worker: Worker, condition: Callable[[WorkerStatistics], bool]) -> None:
    with anyio.fail_after(WAIT):
        await worker.wait_until(condition)


def make_queue() -> TaskQueue:
    return TaskQueue("memory://", prefix="t", results=MemoryResultBackend())


async def test_result_and_status_of_a_job() -> None:
    """job.result() returns the value; status goes from queued to succeeded."""
    queue = make_queue()
    gate = anyio.Event()

    @queue.task
    async def add(a: int, b: int) -> int:
        await gate.wait()
        return a + b

    async with queue:
        job = await queue.enqueue(add, 2, 3)
        assert await job.status() is JobStatus.QUEUED
        async with running(queue):
            gate.set()
            assert await job.result(timeout=WAIT) == 5
        assert await job.status() is JobStatus.SUCCEEDED
        assert await queue.job(job.job_id).result(timeout=1) == 5


async def test_failure_raises_job_failed_with_remote_traceback() -> None:
    """A job that fails for good raises JobFailed carrying the remote type and traceback."""
    queue = make_queue()

    @queue.task
    def explode() -> None:
        raise KeyError("missing")

    async with queue, running(queue):
        job = await queue.enqueue(explode)
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=WAIT)
        assert await job.status() is JobStatus.FAILED
    assert info.value.remote_type == "KeyError"
    assert "raise KeyError" in info.value.remote_traceback


async def test_result_timeout_and_missing_backend() -> None:
    """Waiting too long raises ResultTimeout; without a backend, a clear ConfigurationError."""
    queue = make_queue()

    @queue.task
    async def never() -> None: ...

    async with queue:
        job = await queue.enqueue(never)
        with pytest.raises(ResultTimeout):
            await job.result(timeout=0.05)
    plain = TaskQueue("memory://")
    with pytest.raises(ConfigurationError, match="no result backend"):
        await plain.job("x").result(timeout=1)


async def test_progress_is_visible_from_the_handle() -> None:
    """Progress reported inside a task is seen through the job handle."""
    queue = make_queue()
    reported = anyio.Event()
    finish = anyio.Event()

    @queue.task
    async def long() -> str:
        await current_job().report_progress({"done": 3, "of": 10})
        reported.set()
        await finish.wait()
        return "ok"

    async with queue, running(queue):
        job = await queue.enqueue(long)
        with anyio.fail_after(WAIT):
            await reported.wait()
        assert await job.progress() == {"done": 3, "of": 10}
        assert await job.status() is JobStatus.RUNNING
        finish.set()
        assert await job.result(timeout=WAIT) == "ok"


async def test_chain_passes_each_result_on() -> None:
    """A chain of three returns the last result through the handle."""
    queue = make_queue()

    @queue.task
    async def fetch(url: str) -> str:
        return url.upper()

    @queue.task
    def parse(text: str) -> list[str]:
        return list(text)

    @queue.task
    async def store(items: list[str], tag: str) -> str:
        return f"{tag}:{len(items)}"

    async with queue, running(queue):
        job = await queue.enqueue(chain(fetch.s("abc"), parse.s(), store.s("t")))
        assert await job.result(timeout=WAIT) == "t:3"


async def test_chord_gathers_results_in_order() -> None:
    """A chord's callback gets every member's result in member order, once."""
    queue = make_queue()
    calls: list[list[int]] = []

    @queue.task
    async def square(n: int) -> int:
        await anyio.sleep(0.001 * (10 - n))  # finish out of order
        return n * n

    @queue.task
    async def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    async with queue, running(queue):
        job = await queue.enqueue(chord([square.s(n) for n in range(10)], total.s()))
        assert await job.result(timeout=WAIT) == sum(n * n for n in range(10))
    assert calls == [[n * n for n in range(10)]]


async def test_group_and_nesting() -> None:
    """A group's handle gives results in order; a chain in a group and a group in a chain work."""
    queue = make_queue()

    @queue.task
    async def inc(n: int) -> int:
        return n + 1

    @queue.task
    async def total(values: list[int]) -> int:
        return sum(values)

    async with queue, running(queue):
        grouped = await queue.enqueue(group(inc.s(1), chain(inc.s(10), inc.s()), inc.s(100)))
        assert await grouped.result(timeout=WAIT) == [2, 12, 101]
        nested = await queue.enqueue(chain(inc.s(0), group(inc.s(), inc.s()), total.s()))
        assert await nested.result(timeout=WAIT) == 4


async def test_failing_member_fails_the_chord_and_runs_the_error_callback() -> None:
    """A failing member fails the chord's handle and runs its error callback once."""
    queue = make_queue()
    errors: list[dict[str, object]] = []
    callback_ran = False

    @queue.task
    async def member(n: int) -> int:
        if n == 2:
            raise ValueError("member 2 broke")
        return n

    @queue.task
    async def total(values: list[int]) -> int:
        nonlocal callback_ran
        callback_ran = True
        return sum(values)

    @queue.task
    async def on_error(error: dict[str, object]) -> None:
        errors.append(error)

    async with queue, running(queue) as worker:
        flow = chord([member.s(n) for n in range(4)], total.s(), on_error=on_error.s())
        job = await queue.enqueue(flow)
        with pytest.raises(JobFailed, match="member 2 broke") as info:
            await job.result(timeout=WAIT)
        await until(worker, lambda s: s.succeeded >= 4)
    assert "raise ValueError" in info.value.remote_traceback
    assert not callback_ran
    assert len(errors) == 1
    assert errors[0]["type"] == "ValueError"


async def test_workflow_with_a_group_needs_a_backend() -> None:
    """A chord without a result backend is refused at enqueue."""
    queue = TaskQueue("memory://")

    @queue.task
    async def a() -> None: ...

    async with queue:
        with pytest.raises(ConfigurationError, match="needs a result backend"):
            await queue.enqueue(chord([a.s()], a.si()))


async def test_redelivered_finished_step_does_not_run_again() -> None:
    """A workflow step published again after it succeeded (a redelivered predecessor) is not
    run again, and what follows it is published with the same ids, so it runs once too.
    """
    queue = make_queue()
    runs: list[str] = []

    @queue.task
    async def first() -> int:
        runs.append("first")
        return 7

    @queue.task
    async def second(value: int) -> int:
        runs.append("second")
        return value * 2

    flow = assign_ids(chain(first.s(), second.s()), "root-1")
    [handle] = final_ids(flow)
    async with queue, running(queue) as worker:
        await queue.flows.start(flow, root="root-1")
        assert await queue.job(handle).result(timeout=WAIT) == 14
        await queue.flows.start(flow, root="root-1")
        await until(worker, lambda s: s.succeeded == 4)
    assert runs == ["first", "second"]
