"""Dead-letter tooling on the shared RabbitMQ: replay for real, peek order, and ``aqueue dlq``.

The jobs here die for real: a task fails while the test says it is broken, the worker
dead-letters it, the test heals it, a replay sends it back and a worker runs it.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import anyio
import pytest

from aqueue import DeadLetterQueue, ReplayResult, Task, TaskQueue, WorkerSettings, current_job
from aqueue._client.session import Session
from aqueue._core import wire as t
from aqueue._core.topology import QueueType, TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._transport import OutgoingMessage
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.rabbit_node import free_ports
from tests.helpers.worker_process import ROOT, apps_env, aqueue_command, subprocess_env
from tests.helpers.workers import delete_topology, wait_until

pytestmark = pytest.mark.integration

JOBS = 1000
APP = "tests.integration.apps.jobs:queue"


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[list[str]]:
    """Logical queues to delete after the test, with every exchange aqueue declared for them."""
    queues = ["default"]
    yield queues
    await delete_topology(amqp_url, prefix, queues)
    connection = await aio_pika.connect(
        amqp_url, timeout=10, client_properties={"connection_name": f"{prefix}-cleanup"}
    )
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(TopologyNames(prefix).delay_delivery_exchange)


@dataclass
class Flaky:
    """A TaskQueue whose task fails while `broken` is set, recording the jobs that succeed."""

    queue: TaskQueue
    task: Task[[int], None]
    broken: bool = True
    succeeded: list[str] = field(default_factory=list)


def make_flaky(url: str, prefix: str) -> Flaky:
    queue = TaskQueue(url, prefix=prefix, name=f"{prefix}-test")
    app = Flaky(queue, None)  # type: ignore[arg-type]

    @queue.task(name="flaky")
    async def flaky(index: int) -> None:
        if app.broken:
            raise ValueError(f"broken for {index}")
        app.succeeded.append(current_job().job_id)

    app.task = flaky
    return app


async def dead_letter_jobs(app: Flaky, count: int) -> set[str]:
    """Enqueue `count` jobs and let a worker dead-letter every one; return their ids."""
    async with running_worker(app.queue, WorkerSettings(concurrency=100, grace=5)) as worker:
        batch = await app.queue.enqueue_many(app.task, [(i,) for i in range(count)])
        assert batch.ok, batch.failures[:3]
        await wait_until(worker, lambda s: s.dead_lettered >= count, timeout=90)
    assert await app.queue.dead_letters().count() == count
    return {job.job_id for job in batch.jobs}


async def run_until_all_succeeded(app: Flaky, job_ids: set[str]) -> None:
    async with running_worker(app.queue, WorkerSettings(concurrency=100, grace=5)) as worker:
        await wait_until(worker, lambda s: set(app.succeeded) >= job_ids, timeout=90)


async def test_replay_of_a_thousand_dead_lettered_jobs_runs_each_of_them(
    amqp_url: str, prefix: str, cleanup: list[str]
) -> None:
    """1,000 jobs that died for real, replayed while a worker runs, each run once more."""
    app = make_flaky(amqp_url, prefix)
    async with app.queue.session() as session:
        job_ids = await dead_letter_jobs(app, JOBS)
        app.broken = False
        progress: list[int] = []
        async with running_worker(app.queue, WorkerSettings(concurrency=100, grace=5)) as worker:
            result = await app.queue.dead_letters().replay(
                on_progress=lambda done, total: progress.append(total)
            )
            assert result == ReplayResult(replayed=JOBS, skipped=0)
            await wait_until(worker, lambda s: s.succeeded >= JOBS, timeout=90)
        assert await app.queue.dead_letters().count() == 0
        assert await session.transport.message_count(session.names.work_queue("default")) == 0
    assert set(progress) == {JOBS}
    assert len(progress) == JOBS
    assert Counter(app.succeeded) == Counter(job_ids)


async def test_replay_killed_midway_and_run_again_runs_every_job(
    amqp_url: str, prefix: str, cleanup: list[str], tmp_path: Path
) -> None:
    """``aqueue dlq replay`` SIGKILLed midway, then run again: every job runs, the DLQ empties.

    At most one job runs twice: the one whose copy was confirmed when the replay died.
    """
    app = make_flaky(amqp_url, prefix)
    async with app.queue.session() as session:
        job_ids = await dead_letter_jobs(app, JOBS)
        dlq = app.queue.dead_letters()
        work = session.names.work_queue("default")
        log = tmp_path / "replay.log"
        argv = aqueue_command("dlq", "replay", "default", "--url", amqp_url, "--prefix", prefix)
        with log.open("wb") as out:
            replay = await anyio.open_process(
                argv,
                cwd=ROOT,
                env=subprocess_env({}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        async with replay:  # on the way out: killed if it still runs, and reaped
            await wait_for(
                lambda: _replayed_at_least(session, 300),
                timeout=60,
                what="the replay to move 300 jobs",
                details=log.read_text,
            )
            replay.send_signal(signal.SIGKILL)
            await replay.wait()
        assert replay.returncode == -signal.SIGKILL
        # the broker gives back what the killed replay held as soon as its connection is gone
        await wait_for(
            lambda: _total_at_least(session, dlq, JOBS),
            timeout=30,
            what="the killed replay's dead letters to come back",
        )
        moved = await session.transport.message_count(work)
        assert 300 <= moved < JOBS, log.read_text()

        done = await _run_cli(
            "dlq", "replay", "default", "--url", amqp_url, "--prefix", prefix, timeout=120
        )
        assert done.returncode == 0, done.output
        assert "replayed" in done.output
        assert await dlq.count() == 0

        app.broken = False
        await run_until_all_succeeded(app, job_ids)
        assert await dlq.count() == 0
        assert await session.transport.message_count(work) == 0
    runs = Counter(app.succeeded)
    assert set(runs) == job_ids
    assert sum(runs.values()) - JOBS <= 1, [job for job, n in runs.items() if n > 1]


async def _replayed_at_least(session: Session, count: int) -> bool:
    return await session.transport.message_count(session.names.work_queue("default")) >= count


async def _total_at_least(session: Session, dlq: DeadLetterQueue, count: int) -> bool:
    work = await session.transport.message_count(session.names.work_queue("default"))
    return work + await dlq.count() >= count


async def _has_dead_letters(dlq: DeadLetterQueue) -> bool:
    return await dlq.count() > 0


async def put_dead_letters(session: Session, tasks: list[str]) -> list[str]:
    """Publish dead letters as the worker writes them, one by one (in order)."""
    await session.producer.declare_queue("default")
    ids = []
    for index, task in enumerate(tasks):
        headers: dict[str, HeaderValue] = {
            t.HEADER_TASK: task,
            t.HEADER_ATTEMPT: 1,
            t.HEADER_DEAD_REASON: "failed",
            t.HEADER_DEAD_QUEUE: "default",
            t.HEADER_DEAD_ATTEMPTS: 1,
        }
        job_id = f"job-{index:04d}"
        message = OutgoingMessage(
            session.names.dead_letter_exchange,
            "default",
            b'{"args": [], "kwargs": {}}',
            job_id,
            headers,
        )
        await session.transport.publish(message, timeout=10)
        ids.append(job_id)
    return ids


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_peeks_and_filtered_replays_keep_the_order_on_the_broker(
    amqp_url: str, prefix: str, cleanup: list[str], queue_type: QueueType
) -> None:
    """Repeated list(), find() and replay(task=...) leave the other dead letters in order.

    On a quorum queue this needs the put-back in small batches: RabbitMQ 3.10 reorders
    messages given back by closing the connection, or rejected more than 32 at once.
    """
    queue = TaskQueue(amqp_url, prefix=prefix, queue_type=queue_type, name=f"{prefix}-test")
    async with queue.session() as session:
        tasks = ["b" if i % 5 == 0 else "a" for i in range(300)]
        ids = await put_dead_letters(session, tasks)
        dlq = queue.dead_letters()
        for limit in (20, 3, 300, 7):
            letters = await dlq.list(limit=limit)
            assert [letter.job_id for letter in letters] == ids[:limit]
        assert await dlq.find(ids[150]) is not None
        assert [letter.job_id for letter in await dlq.list(limit=1000)] == ids
        assert await dlq.replay(task="b", limit=10) == ReplayResult(replayed=10, skipped=290)
        replayed = {ids[i] for i in range(0, 50, 5)}
        left = [job_id for job_id in ids if job_id not in replayed]
        assert [letter.job_id for letter in await dlq.list(limit=1000)] == left
        assert await dlq.count() == 290


async def test_broker_dead_letter_is_read_from_rabbitmq_headers(
    amqp_url: str, prefix: str, cleanup: list[str]
) -> None:
    """A job RabbitMQ dead-lettered at the delivery limit reads as such, with its time."""
    queue = TaskQueue(amqp_url, prefix=prefix, delivery_limit=1, name=f"{prefix}-test")

    @queue.task(name="crash")
    async def crash() -> None: ...

    async with queue.session() as session:
        job = await queue.enqueue(crash)
        work = session.names.work_queue("default")
        for _ in range(2):  # two workers that die on it
            delivery = await session.transport.get(work)
            assert delivery is not None
            await delivery.reject(requeue=True)
        dlq = queue.dead_letters()
        await wait_for(
            lambda: _has_dead_letters(dlq), timeout=10, what="the broker to dead-letter the job"
        )
        [letter] = await dlq.list()
    assert (letter.job_id, letter.task, letter.reason, letter.source) == (
        job.job_id,
        "crash",
        "delivery_limit",
        "broker",
    )
    assert letter.attempts == 2
    assert letter.last_failed_at is not None
    assert letter.last_failed_at.tzinfo is not None


# -- the command line -------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    returncode: int
    output: str
    stdout: str = ""


async def _run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> Done:
    environment = subprocess_env(env or {})
    for name in ("AQUEUE_URL", "AQUEUE_PREFIX"):  # only what the test sets
        if env is None or name not in env:
            environment.pop(name, None)
    with anyio.fail_after(timeout):
        done = await anyio.run_process(
            aqueue_command(*args),
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    stdout = done.stdout.decode(errors="replace")
    return Done(done.returncode, stdout + done.stderr.decode(errors="replace"), stdout)


async def test_cli_list_show_and_purge(amqp_url: str, prefix: str, cleanup: list[str]) -> None:
    """list shows a table, show one job in full (found through --app), purge --yes empties it."""
    app = make_flaky(amqp_url, prefix)
    async with app.queue:
        job_ids = sorted(await dead_letter_jobs(app, 3))
        target = "--url", amqp_url, "--prefix", prefix
        listed = await _run_cli("dlq", "list", "default", *target)
        assert listed.returncode == 0, listed.output
        for job_id in job_ids:
            assert job_id in listed.output
        assert "flaky" in listed.output
        assert "ValueError: broken for" in listed.output
        assert f"3 dead letter(s) in {prefix}.default.dlq" in listed.output

        by_app = apps_env(amqp_url, prefix)
        shown = await _run_cli("dlq", "show", job_ids[0], "--app", APP, env=by_app)
        assert shown.returncode == 0, shown.output
        assert job_ids[0] in shown.output
        assert "failed (dead-lettered by the worker)" in shown.output
        assert "raise ValueError" in shown.output  # the traceback
        assert "history" in shown.output

        # issue 12: for scripts, and for an 80-column terminal: every id whole
        as_json = await _run_cli("dlq", "list", "default", "--json", *target)
        assert as_json.returncode == 0, as_json.output
        document = json.loads(as_json.stdout)
        assert document["version"] == 1
        assert document["total"] == 3
        assert document["dead_letter_queue"] == f"{prefix}.default.dlq"
        assert sorted(letter["job_id"] for letter in document["dead_letters"]) == job_ids
        assert {letter["task"] for letter in document["dead_letters"]} == {"flaky"}
        narrow = await _run_cli("dlq", "list", "default", *target, env={"COLUMNS": "80"})
        assert narrow.returncode == 0, narrow.output
        assert max(map(len, narrow.stdout.splitlines())) <= 80, narrow.stdout
        for job_id in job_ids:
            assert job_id in narrow.stdout.split(), narrow.stdout
        shown_json = await _run_cli(
            "dlq", "show", job_ids[0], "--queue", "default", "--json", *target
        )
        assert shown_json.returncode == 0, shown_json.output
        letter = json.loads(shown_json.stdout)
        assert letter["job_id"] == job_ids[0]
        assert len(letter["args"]) == 1
        assert isinstance(letter["args"][0], int)
        assert "raise ValueError" in letter["traceback"]
        assert letter["history"] == [] or letter["history"][0]["attempt"] >= 1

        sizes = await _run_cli("queues", APP, "--json", env=apps_env(amqp_url, prefix))
        assert sizes.returncode == 0, sizes.output
        assert json.loads(sizes.stdout) == {
            "version": 1,
            "queues": [{"queue": "default", "ready": 0, "dead_letters": 3}],
        }

        # issue 12: a replay of a task with no dead letters says so and exits 1
        typo = await _run_cli("dlq", "replay", "default", "--task", "flakey", *target)
        assert typo.returncode == 1, typo.output
        assert "no dead letters of task 'flakey'" in typo.output
        assert "(the 3 there are other tasks')" in typo.output
        assert await app.queue.dead_letters().count() == 3

        missing = await _run_cli("dlq", "show", "no-such-job", "--queue", "default", *target)
        assert missing.returncode == 1, missing.output
        assert "no dead letter with job id 'no-such-job' in default" in missing.output

        purged = await _run_cli("dlq", "purge", "default", "--yes", *target)
        assert purged.returncode == 0, purged.output
        assert f"purged 3 dead letter(s) from {prefix}.default.dlq" in purged.output
        assert await app.queue.dead_letters().count() == 0

        nothing = await _run_cli("dlq", "list", "default", *target)
        assert nothing.returncode == 0, nothing.output
        assert "no dead letters in" in nothing.output


async def test_cli_errors_from_the_broker_exit_1_with_a_clear_message(
    amqp_url: str, prefix: str
) -> None:
    """A dead-letter queue that does not exist, or no broker at all: exit 1, no traceback."""
    missing = await _run_cli("dlq", "list", "default", "--url", amqp_url, "--prefix", prefix)
    assert missing.returncode == 1, missing.output
    assert f"there is no dead-letter queue '{prefix}.default.dlq'" in missing.output
    assert "Traceback" not in missing.output

    [port] = free_ports(1)
    env = {
        "AQUEUE_TEST_URL": f"amqp://guest:guest@127.0.0.1:{port}/",
        "AQUEUE_TEST_CONNECT_TIMEOUT": "1",
    }
    no_broker = await _run_cli("dlq", "list", "default", "--app", APP, env=env)
    assert no_broker.returncode == 1, no_broker.output
    assert "error:" in no_broker.output
    assert "connection refused" in no_broker.output
    assert "Traceback" not in no_broker.output


BAD_INPUT = [
    pytest.param(["list", "bad queue"], "queue name 'bad queue'", id="queue-name"),
    pytest.param(["list", "default", "--limit", "0"], "'--limit'", id="list-limit-0"),
    pytest.param(["replay", "default", "--limit", "0"], "'--limit'", id="replay-limit-0"),
    pytest.param(["replay", "default", "--task", " "], "the task name is empty", id="empty-task"),
    pytest.param(["list", "default", "--prefix", "bad prefix"], "prefix 'bad prefix'", id="prefix"),
    pytest.param(
        ["list", "default", "--url", "http://localhost/"], "not an AMQP URL", id="http-url"
    ),
    pytest.param(
        ["list", "default", "--app", APP, "--prefix", "p"],
        "give --app, or --prefix, not both",
        id="app-and-prefix",
    ),
    pytest.param(
        ["list", "default", "--app", "tests.integration.apps.missing:queue"],
        "cannot import 'tests.integration.apps.missing'",
        id="app-missing",
    ),
    pytest.param(["show", "job-1"], "say where to look: --queue QUEUE", id="show-nowhere"),
    pytest.param(["show", " ", "--queue", "default"], "the job id is empty", id="show-empty-id"),
    pytest.param(["show", "job-1", "--queue", "a b"], "queue name 'a b'", id="show-bad-queue"),
    pytest.param(["purge", "default"], "refusing to purge without --yes", id="purge-no-tty"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
async def test_cli_bad_input_fails_before_connecting(args: list[str], message: str) -> None:
    """Bad input exits 2 with a message naming the problem, without trying the (dead) broker."""
    [port] = free_ports(1)
    dead = f"amqp://guest:guest@127.0.0.1:{port}/"
    env = {"AQUEUE_URL": dead, "AQUEUE_TEST_URL": dead, "AQUEUE_TEST_CONNECT_TIMEOUT": "30"}
    began = anyio.current_time()
    done = await _run_cli("dlq", *args, env=env)
    assert done.returncode == 2, done.output
    assert message in " ".join(done.output.split()), done.output
    assert "Traceback" not in done.output
    assert "connection refused" not in done.output
    assert anyio.current_time() - began < 20


async def test_cli_bad_url_in_the_environment_is_named() -> None:
    """A bad $AQUEUE_URL is refused before connecting, and the message names the variable."""
    done = await _run_cli("dlq", "list", "default", env={"AQUEUE_URL": "localhost:5672"})
    assert done.returncode == 2, done.output
    assert "AQUEUE_URL" in done.output
    assert "not an AMQP URL" in done.output
