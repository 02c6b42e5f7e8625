"""Issue 2 with ``aqueue worker`` subprocesses on the shared RabbitMQ: SIGKILL, SIGTERM and
poison messages.

Tasks record ``<event> <job id>`` lines in a file (see ``tests/integration/apps``), so what a
killed process did is still known after it died.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from aqueue import TaskQueue
from tests.helpers.polling import read_lines, wait_for
from tests.helpers.worker_process import WorkerProcess
from tests.helpers.workers import delete_topology, drain
from tests.integration.apps import jobs, poison

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JOBS_APP = "tests.integration.apps.jobs:queue"
POISON_APP = "tests.integration.apps.poison:queue"


class Records:
    """The ``<event> <job id>`` lines the tasks of worker subprocesses append to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ids(self, event: str) -> list[str]:
        """Job ids recorded with `event`, in file order (repeats kept)."""
        ids = []
        for line in read_lines(self.path):
            kind, _, job_id = line.partition(" ")
            if kind == event:
                ids.append(job_id)
        return ids


@pytest.fixture
def records(tmp_path: Path) -> Records:
    """The record file of this test."""
    return Records(tmp_path / "records")


@pytest.fixture
def env(amqp_url: str, prefix: str, records: Records) -> dict[str, str]:
    """Environment for worker subprocesses: this test's broker, prefix and record file."""
    return {
        "AQUEUE_TEST_URL": amqp_url,
        "AQUEUE_TEST_PREFIX": prefix,
        "AQUEUE_TEST_OUT": str(records.path),
    }


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    """Delete this test's queues and exchanges after it."""
    yield
    await delete_topology(amqp_url, prefix)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker subprocesses made by `spawn`; every one still running is SIGKILLed afterwards."""
    made: list[WorkerProcess] = []
    yield made
    for worker in made:
        worker.cleanup()


def spawn(
    workers: list[WorkerProcess], env: dict[str, str], tmp_path: Path, app: str, *args: str
) -> WorkerProcess:
    """Start a worker subprocess, logging to its own file."""
    worker = WorkerProcess(app, args, env=env, log=tmp_path / f"worker{len(workers)}.log")
    workers.append(worker)
    worker.start()
    return worker


async def test_sigkilled_worker_loses_no_job(
    amqp_url: str,
    prefix: str,
    env: dict[str, str],
    records: Records,
    workers: list[WorkerProcess],
    tmp_path: Path,
    cleanup: None,
) -> None:
    """A worker SIGKILLed in the middle of 2,000 jobs loses none: its replacement runs the rest."""
    total = 2000
    app = jobs.make_app(amqp_url, prefix)
    # Three early jobs stall on their first delivery, so that jobs are surely running at the
    # kill: the queue delivers in order, so they went to the first worker before its 400th job.
    calls = [(0.01, 60.0 if i in (50, 150, 250) else 0.0) for i in range(total)]
    async with app.queue:
        batch = await app.queue.enqueue_many(app.done, calls)
        assert batch.ok
        enqueued = {job.job_id for job in batch.jobs}
        stalling = {job.job_id for job, call in zip(batch.jobs, calls, strict=True) if call[1]}

        first = spawn(workers, env, tmp_path, JOBS_APP, "--concurrency", "20")
        await wait_for(
            lambda: len(records.ids("done")) >= total // 5,
            timeout=60,
            what="a fifth of the jobs to run",
            details=first.output_tail,
        )
        first.send_signal(signal.SIGKILL)
        assert await first.wait(timeout=10) == -signal.SIGKILL
        done_at_kill = set(records.ids("done"))
        running_at_kill = set(records.ids("start")) - done_at_kill
        assert len(done_at_kill) < total, "the worker finished before it was killed"
        assert stalling <= running_at_kill

        second = spawn(workers, env, tmp_path, JOBS_APP, "--concurrency", "20")
        await wait_for(
            lambda: set(records.ids("done")) >= enqueued,
            timeout=60,
            what="every job to run",
            details=second.output_tail,
        )
        second.send_signal(signal.SIGTERM)
        assert await second.wait(timeout=20) == 0, second.output_tail()
        assert await app.queue.transport.message_count(app.queue.names.work_queue("default")) == 0

    done = records.ids("done")
    assert set(done) == enqueued
    starts = Counter(records.ids("start"))
    assert all(starts[job_id] >= 2 for job_id in running_at_kill)  # redelivered, run again
    duplicates = sum(count - 1 for count in Counter(done).values())
    print(
        f"\nSIGKILL after {len(done_at_kill)} of {total} jobs done, {len(running_at_kill)} "
        f"running: all {total} ran; {duplicates} ran to the end twice"
    )


async def test_sigterm_lets_running_jobs_finish_and_leaves_the_rest_queued(
    amqp_url: str,
    prefix: str,
    env: dict[str, str],
    records: Records,
    workers: list[WorkerProcess],
    tmp_path: Path,
    cleanup: None,
) -> None:
    """On SIGTERM the 4 running jobs finish, the worker exits 0, and the 8 others stay queued."""
    app = jobs.make_app(amqp_url, prefix)
    async with app.queue:
        batch = await app.queue.enqueue_many(app.slow, [(1.5,)] * 12)
        assert batch.ok
        worker = spawn(workers, env, tmp_path, JOBS_APP, "--concurrency", "4", "--grace", "10")
        await wait_for(
            lambda: len(records.ids("start")) >= 4,
            timeout=30,
            what="4 jobs to start",
            details=worker.output_tail,
        )
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait(timeout=20) == 0, worker.output_tail()
        work_queue = app.queue.names.work_queue("default")
        assert await app.queue.transport.message_count(work_queue) == 8
        left = await drain(app.queue.transport, work_queue)

    started, finished = records.ids("start"), records.ids("finish")
    assert len(started) == 4
    assert sorted(finished) == sorted(started)
    enqueued = {job.job_id for job in batch.jobs}
    assert {delivery.message_id for delivery in left} == enqueued - set(started)
    assert not any(delivery.redelivered for delivery in left)  # never handed to the worker
    assert "stopping gracefully" in worker.output()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_second_signal_stops_at_once_and_requeues_running_jobs(
    amqp_url: str,
    prefix: str,
    env: dict[str, str],
    records: Records,
    workers: list[WorkerProcess],
    tmp_path: Path,
    cleanup: None,
    second: signal.Signals,
) -> None:
    """A second signal during the grace period stops at once; the running jobs go back."""
    app = jobs.make_app(amqp_url, prefix)
    async with app.queue:
        batch = await app.queue.enqueue_many(app.slow, [(60,)] * 6)
        assert batch.ok
        worker = spawn(workers, env, tmp_path, JOBS_APP, "--concurrency", "4", "--grace", "30")
        await wait_for(
            lambda: len(records.ids("start")) >= 4,
            timeout=30,
            what="4 jobs to start",
            details=worker.output_tail,
        )
        worker.send_signal(signal.SIGTERM)
        await worker.wait_output("stopping gracefully")
        began = anyio.current_time()
        worker.send_signal(second)
        assert await worker.wait(timeout=10) == 0, worker.output_tail()
        assert anyio.current_time() - began < 5  # not the 30 s grace, nor the 60 s jobs
        work_queue = app.queue.names.work_queue("default")
        assert await app.queue.transport.message_count(work_queue) == 6
        back = await drain(app.queue.transport, work_queue)

    started = records.ids("start")
    assert len(started) == 4
    assert records.ids("finish") == []
    assert sorted(delivery.message_id or "" for delivery in back) == sorted(
        job.job_id for job in batch.jobs
    )
    assert {d.message_id for d in back if d.redelivered} == set(started)
    assert "stopping now" in worker.output()


async def _is_settled_in(queue: TaskQueue, places: tuple[str, ...]) -> bool:
    counts = [await queue.transport.message_count(place) for place in places]
    return sum(counts) == 1


async def test_poison_job_that_kills_its_worker_is_dead_lettered_once(
    amqp_url: str,
    prefix: str,
    env: dict[str, str],
    records: Records,
    workers: list[WorkerProcess],
    tmp_path: Path,
    cleanup: None,
) -> None:
    """A job that kills every worker ends in the DLQ once, by delivery_limit; workers go on."""
    queue = poison.make_queue(amqp_url, prefix)
    work_queue = queue.names.work_queue("default")
    dead_letter_queue = queue.names.dead_letter_queue("default")
    crashes = 0
    async with queue:
        job = await queue.enqueue(queue.registry.get("crash"))
        while True:
            # Between a worker's death and the broker's requeue (or dead-lettering), the
            # message is in neither queue: wait until it is in one of them.
            await wait_for(
                lambda: _is_settled_in(queue, (work_queue, dead_letter_queue)),
                timeout=20,
                what="the poison message to be back in the work queue or in the DLQ",
            )
            if await queue.transport.message_count(work_queue) == 0:
                break
            assert crashes <= poison.DELIVERY_LIMIT, "the poison message keeps coming back"
            worker = spawn(workers, env, tmp_path, POISON_APP, "--concurrency", "1")
            assert await worker.wait(timeout=30) == poison.EXIT_CODE, worker.output_tail()
            crashes += 1

        [dead] = await drain(queue.transport, dead_letter_queue)
        assert await queue.transport.message_count(dead_letter_queue) == 0

        # A worker started now is not caught by the poison job: it runs other jobs.
        after = await queue.enqueue(queue.registry.get("done"))
        worker = spawn(workers, env, tmp_path, POISON_APP, "--concurrency", "1")
        await wait_for(
            lambda: records.ids("done") == [after.job_id],
            timeout=30,
            what="a job after the poison one to run",
            details=worker.output_tail,
        )
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait(timeout=20) == 0, worker.output_tail()

    assert records.ids("start") == [job.job_id] * crashes
    # RabbitMQ dead-letters a message returned more than delivery_limit times
    assert crashes == poison.DELIVERY_LIMIT + 1
    assert dead.message_id == job.job_id
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert dead.headers["x-first-death-queue"] == work_queue
    deaths = dead.headers["x-death"]
    assert isinstance(deaths, list)
    [death] = deaths
    assert isinstance(death, dict)
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", work_queue, 1)
    print(f"\npoison job: {crashes} worker deaths, then dead-lettered by delivery_limit")
