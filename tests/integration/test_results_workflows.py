"""Issue 4 on the shared RabbitMQ and Redis: results, statuses and workflows, run by
``aqueue worker`` subprocesses (killed with SIGKILL in the middle of a chord).

What the tasks did is recorded in Redis (see ``tests/integration/apps/workflows.py``), so what a
killed worker did is still known after it died.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import orjson
import pytest

from aqueue import Job, JobStatus, RedisResultBackend, TaskQueue, chain, chord, group
from aqueue.exceptions import ConfigurationError, JobFailed, ResultTimeout
from tests.helpers.polling import wait_for
from tests.helpers.worker_process import WorkerProcess, apps_env
from tests.helpers.workers import delete_topology
from tests.integration.apps import workflows
from tests.integration.apps.workflows import App

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

WORKFLOWS_APP = "tests.integration.apps.workflows:queue"
#: a chord's callback and a failed job's handle must be settled within this (seconds)
RESULT_TIMEOUT = 60.0


@pytest.fixture
def env(amqp_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    """Environment for worker subprocesses: this test's broker, Redis and prefix."""
    return {**apps_env(amqp_url, prefix), "AQUEUE_TEST_REDIS_URL": redis_url}


@pytest.fixture
async def app(amqp_url: str, redis_url: str, prefix: str) -> AsyncIterator[App]:
    """The app, open; afterwards its queues, exchanges and Redis keys are deleted."""
    made = workflows.make_app(amqp_url, prefix, redis_url)
    try:
        async with made.queue:
            yield made
    finally:
        await delete_topology(amqp_url, prefix)
        client = made.recorder.client
        keys = [key async for key in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker subprocesses made by `spawn`; every one still running is SIGKILLed afterwards."""
    made: list[WorkerProcess] = []
    yield made
    for worker in made:
        worker.cleanup()


async def spawn(
    workers: list[WorkerProcess], env: dict[str, str], tmp_path: Path, *args: str
) -> WorkerProcess:
    """Start a worker subprocess of the workflows app and wait until it consumes."""
    worker = WorkerProcess(WORKFLOWS_APP, args, env=env, log=tmp_path / f"worker{len(workers)}.log")
    workers.append(worker)
    worker.start()
    await worker.wait_started(timeout=30)
    return worker


async def test_chain_of_three_returns_the_last_result(
    app: App, env: dict[str, str], workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """``chain(add.s(2, 3), double.s(), describe.s())``: the handle gives the last result."""
    worker = await spawn(workers, env, tmp_path)
    job = await app.queue.enqueue(chain(app.add.s(2, 3), app.double.s(), app.describe.s()))
    assert await job.result(timeout=RESULT_TIMEOUT) == "value=10"
    assert await job.status() is JobStatus.SUCCEEDED
    await worker.terminate()


async def test_chord_of_1000_survives_a_sigkilled_worker_and_calls_back_once(
    app: App, env: dict[str, str], workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A worker SIGKILLed in the middle of a chord of 1,000 loses nothing; after its
    replacement finishes, the callback has run exactly once, with the 1,000 results in order.
    """
    size = 1000
    client = app.recorder.client
    runs_key = app.recorder.key("square-runs")

    async def runs() -> int:
        return int(await client.get(runs_key) or 0)

    began = time.perf_counter()
    job = await app.queue.enqueue(chord([app.square.s(n) for n in range(size)], app.collect.s()))
    enqueued = time.perf_counter() - began

    async def a_third_ran() -> bool:
        return await runs() >= size // 3

    first = await spawn(workers, env, tmp_path, "--concurrency", "50")
    await wait_for(
        a_third_ran,
        timeout=60,
        what="a third of the members to run",
        details=first.output_tail,
    )
    first.send_signal(signal.SIGKILL)
    assert await first.wait(timeout=10) == -signal.SIGKILL
    at_kill = await runs()
    assert at_kill < size, "the worker ran every member before it was killed"
    assert await job.status() is JobStatus.PENDING  # the callback was not even published

    restarted = time.perf_counter()
    second = await spawn(workers, env, tmp_path, "--concurrency", "50")
    try:
        assert await job.result(timeout=RESULT_TIMEOUT) == size
    except ResultTimeout as exc:
        raise AssertionError(await diagnose(app, job.job_id, [first, second])) from exc
    finished = time.perf_counter()
    await second.terminate()

    calls = [
        orjson.loads(item) for item in await client.lrange(app.recorder.key("collect-calls"), 0, -1)
    ]
    assert len(calls) == 1, f"the callback ran {len(calls)} times"
    assert calls[0] == [n * n for n in range(size)]
    total_runs = await runs()
    assert total_runs >= size
    print(
        f"\nchord of {size}: enqueued in {enqueued:.2f} s; SIGKILL after {at_kill} member runs; "
        f"callback {finished - restarted:.2f} s after the restart "
        f"({finished - began:.2f} s in all); {total_runs - size} member runs repeated"
    )


async def diagnose(app: App, job_id: str, workers: list[WorkerProcess]) -> str:
    """What the backend and the workers say, for a chord that did not call back in time."""
    client = app.recorder.client
    prefix = app.recorder.prefix
    barriers = [key async for key in client.scan_iter(f"{prefix}:barrier:*")]
    sizes = {key.decode(): await client.hlen(key) for key in barriers}
    completed_by = {
        key.decode(): await client.get(key)
        async for key in client.scan_iter(f"{prefix}:barrier-by:*")
    }
    statuses: dict[str, int] = {}
    async for key in client.scan_iter(f"{prefix}:job:*"):
        raw = await client.get(key)
        status = orjson.loads(raw)["status"] if raw else "expired"
        statuses[status] = statuses.get(status, 0) + 1
    async with app.queue.session() as session:
        work_queue = session.names.work_queue("default")
        ready = await session.transport.message_count(work_queue)
    tails = "\n".join(worker.output_tail(60) for worker in workers)
    return (
        f"no callback for {job_id}: state {await app.queue.job(job_id).state()}; barrier sizes "
        f"{sizes}, completed by {completed_by}; job statuses {statuses}; {ready} ready in "
        f"{work_queue}\n{tails}"
    )


async def test_failing_member_runs_the_error_callback_and_fails_the_handle(
    app: App, env: dict[str, str], workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A member that raises runs the error callback once; the handle raises `JobFailed` with
    the remote type, message and traceback, for a group and for a chord alike.
    """
    worker = await spawn(workers, env, tmp_path)
    members = [app.explode.s(n) for n in range(5)]
    chorded = await app.queue.enqueue(chord(members, app.collect.s(), on_error=app.on_error.s()))
    with pytest.raises(JobFailed) as chord_failure:
        await chorded.result(timeout=RESULT_TIMEOUT)
    grouped = await app.queue.enqueue(group(*members, on_error=app.on_error.s()))
    with pytest.raises(JobFailed) as group_failure:
        await grouped.result(timeout=RESULT_TIMEOUT)

    for info in (chord_failure, group_failure):
        failure = info.value
        assert failure.remote_type == "tests.integration.apps.workflows.Exploded"
        assert failure.remote_message == "member 2 exploded"
        assert 'raise Exploded(f"member {n} exploded")' in failure.remote_traceback
        assert "Traceback" in failure.remote_traceback
    assert await chorded.status() is JobStatus.FAILED
    for member in grouped.jobs:  # the group's result raised at member 2: wait for the others
        with contextlib.suppress(JobFailed):
            await member.result(timeout=RESULT_TIMEOUT)
    assert [await member.status() for member in grouped.jobs] == [
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
    ]

    errors_key = app.recorder.key("errors")

    async def both_error_callbacks_ran() -> bool:
        return int(await app.recorder.client.llen(errors_key)) >= 2

    await wait_for(both_error_callbacks_ran, timeout=30, what="the two error callbacks")
    await worker.terminate()  # anything still queued would have run by now (one queue, in order)
    errors = [orjson.loads(item) for item in await app.recorder.client.lrange(errors_key, 0, -1)]
    assert len(errors) == 2, errors  # once per workflow
    # in either order: the two workflows run side by side on one worker
    group_member = grouped.jobs[2].job_id
    job_ids = [error["job_id"] for error in errors]
    assert job_ids.count(group_member) == 1, job_ids
    # the other is the chord's member 2: its id is derived, not known here
    [chord_member] = [job_id for job_id in job_ids if job_id != group_member]
    assert chord_member not in {chorded.job_id, *(member.job_id for member in grouped.jobs)}
    for error in errors:
        assert error["type"] == "tests.integration.apps.workflows.Exploded"
        assert error["message"] == "member 2 exploded"
        assert "raise Exploded" in error["traceback"]
    assert not await app.recorder.client.exists(app.recorder.key("collect-calls"))


async def test_result_without_a_backend_is_a_configuration_error(
    amqp_url: str, prefix: str
) -> None:
    """A TaskQueue without a result backend is fire-and-forget: asking for a result, a
    status or a workflow that needs a barrier says so clearly.
    """
    queue = TaskQueue(amqp_url, prefix=prefix, name=f"{prefix}-no-backend")

    @queue.task(name="noop")
    async def noop() -> None: ...

    try:
        async with queue:
            job = await queue.enqueue(noop)
            with pytest.raises(ConfigurationError, match="no result backend is configured"):
                await job.result(timeout=1)
            with pytest.raises(ConfigurationError, match="no result backend is configured"):
                await job.status()
            with pytest.raises(ConfigurationError, match="no result backend is configured"):
                await queue.job(job.job_id).result()
            with pytest.raises(ConfigurationError, match="needs a result backend"):
                await queue.enqueue(chord([noop.s()], noop.si()))
    finally:
        await delete_topology(amqp_url, prefix)


async def test_status_transitions_and_progress_are_visible_from_another_queue(
    app: App,
    amqp_url: str,
    redis_url: str,
    prefix: str,
    env: dict[str, str],
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    """Another TaskQueue (as in a web process) sees queued/scheduled → running → retrying →
    running → succeeded or failed, and the progress each attempt reports.
    """
    observer = TaskQueue(
        amqp_url, prefix=prefix, results=RedisResultBackend(redis_url, prefix=prefix)
    )
    client = app.recorder.client
    async with observer:
        ok = await app.queue.enqueue(app.stepper, "ok", False)
        bad = await app.queue.enqueue_in(0.5, app.stepper, "bad", True)
        watch_ok, watch_bad = observer.job(ok.job_id), observer.job(bad.job_id)
        assert await watch_ok.status() is JobStatus.QUEUED
        assert await watch_bad.status() is JobStatus.SCHEDULED
        assert await watch_ok.progress() is None

        seen: dict[str, list[tuple[JobStatus, object]]] = {"ok": [], "bad": []}

        async def watch(name: str, handle: Job[object]) -> None:
            """Record each change of (status, progress) until the job is final."""
            while True:
                state = await handle.state()
                assert state is not None
                now = (state.status, state.progress)
                if not seen[name] or seen[name][-1] != now:
                    seen[name].append(now)
                if state.status.is_final:
                    return
                await anyio.sleep(0.01)

        async def open_gate_when_waiting(gate: str) -> None:
            """Wait until the attempt the gate is for reports progress, then open the gate."""
            name, _, attempt = gate.partition(":")
            waiting = (JobStatus.RUNNING, {"attempt": int(attempt), "waiting": True})
            await wait_for(
                lambda: bool(seen[name]) and seen[name][-1] == waiting,
                timeout=30,
                what=f"{name} attempt {attempt} to report progress",
                details=lambda: f"{seen}\n{worker.output_tail()}",
            )
            await client.rpush(app.recorder.key(f"gate:{gate}"), b"go")

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, "ok", watch_ok)
            tg.start_soon(watch, "bad", watch_bad)
            worker = await spawn(workers, env, tmp_path)
            for gate in ("ok:1", "bad:1", "ok:2", "bad:2"):
                await open_gate_when_waiting(gate)
        assert await watch_ok.result(timeout=5) == "ok done"
        with pytest.raises(JobFailed, match="stepper bad failed on attempt 2"):
            await watch_bad.result(timeout=5)
    await worker.terminate()

    progress = [{"attempt": 1, "waiting": True}, {"attempt": 2, "waiting": True}]
    statuses = {name: [status for status, _ in changes] for name, changes in seen.items()}
    # "running" comes in twice per attempt: when it starts, and with the progress it reports
    expected_middle = [
        JobStatus.RUNNING,
        JobStatus.RETRYING,
        JobStatus.RUNNING,
    ]
    for name, first, last in (
        ("ok", JobStatus.QUEUED, JobStatus.SUCCEEDED),
        ("bad", JobStatus.SCHEDULED, JobStatus.FAILED),
    ):
        collapsed = [
            s for i, s in enumerate(statuses[name]) if i == 0 or statuses[name][i - 1] != s
        ]
        assert collapsed == [first, *expected_middle, last], seen[name]
        reported = [p for s, p in seen[name] if s is JobStatus.RUNNING and p is not None]
        assert reported == progress, seen[name]
