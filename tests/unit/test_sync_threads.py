"""Sync task functions the worker stops waiting for: listed, logged, and still bounded.

A thread cannot be stopped, so a plain function outliving its job's timeout or the stop's
grace runs on; the worker reports it (`Worker.abandoned`, a log line) and keeps its slot of
``threads`` taken until it returns. The tasks here block on a `threading.Event` that each test
sets on the way out, so no thread outlives its test (pytest would wait for it at exit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import anyio
import pytest

from aqueue import TaskQueue, Worker, WorkerSettings
from aqueue._core import wire as t
from aqueue._core.wire import read_headers
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.workers import WAIT, drain, wait_until


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set when the test ends, whatever happened: the blocked functions return."""
    event = threading.Event()
    yield event
    event.set()


def _messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


async def test_stop_abandons_a_sync_job_that_outlives_the_grace_and_reports_it(
    memory_queue: TaskQueue, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """`run` returns at the end of the grace although the function still runs; the job is
    listed by `abandoned()`, logged as an error, and back in the queue as its next attempt."""
    caplog.set_level(logging.INFO, logger="aqueue.worker")
    started = threading.Event()

    @memory_queue.task(name="block")
    def block() -> None:
        started.set()
        release.wait(WAIT * 3)

    grace = 0.2
    async with memory_queue.session() as session:
        job = await memory_queue.enqueue(block)
        worker = Worker(memory_queue, WorkerSettings(grace=grace))
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await wait_for(started.is_set, timeout=WAIT, what="the sync job to start")
                stopped_at = anyio.current_time()
                worker.stop()
        took = anyio.current_time() - stopped_at
        abandoned = worker.abandoned()
        back = await drain(session.transport, "t.default")

    assert grace <= took < grace + 2  # the grace, not the function's end (it has none yet)
    assert [(a.job_id, a.task, a.queue, a.attempt, a.reason) for a in abandoned] == [
        (job.job_id, "block", "default", 1, "cancelled")
    ]
    assert abandoned[0].running_for >= grace
    assert [(d.message_id, d.redelivered, read_headers(d.headers).attempt) for d in back] == [
        (job.job_id, False, 2)
    ]
    [line] = _messages(caplog, logging.ERROR, "still running in its thread")
    assert f"job {job.job_id} (task block)" in line
    assert "it went back to its queue as its next attempt" in line

    release.set()  # once the function returns, nothing is abandoned any more
    await wait_for(lambda: not worker.abandoned(), timeout=WAIT, what="the thread to end")


async def test_a_timed_out_sync_function_keeps_its_thread_until_it_returns(
    memory_queue: TaskQueue, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """The job times out and is dead-lettered at once, its function runs on (logged, listed)
    and keeps the only thread: the next sync job waits for it, then runs."""
    caplog.set_level(logging.INFO, logger="aqueue.worker")

    @memory_queue.task(name="hang", timeout=0.1)
    def hang() -> None:
        release.wait(WAIT * 3)

    @memory_queue.task(name="quick")
    def quick() -> None:
        pass

    async with (
        memory_queue.session() as session,
        running_worker(memory_queue, WorkerSettings(threads=1)) as worker,
    ):
        hung = await memory_queue.enqueue(hang)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        [dead] = await drain(session.transport, "t.default.dlq")
        assert dead.headers[t.HEADER_DEAD_REASON] == "timeout"
        assert [(a.job_id, a.reason) for a in worker.abandoned()] == [(hung.job_id, "timeout")]

        await memory_queue.enqueue(quick)
        # the worker's one thread is still taken: `quick` waits for it instead of a new thread
        await wait_for(
            lambda: worker._threads.for_queue("default").waiting() == 1,
            timeout=WAIT,
            what="quick to wait",
        )
        assert worker.statistics().succeeded == 0
        release.set()
        await wait_until(worker, lambda s: s.succeeded == 1)
        assert worker.abandoned() == ()  # removed before its thread was handed on

    [warning] = _messages(caplog, logging.WARNING, "timed out (timeout 0.1s)")
    assert f"job {hung.job_id}" in warning
    assert "1 abandoned thread(s) running, 1 of 1 threads busy" in warning
    [ended] = _messages(caplog, logging.INFO, "its abandoned sync function ended")
    assert f"job {hung.job_id}" in ended
