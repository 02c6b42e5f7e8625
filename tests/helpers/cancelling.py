"""Cancellation, checked the same way on the in-memory broker and on RabbitMQ."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import anyio

from aqueue import (
    JobStatus,
    MemoryResultBackend,
    TaskQueue,
    WorkerSettings,
    chain,
    chord,
    current_job,
)
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.workers import wait_until

#: A running async job must stop within this many seconds of `cancel()` (the issue's bound).
STOP_WITHIN = 1.0


@dataclass
class CancelApp:
    """A queue whose tasks record what ran, what started and what finished."""

    queue: TaskQueue
    ran: list[str] = field(default_factory=list)
    started: dict[str, anyio.Event] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    errors: list[dict[str, object]] = field(default_factory=list)


def cancel_app(url: str, prefix: str, *, backend: bool = True) -> CancelApp:
    queue = TaskQueue(
        url,
        prefix=prefix,
        telemetry=False,
        name=f"{prefix}-cancel",
        results=MemoryResultBackend() if backend else None,
    )
    app = CancelApp(queue)

    @queue.task(name="quick", retries=3)
    async def quick(n: int) -> int:
        app.ran.append(current_job().job_id)
        return n

    @queue.task(name="sleepy", retries=3)
    async def sleepy(n: int) -> int:
        job_id = current_job().job_id
        app.ran.append(job_id)
        app.started.setdefault(job_id, anyio.Event()).set()
        await anyio.sleep(30)
        app.finished.append(job_id)
        return n

    @queue.task(name="polite")
    def polite() -> str:
        """A plain function: it checks the flag, since a thread cannot be stopped."""
        app.ran.append(current_job().job_id)
        pause = threading.Event()
        while not current_job().cancelled:
            pause.wait(0.01)
        return "stopped"

    @queue.task(name="on_error")
    async def on_error(error: dict[str, object]) -> None:
        app.errors.append(error)

    @queue.task(name="gather")
    async def gather(values: list[int]) -> int:
        app.ran.append(current_job().job_id)
        return sum(values)

    return app


async def check_queued_and_delayed_jobs_never_run(url: str, prefix: str) -> None:
    """With a result backend: a job cancelled while queued (no worker running) and a delayed
    job cancelled while it waits never run, and their states read cancelled."""
    app = cancel_app(url, prefix)
    quick = app.queue.tasks["quick"]
    async with app.queue:
        queued = await app.queue.enqueue(quick, 1)
        delayed = await app.queue.enqueue_in(1.0, quick, 2)
        assert await queued.cancel()
        assert await app.queue.cancel(delayed.job_id)
        other = await app.queue.enqueue(quick, 3)
        async with running_worker(app.queue) as worker:
            await wait_until(worker, lambda s: s.cancelled == 2 and s.succeeded == 1)
        assert app.ran == [other.job_id]
        assert await queued.status() is JobStatus.CANCELLED
        assert await delayed.status() is JobStatus.CANCELLED
        assert not await other.cancel()  # it finished: nothing to cancel


async def check_a_running_worker_honours_notices_without_a_backend(url: str, prefix: str) -> None:
    """Without a result backend: a job queued behind a busy slot, cancelled, never runs (the
    worker heard the notice); a running async job stops within STOP_WITHIN of cancel()."""
    app = cancel_app(url, prefix, backend=False)
    sleepy, quick = app.queue.tasks["sleepy"], app.queue.tasks["quick"]
    async with app.queue, running_worker(app.queue, WorkerSettings(concurrency=1)) as worker:
        running = await app.queue.enqueue(sleepy, 1)
        waiting = await app.queue.enqueue(quick, 2)
        with anyio.fail_after(10):
            await app.started.setdefault(running.job_id, anyio.Event()).wait()
        await waiting.cancel()
        began = anyio.current_time()
        await running.cancel()
        await wait_until(worker, lambda s: s.cancelled == 2, timeout=10)
        took = anyio.current_time() - began
        assert worker.statistics().retried == 0
    assert app.ran == [running.job_id]
    assert app.finished == []
    assert took < STOP_WITHIN, took


async def check_running_jobs_stop_and_read_cancelled(url: str, prefix: str) -> None:
    """A running async job stops within STOP_WITHIN of cancel() and reads cancelled, not
    retried; a running sync job sees current_job().cancelled and is settled as cancelled."""
    app = cancel_app(url, prefix)
    sleepy, polite = app.queue.tasks["sleepy"], app.queue.tasks["polite"]
    async with app.queue, running_worker(app.queue) as worker:
        running = await app.queue.enqueue(sleepy, 1)
        with anyio.fail_after(10):
            await app.started.setdefault(running.job_id, anyio.Event()).wait()
        began = anyio.current_time()
        await running.cancel()
        await wait_until(worker, lambda s: s.cancelled == 1, timeout=10)
        took = anyio.current_time() - began
        assert await running.status() is JobStatus.CANCELLED
        sync = await app.queue.enqueue(polite)
        await wait_for(lambda: sync.job_id in app.ran, timeout=10, what="the sync job's start")
        await sync.cancel()
        await wait_until(worker, lambda s: s.cancelled == 2, timeout=10)
        assert await sync.status() is JobStatus.CANCELLED
        assert worker.statistics().retried == 0
    assert app.finished == []
    assert took < STOP_WITHIN, took


async def check_cancelling_a_chord_prevents_its_callback(url: str, prefix: str) -> None:
    """A chord cancelled while its members run: the members stop, the callback never runs."""
    app = cancel_app(url, prefix)
    sleepy, gather = app.queue.tasks["sleepy"], app.queue.tasks["gather"]
    async with app.queue, running_worker(app.queue) as worker:
        handle = await app.queue.enqueue(chord([sleepy.s(1), sleepy.s(2)], gather.s()))
        await wait_until(worker, lambda s: s.in_flight == 2)  # both members run
        assert await handle.cancel()
        await wait_until(worker, lambda s: s.cancelled == 2, timeout=10)
        assert await handle.status() is JobStatus.CANCELLED
    assert handle.job_id not in app.ran
    assert app.finished == []


async def check_cancelling_a_chain_stops_it_and_tells_its_error_callback(
    url: str, prefix: str
) -> None:
    """A chain cancelled while its first step runs: that step stops, the next never runs, its
    handle reads cancelled, and its on_error callback receives the cancellation."""
    app = cancel_app(url, prefix)
    sleepy, quick, on_error = (app.queue.tasks[n] for n in ("sleepy", "quick", "on_error"))
    async with app.queue, running_worker(app.queue) as worker:
        handle = await app.queue.enqueue(chain(sleepy.s(1), quick.s(), on_error=on_error.s()))
        await wait_until(worker, lambda s: s.in_flight == 1)
        await handle.cancel()
        await wait_for(lambda: bool(app.errors), timeout=10, what="the error callback")
        assert await handle.status() is JobStatus.CANCELLED
    assert len(app.ran) == 1
    assert app.errors[0]["type"] == "aqueue.exceptions.JobCancelled"
