"""``@queue.task(executor="process")``: checked at decoration, run in another process, and
killed at its timeout.

The tasks are at module level, as a pool process must import them by name (it imports this
module; the in-memory queue below is never opened there).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from aqueue import TaskQueue
from aqueue._results import JobStatus, MemoryResultBackend
from aqueue.exceptions import ConfigurationError, JobFailed
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.workers import WAIT

queue = TaskQueue("memory://", prefix="t", results=MemoryResultBackend())


@queue.task(executor="process", name="pid")
def pid() -> int:
    return os.getpid()


@queue.task(executor="process", name="spin", timeout=1.0)
def spin(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)  # noqa: TID251 - in a pool process: only a kill ends it early


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed and not yet reaped, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def test_a_process_task_runs_in_another_process_and_returns_its_value() -> None:
    """The function runs in a pool process (another PID); its return value is the result."""
    async with queue, running_worker(queue):
        job = await queue.enqueue(pid)
        child = await job.result(timeout=WAIT * 2)  # the first call starts the process
    assert isinstance(child, int)
    assert child != os.getpid()


async def test_a_timed_out_process_task_is_settled_as_timed_out_and_its_process_killed(
    tmp_path: Path,
) -> None:
    """At its 1 s timeout the job fails as a TimeoutError, within seconds, not the 60 s the
    function would take, and the pool process running it is killed."""
    pid_file = tmp_path / "pid"
    async with queue, running_worker(queue):
        # Start the pool first: spawning a process that imports aqueue can take longer than
        # the 1 s timeout on a loaded machine, and then `spin` would never have run.
        await (await queue.enqueue(pid)).result(timeout=WAIT * 2)
        began = anyio.current_time()
        job = await queue.enqueue(spin, str(pid_file))
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=WAIT * 2)
        took = anyio.current_time() - began
        assert await job.status() is JobStatus.FAILED
    assert info.value.remote_type == "TimeoutError"
    assert took < 15
    child = int(pid_file.read_text())
    assert child != os.getpid()
    await wait_for(lambda: not _alive(child), timeout=WAIT, what="the pool process to die")


def test_executor_must_be_thread_or_process() -> None:
    """Any other executor is refused at decoration, naming both choices."""
    other = TaskQueue("memory://")
    with pytest.raises(ConfigurationError, match="executor must be 'thread' or 'process'"):
        other.task(executor="fork")(_plain)  # type: ignore[call-overload]


def test_an_async_function_cannot_run_in_a_process() -> None:
    """executor='process' on an async function is a ConfigurationError at decoration."""
    other = TaskQueue("memory://")

    async def work() -> None: ...

    with pytest.raises(ConfigurationError, match="is async"):
        other.task(executor="process")(work)


def test_a_process_task_must_be_importable_by_name() -> None:
    """A nested function or a lambda cannot be found by a pool process: refused at decoration."""
    other = TaskQueue("memory://")

    def nested() -> None: ...

    with pytest.raises(ConfigurationError, match="top level"):
        other.task(executor="process")(nested)
    with pytest.raises(ConfigurationError, match="defined with def"):
        other.task(executor="process", name="lam")(lambda: None)


def test_a_module_level_function_is_accepted_and_thread_stays_the_default() -> None:
    """A top-level plain function may take executor='process'; without it, tasks use threads."""
    other = TaskQueue("memory://")
    assert other.task(executor="process")(_plain).options.executor == "process"
    assert other.task(name="plain2")(_plain).options.executor == "thread"


def _plain() -> None: ...


async def test_a_cancelled_process_task_has_its_process_killed(tmp_path: Path) -> None:
    """Cancelling a job that runs in a pool process kills that process; it reads cancelled."""
    pid_file = tmp_path / "pid"
    long_spin = spin.with_options(timeout=None)
    async with queue, running_worker(queue) as worker:
        job = await queue.enqueue(long_spin, str(pid_file))
        await wait_for(
            lambda: pid_file.exists() and bool(pid_file.read_text()),
            timeout=WAIT * 2,
            what="the pool process's pid file",
        )
        child = int(pid_file.read_text())
        await job.cancel()
        with anyio.fail_after(WAIT):
            await worker.wait_until(lambda s: s.cancelled == 1)
        assert await job.status() is JobStatus.CANCELLED
    await wait_for(lambda: not _alive(child), timeout=WAIT, what="the pool process's death")
