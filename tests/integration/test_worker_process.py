"""Issue 2 with ``aqueue worker`` subprocesses on the shared RabbitMQ: SIGKILL, SIGTERM and
poison messages.

Tasks record ``<event> <job id>`` lines in a file (see ``tests/integration/apps``), so what a
killed process did is still known after it died.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from aqueue._core.topology import TopologyNames
from aqueue._core.wire import read_headers
from aqueue._transport import Delivery
from tests.helpers.polling import read_lines, wait_for
from tests.helpers.worker_process import WorkerProcess, apps_env
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
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    """Delete this test's queues and exchanges after it."""
    yield
    await delete_topology(amqp_url, prefix)


@pytest.fixture
def jobs_app(amqp_url: str, prefix: str, cleanup: None) -> jobs.App:
    """The well-behaved app of this test (its queues are deleted afterwards)."""
    return jobs.make_app(amqp_url, prefix)


Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def spawn(amqp_url: str, prefix: str, records: Records, tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(app, *args)`` starts a worker subprocess of this test, logging to its own file;
    every one still running is SIGKILLed afterwards."""
    env = apps_env(amqp_url, prefix, records.path)
    made: list[WorkerProcess] = []

    def start(app: str, *args: str) -> WorkerProcess:
        worker = WorkerProcess(app, args, env=env, log=tmp_path / f"worker{len(made)}.log")
        made.append(worker)
        worker.start()
        return worker

    yield start
    for worker in made:
        worker.cleanup()


async def test_sigkilled_worker_loses_no_job(
    jobs_app: jobs.App, records: Records, spawn: Spawn
) -> None:
    """A worker SIGKILLed in the middle of 2,000 jobs loses none: its replacement runs the rest."""
    total = 2000
    app = jobs_app
    # Three early jobs stall on their first delivery, so that jobs are surely running at the
    # kill: the queue delivers in order, so they went to the first worker before its 400th job.
    calls = [(0.01, 60.0 if i in (50, 150, 250) else 0.0) for i in range(total)]
    async with app.queue.session() as session:
        batch = await app.queue.enqueue_many(app.done, calls)
        assert batch.ok
        enqueued = {job.job_id for job in batch.jobs}
        stalling = {job.job_id for job, call in zip(batch.jobs, calls, strict=True) if call[1]}

        first = spawn(JOBS_APP, "--concurrency", "20")
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

        second = spawn(JOBS_APP, "--concurrency", "20")
        await wait_for(
            lambda: set(records.ids("done")) >= enqueued,
            timeout=60,
            what="every job to run",
            details=second.output_tail,
        )
        await second.terminate(timeout=20)
        assert await session.transport.message_count(session.names.work_queue("default")) == 0

    done = records.ids("done")
    assert set(done) == enqueued
    starts = Counter(records.ids("start"))
    assert all(starts[job_id] >= 2 for job_id in running_at_kill)  # redelivered, run again
    duplicates = sum(count - 1 for count in Counter(done).values())
    print(
        f"\nSIGKILL after {len(done_at_kill)} of {total} jobs done, {len(running_at_kill)} "
        f"running: all {total} ran; {duplicates} ran to the end twice"
    )


async def stopped_with_four_running(
    app: jobs.App,
    records: Records,
    spawn: Spawn,
    *,
    count: int,
    seconds: float,
    grace: int,
    stop: Callable[[WorkerProcess], Awaitable[None]],
) -> tuple[WorkerProcess, set[str], list[Delivery]]:
    """Enqueue `count` slow jobs of `seconds` each, start a worker (concurrency 4), `stop` it
    once 4 run; return the worker, the job ids, and what is left in the work queue (taken).
    """
    async with app.queue.session() as session:
        batch = await app.queue.enqueue_many(app.slow, [(seconds,)] * count)
        assert batch.ok
        worker = spawn(JOBS_APP, "--concurrency", "4", "--grace", str(grace))
        await wait_for(
            lambda: len(records.ids("start")) >= 4,
            timeout=30,
            what="4 jobs to start",
            details=worker.output_tail,
        )
        await stop(worker)
        left = await drain(session.transport, session.names.work_queue("default"))
    return worker, {job.job_id for job in batch.jobs}, left


async def test_sigterm_lets_running_jobs_finish_and_leaves_the_rest_queued(
    jobs_app: jobs.App, records: Records, spawn: Spawn
) -> None:
    """On SIGTERM the 4 running jobs finish, the worker exits 0, and the 8 others stay queued."""

    async def sigterm(worker: WorkerProcess) -> None:
        await worker.terminate(timeout=20)

    worker, enqueued, left = await stopped_with_four_running(
        jobs_app, records, spawn, count=12, seconds=1.5, grace=10, stop=sigterm
    )
    assert len(left) == 8
    started, finished = records.ids("start"), records.ids("finish")
    assert len(started) == 4
    assert sorted(finished) == sorted(started)
    assert {delivery.message_id for delivery in left} == enqueued - set(started)
    assert not any(delivery.redelivered for delivery in left)  # never handed to the worker
    assert "stopping gracefully" in worker.output()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_second_signal_stops_at_once_and_requeues_running_jobs(
    jobs_app: jobs.App, records: Records, spawn: Spawn, second: signal.Signals
) -> None:
    """A second signal during the grace period stops at once; the running jobs go back as
    their next attempt (fresh copies, not redelivered), the two never started as they were."""

    async def twice(worker: WorkerProcess) -> None:
        worker.send_signal(signal.SIGTERM)
        await worker.wait_output("stopping gracefully")
        began = anyio.current_time()
        worker.send_signal(second)
        assert await worker.wait(timeout=10) == 0, worker.output_tail()
        assert anyio.current_time() - began < 5  # not the 30 s grace, nor the 60 s jobs

    worker, enqueued, back = await stopped_with_four_running(
        jobs_app, records, spawn, count=6, seconds=60, grace=30, stop=twice
    )
    assert len(back) == 6
    started = records.ids("start")
    assert len(started) == 4
    assert records.ids("finish") == []
    assert sorted(delivery.message_id or "" for delivery in back) == sorted(enqueued)
    assert not [d.message_id for d in back if d.redelivered]
    attempts = {d.message_id: read_headers(d.headers).attempt for d in back}
    assert {job_id for job_id, attempt in attempts.items() if attempt == 2} == set(started)
    assert sorted(attempts.values()) == [1, 1, 2, 2, 2, 2]
    assert "stopping now" in worker.output()


@pytest.mark.parametrize(
    ("grace", "signals", "window"),
    [
        pytest.param(5, (signal.SIGTERM,), (5, 7), id="grace-runs-out"),
        pytest.param(30, (signal.SIGTERM, signal.SIGINT), (0, 2), id="second-signal"),
    ],
)
async def test_stop_abandons_a_running_sync_job_and_exits_in_time(
    jobs_app: jobs.App,
    records: Records,
    spawn: Spawn,
    grace: int,
    signals: tuple[signal.Signals, ...],
    window: tuple[float, float],
) -> None:
    """A 60 s sync job cannot be interrupted: when the grace runs out (or a second signal
    comes) the worker logs it as abandoned and exits 0 at once, without waiting for its
    thread; the job is back in the queue as its next attempt (handed back, not redelivered)."""
    app = jobs_app
    async with app.queue.session() as session:
        job = await app.queue.enqueue(app.slow_sync, 60.0)
        worker = spawn(JOBS_APP, "--grace", str(grace))
        await wait_for(
            lambda: records.ids("start") == [job.job_id],
            timeout=30,
            what="the sync job to start",
            details=worker.output_tail,
        )
        *first, last = signals
        for signum in first:
            worker.send_signal(signum)
            await worker.wait_output("stopping gracefully")
        began = anyio.current_time()  # the exit is timed from the signal that ends the wait
        worker.send_signal(last)
        code = await worker.wait(timeout=grace + 10)
        took = anyio.current_time() - began
        back = await drain(session.transport, session.names.work_queue("default"))

    assert code == 0, worker.output_tail()
    low, high = window
    assert low <= took < high, f"exited {took:.2f} s after the signal\n{worker.output_tail()}"
    output = worker.output()
    assert f"worker stopped with job {job.job_id} (task slow_sync) still running" in output
    assert "exiting with status 0 without waiting for 1 abandoned thread(s)" in output
    assert [(d.message_id, d.redelivered, read_headers(d.headers).attempt) for d in back] == [
        (job.job_id, False, 2)
    ]
    assert records.ids("finish") == []
    print(f"\nsync job abandoned: exited {took:.2f} s after the signal (--grace {grace})")


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_poison_job_is_dead_lettered_as_crashed_and_takes_no_healthy_job_with_it(
    amqp_url: str, prefix: str, records: Records, tmp_path: Path, cleanup: None, queue_type: str
) -> None:
    """A job that kills its worker, among 600 healthy jobs: each crash counts against it alone.

    Jobs that came back unacked run in quarantine, one at a time, so the poison kills a worker
    `CRASH_LIMIT` times and is then dead-lettered with reason ``crashed``; every healthy job
    runs (some of them came back with it once) and none is dead-lettered.
    """
    queue = poison.make_queue(amqp_url, prefix, queue_type=queue_type)  # type: ignore[arg-type]
    names = TopologyNames(prefix)
    env = {**apps_env(amqp_url, prefix, records.path), "AQUEUE_TEST_QUEUE_TYPE": queue_type}
    healthy_count = 600
    workers: list[WorkerProcess] = []
    try:
        async with queue.session() as session:
            # the poison among the first deliveries, so healthy jobs are held when it strikes
            healthy = await queue.enqueue_many(queue.tasks["done"], [(0.3,)] * 20)
            job = await queue.enqueue(queue.tasks["crash"])
            rest = await queue.enqueue_many(queue.tasks["done"], [(0.3,)] * (healthy_count - 20))
            assert healthy.ok
            assert rest.ok
            expected = {j.job_id for j in (*healthy.jobs, *rest.jobs)}
            dead_letter_queue = names.dead_letter_queue("default")

            async def finished() -> bool:
                if workers and workers[-1].popen.poll() == poison.EXIT_CODE:
                    assert len(workers) <= poison.CRASH_LIMIT, "the poison keeps coming back"
                    workers.append(_poison_worker(env, tmp_path, len(workers)))
                done = set(records.ids("done"))
                dead = await session.transport.message_count(dead_letter_queue)
                return done >= expected and dead >= 1

            workers.append(_poison_worker(env, tmp_path, 0))
            await wait_for(
                finished,
                timeout=150,
                what="every healthy job to run and the poison to be dead-lettered",
                details=lambda: workers[-1].output_tail(),
            )
            await workers[-1].terminate(timeout=20)
            dead = await drain(session.transport, dead_letter_queue)
    finally:
        for worker in workers:
            worker.cleanup()

    assert [d.message_id for d in dead] == [job.job_id]
    assert dead[0].headers["aqueue-dead-reason"] == "crashed"
    assert records.ids("start") == [job.job_id] * poison.CRASH_LIMIT
    assert len(workers) == poison.CRASH_LIMIT + 1  # the last one survived
    done = records.ids("done")
    assert set(done) == expected
    print(
        f"\npoison job on {queue_type}: {poison.CRASH_LIMIT} worker deaths, then dead-lettered"
        f" as crashed; {healthy_count} healthy jobs ran ({len(done) - healthy_count} twice)"
    )


def _poison_worker(env: dict[str, str], tmp_path: Path, index: int) -> WorkerProcess:
    worker = WorkerProcess(
        POISON_APP, ("--concurrency", "20"), env=env, log=tmp_path / f"worker{index}.log"
    )
    worker.start()
    return worker
