"""``aqueue worker --processes N`` on the shared RabbitMQ: the supervisor and its children.

The supervisor's log names each child's index and PID (``worker process 0 started (pid
1234)``); the tests find the children from those lines, and SIGKILL any still running at the
end (they run in sessions of their own, so killing the supervisor would not take them along).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.polling import read_lines, wait_for
from tests.helpers.worker_process import STARTED_LINE, WorkerProcess, apps_env
from tests.helpers.workers import delete_topology
from tests.integration.apps import jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

JOBS_APP = "tests.integration.apps.jobs:queue"
STARTED = re.compile(r"worker process (\d+) started \(pid (\d+)\)")


def children(supervisor: WorkerProcess) -> list[tuple[int, int]]:
    """(index, pid) of every child the supervisor logged as started, in order."""
    return [(int(i), int(pid)) for i, pid in STARTED.findall(supervisor.output())]


def _kill_if_ours(pid: int) -> None:
    """SIGKILL `pid` if it still is an ``aqueue worker`` (not a process that reused the PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # gone
    if b"aqueue\x00worker" in cmdline:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[None]:
    """Delete this test's queues and exchanges after it."""
    yield
    await delete_topology(amqp_url, prefix)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Supervisors started by the test; afterwards each and all its children are SIGKILLed."""
    made: list[WorkerProcess] = []
    yield made
    for supervisor in made:
        supervisor.cleanup()
        for _, pid in children(supervisor):
            _kill_if_ours(pid)


def start(
    made: list[WorkerProcess], app: str, *args: str, env: dict[str, str], log: Path
) -> WorkerProcess:
    supervisor = WorkerProcess(app, args, env=env, log=log)
    made.append(supervisor)
    supervisor.start()
    return supervisor


async def wait_consuming(supervisor: WorkerProcess, count: int) -> None:
    """Wait until the children logged ``worker consuming from`` `count` times in all."""
    await wait_for(
        lambda: supervisor.output().count(STARTED_LINE) >= count,
        timeout=30,
        what=f"{count} 'worker consuming from' lines",
        details=supervisor.output_tail,
    )


async def test_two_processes_survive_a_sigkill_and_stop_on_sigterm(
    amqp_url: str,
    prefix: str,
    tmp_path: Path,
    cleanup: None,
    supervised: list[WorkerProcess],
) -> None:
    """--processes 2 runs two consumers; a child SIGKILLed among 500 jobs is restarted and no
    job is lost; SIGTERM then stops both children with status 0 and the supervisor exits 0."""
    out = tmp_path / "records"
    app = jobs.make_app(amqp_url, prefix)
    env = apps_env(amqp_url, prefix, out)
    total = 500

    def done() -> set[str]:
        return {line.partition(" ")[2] for line in read_lines(out) if line.startswith("done ")}

    async with app.queue.session() as session:
        supervisor = start(
            supervised,
            JOBS_APP,
            "--processes",
            "2",
            "--concurrency",
            "5",
            env=env,
            log=tmp_path / "supervisor.log",
        )
        await wait_consuming(supervisor, 2)
        work_queue = session.names.work_queue("default")
        info = await session.transport.queue_info(work_queue)
        assert info.consumers == 2
        first = dict(children(supervisor))
        assert sorted(first) == [0, 1]
        assert first[0] != first[1]

        batch = await app.queue.enqueue_many(app.done, [(0.05,)] * total)
        assert batch.ok
        enqueued = {job.job_id for job in batch.jobs}
        await wait_for(
            lambda: len(done()) >= 100,
            timeout=30,
            what="100 jobs done",
            details=supervisor.output_tail,
        )
        os.kill(first[0], signal.SIGKILL)
        done_at_kill = len(done())
        await supervisor.wait_output(
            f"worker process 0 (pid {first[0]}) died unexpectedly: killed by SIGKILL"
        )
        await wait_consuming(supervisor, 3)  # the replacement consumes
        restarted = children(supervisor)[-1]
        assert restarted[0] == 0
        assert restarted[1] not in first.values()

        await wait_for(
            lambda: done() >= enqueued,
            timeout=60,
            what="every job done",
            details=lambda: f"{len(done())} of {total} done\n{supervisor.output_tail()}",
        )
        supervisor.send_signal(signal.SIGTERM)
        assert await supervisor.wait(timeout=30) == 0, supervisor.output_tail()
        assert await session.transport.message_count(work_queue) == 0

    assert done_at_kill < total, "the jobs were all done before the kill"
    output = supervisor.output()
    assert f"worker process 0 (pid {restarted[1]}) stopped: exit status 0" in output
    assert f"worker process 1 (pid {first[1]}) stopped: exit status 0" in output
    assert output.count("received SIGTERM: stopping gracefully") == 3  # supervisor + 2 children
    print(f"\n--processes 2: SIGKILL after {done_at_kill} of {total} done; all {total} ran")


async def test_a_bad_app_path_exits_2_before_any_child_starts(
    amqp_url: str, prefix: str, tmp_path: Path, supervised: list[WorkerProcess]
) -> None:
    """An app path that does not import is bad input, found before spawning: status 2."""
    supervisor = start(
        supervised,
        "tests.integration.apps.no_such_module:queue",
        "--processes",
        "2",
        env=apps_env(amqp_url, prefix),
        log=tmp_path / "supervisor.log",
    )
    assert await supervisor.wait(timeout=20) == 2, supervisor.output_tail()
    assert children(supervisor) == []


async def test_children_that_cannot_connect_end_the_supervisor_without_a_restart_loop(
    prefix: str, tmp_path: Path, supervised: list[WorkerProcess]
) -> None:
    """Children that die before consuming (no broker answers) are retried a few times, then
    the supervisor gives up with status 1 instead of restarting them forever."""
    env = {
        **apps_env("amqp://guest:guest@127.0.0.1:1/", prefix),  # nothing listens on port 1
        "AQUEUE_TEST_CONNECT_TIMEOUT": "1",
    }
    supervisor = start(
        supervised,
        JOBS_APP,
        "--processes",
        "2",
        env=env,
        log=tmp_path / "supervisor.log",
    )
    assert await supervisor.wait(timeout=40) == 1, supervisor.output_tail()
    output = supervisor.output()
    assert "could not start: exit status 1 before consuming (3 time(s) in a row)" in output
    assert len(children(supervisor)) <= 6  # at most 3 starts each: no loop
    assert STARTED_LINE not in output


async def test_processes_min_max_adds_a_process_while_every_one_is_cpu_bound(
    amqp_url: str,
    prefix: str,
    tmp_path: Path,
    cleanup: None,
    supervised: list[WorkerProcess],
) -> None:
    """--processes 1:2 with a CPU-bound backlog: the one child's autoscaler says CPU-bound,
    the supervisor adds a second process (never a third), and SIGTERM stops both with 0."""
    app = jobs.make_app(amqp_url, prefix)
    env = apps_env(amqp_url, prefix, tmp_path / "records")
    async with app.queue.session() as session:
        supervisor = start(
            supervised,
            JOBS_APP,
            "--processes",
            "1:2",
            "--autoscale",
            "1:8",
            "--target-wait",
            "0.2",
            env=env,
            log=tmp_path / "supervisor.log",
        )
        await wait_consuming(supervisor, 1)
        batch = await app.queue.enqueue_many(app.queue.tasks["crunch"], [(0.1,)] * 600)
        assert batch.ok
        await wait_for(
            lambda: "adding worker process 1" in supervisor.output(),
            timeout=60,
            what="a second process for the CPU-bound backlog",
            details=supervisor.output_tail,
        )
        assert "CPU-bound:" in supervisor.output()  # what the child's autoscaler said
        await wait_consuming(supervisor, 2)
        info = await session.transport.queue_info(session.names.work_queue("default"))
        # two processes; an autoscaled child that grew its prefetch under the backlog holds
        # one subscription more until its queue is idle (docs/scaling.md)
        assert info.consumers >= 2
        supervisor.send_signal(signal.SIGTERM)
        assert await supervisor.wait(timeout=30) == 0, supervisor.output_tail()
    assert "adding worker process 2" not in supervisor.output()  # MAX is 2
    assert [index for index, _ in children(supervisor)] == [0, 1]
