"""Issue 2 on the shared RabbitMQ, in process: exactly-once under normal operation, dead letters
with their reasons, and enqueue errors raised before or by the broker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue import Task, TaskQueue, WorkerSettings, current_job
from aqueue._client.producer import REFUSED_PAUSE_MAX
from aqueue._core import wire as t
from aqueue._core.topology import BindingSpec, QueueSpec, Topology, TopologyNames
from aqueue._core.wire import Envelope
from aqueue._transport import OutgoingMessage
from aqueue.exceptions import EncodeError, PublishNacked
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.workers import delete_topology, drain, wait_until

pytestmark = pytest.mark.integration

JOBS = 10_000


@pytest.fixture
async def cleanup(amqp_url: str, prefix: str) -> AsyncIterator[list[str]]:
    """Logical (or ``prefix.``-named broker) queues to delete, and the exchanges, afterwards."""
    queues = ["default"]
    yield queues
    await delete_topology(amqp_url, prefix, queues)


@pytest.fixture
def queue(amqp_url: str, prefix: str, cleanup: list[str]) -> TaskQueue:
    """This test's TaskQueue on the shared broker, closed; its topology is deleted afterwards."""
    return TaskQueue(amqp_url, prefix=prefix, name=prefix)


def recording_task(queue: TaskQueue, name: str) -> tuple[Task[[int], None], list[str]]:
    """Register task `name`, which records the job id of every run; return it and the record."""
    ran: list[str] = []

    @queue.task(name=name)
    async def record(index: int) -> None:
        ran.append(current_job().job_id)

    return record, ran


@pytest.mark.serial
async def test_ten_thousand_jobs_each_run_exactly_once(queue: TaskQueue) -> None:
    """10,000 jobs enqueued with enqueue_many each run exactly once under normal operation."""
    note, ran = recording_task(queue, "note")

    async with queue.session() as session:
        began = time.monotonic()
        async with running_worker(queue, WorkerSettings(concurrency=200, grace=5)) as worker:
            batch = await queue.enqueue_many(note, [(i,) for i in range(JOBS)])
            enqueued = time.monotonic() - began
            assert batch.ok, batch.failures[:3]
            await wait_until(worker, lambda s: s.succeeded >= JOBS, timeout=60)
        finished = time.monotonic() - began
        assert await session.transport.message_count(session.names.work_queue("default")) == 0
    print(f"\n{JOBS} jobs: enqueued in {enqueued:.2f} s, all run in {finished:.2f} s")
    duplicates = [job_id for job_id, count in Counter(ran).items() if count > 1]
    assert duplicates == []
    assert len(ran) == JOBS
    assert set(ran) == {job.job_id for job in batch.jobs}
    statistics = worker.statistics()
    assert (statistics.received, statistics.succeeded, statistics.failed) == (JOBS, JOBS, 0)


async def test_undecodable_unknown_and_failed_jobs_are_dead_lettered_once(
    queue: TaskQueue, prefix: str
) -> None:
    """A garbage body, an unknown task and a raising job end in the DLQ once, with their reasons."""
    good_task, good = recording_task(queue, "good")

    @queue.task(name="explode")
    async def explode(number: int) -> None:
        raise ValueError(f"boom {number}")

    names = TopologyNames(prefix)

    def raw(job_id: str, task: str, body: bytes) -> OutgoingMessage:
        envelope = Envelope(job_id=job_id, task=task, queue="default", enqueued_at_ms=1)
        return OutgoingMessage(names.exchange, "default", body, job_id, envelope.headers())

    garbage_body = b"\x00\xffnot json{"
    async with queue.session() as session:
        async with running_worker(queue, WorkerSettings(concurrency=10, grace=5)) as worker:
            first = await queue.enqueue_many(good_task, [(i,) for i in range(25)])
            await session.transport.publish(raw("garbage", "good", garbage_body), timeout=10)
            await session.transport.publish(
                raw("unknown", "no.such.task", b'{"args":[],"kwargs":{}}'), timeout=10
            )
            failed = await queue.enqueue(explode, 7)
            second = await queue.enqueue_many(good_task, [(i,) for i in range(25, 50)])
            await wait_until(
                worker, lambda s: s.succeeded == 50 and s.dead_lettered == 3, timeout=30
            )
        dead = await drain(session.transport, names.dead_letter_queue("default"))
        assert await session.transport.message_count(names.work_queue("default")) == 0

    assert sorted(good) == sorted(job.job_id for job in [*first.jobs, *second.jobs])
    assert len(good) == 50
    by_id = {delivery.message_id: delivery for delivery in dead}
    assert sorted(d.message_id or "" for d in dead) == sorted(["garbage", "unknown", failed.job_id])
    for delivery in dead:
        assert delivery.headers[t.HEADER_DEAD_QUEUE] == "default"
        assert delivery.headers[t.HEADER_DEAD_ATTEMPTS] == 1
        assert "x-death" not in delivery.headers  # the worker's own copy, not a broker dead letter

    decode = by_id["garbage"]
    assert decode.headers[t.HEADER_DEAD_REASON] == "decode-error"
    assert decode.headers[t.HEADER_DEAD_EXC_TYPE] == "aqueue.exceptions.DecodeError"
    assert "not valid JSON" in str(decode.headers[t.HEADER_DEAD_EXC_MESSAGE])
    assert decode.body == garbage_body  # kept as it was, for inspection and replay

    unknown = by_id["unknown"]
    assert unknown.headers[t.HEADER_DEAD_REASON] == "unknown-task"
    assert unknown.headers[t.HEADER_DEAD_EXC_TYPE] == "aqueue.exceptions.UnknownTaskError"
    assert "no.such.task" in str(unknown.headers[t.HEADER_DEAD_EXC_MESSAGE])
    assert unknown.headers[t.HEADER_TASK] == "no.such.task"

    raised = by_id[failed.job_id]
    assert raised.headers[t.HEADER_DEAD_REASON] == "failed"
    assert raised.headers[t.HEADER_DEAD_EXC_TYPE] == "ValueError"
    assert raised.headers[t.HEADER_DEAD_EXC_MESSAGE] == "boom 7"
    traceback = str(raised.headers[t.HEADER_DEAD_TRACEBACK])
    assert "Traceback (most recent call last)" in traceback
    assert 'raise ValueError(f"boom {number}")' in traceback
    assert raised.headers[t.HEADER_TASK] == "explode"
    statistics = worker.statistics()
    assert (statistics.received, statistics.failed, statistics.dead_lettered) == (53, 3, 3)


async def test_non_json_argument_raises_before_anything_is_published(queue: TaskQueue) -> None:
    """enqueue and enqueue_many of a non-JSON argument raise EncodeError and publish nothing."""

    @queue.task(name="echo")
    async def echo(value: object) -> None:
        pass

    async with queue.session() as session:
        with pytest.raises(EncodeError, match=r"args\[0\] of type object"):
            await queue.enqueue(echo, object())
        with pytest.raises(EncodeError, match=r"call 2: argument args\[0\] of type set"):
            await queue.enqueue_many(echo, [(1,), (2,), ({3},), (4,)])
        assert await session.transport.message_count(session.names.work_queue("default")) == 0


def full_queue(prefix: str, max_length: int) -> Topology:
    """A reject-publish queue of `max_length` bound beside the work queue of ``default``."""
    full = f"{prefix}.full"
    return Topology(
        queues=(QueueSpec(full, {"x-max-length": max_length, "x-overflow": "reject-publish"}),),
        bindings=(BindingSpec(full, TopologyNames(prefix).exchange, "default"),),
    )


async def test_nacked_publish_raises_publish_nacked_at_its_deadline(
    amqp_url: str, prefix: str, cleanup: list[str]
) -> None:
    """A publish the broker keeps nacking (a full reject-publish queue on the route) is retried
    until publish_deadline, then raises PublishNacked."""
    deadline = 1.5
    queue = TaskQueue(amqp_url, prefix=prefix, name=prefix, publish_deadline=deadline)

    @queue.task(name="echo")
    async def echo(value: object) -> None:
        pass

    cleanup.append(f"{prefix}.full")
    async with queue.session() as session:
        await session.transport.declare(full_queue(prefix, 0))
        began = time.monotonic()
        with pytest.raises(PublishNacked, match="refused by the broker"):
            await queue.enqueue(echo, 1)
        assert deadline - REFUSED_PAUSE_MAX <= time.monotonic() - began <= deadline + 0.5
        batch = await queue.enqueue_many(echo, [(2,), (3,)])
    assert not batch.ok
    assert [(f.index, type(f.error)) for f in batch.failures] == [
        (0, PublishNacked),
        (1, PublishNacked),
    ]
    assert [f.job_id for f in batch.failures] == [job.job_id for job in batch.jobs]


async def test_enqueue_to_a_full_queue_is_confirmed_once_there_is_room(
    queue: TaskQueue, prefix: str, cleanup: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A nacked enqueue is published again after a pause: a queue drained meanwhile takes it."""
    caplog.set_level(logging.DEBUG, logger="aqueue.producer")

    @queue.task(name="echo")
    async def echo(value: object) -> None:
        pass

    full = f"{prefix}.full"
    cleanup.append(full)
    async with queue.session() as session, anyio.create_task_group() as tg:
        await session.transport.declare(full_queue(prefix, 1))
        await queue.enqueue(echo, 1)  # fills it
        jobs: list[str] = []
        confirmed = anyio.Event()

        async def enqueue() -> None:
            jobs.append((await queue.enqueue(echo, 2)).job_id)
            confirmed.set()

        tg.start_soon(enqueue)
        await wait_for(lambda: "retrying publish" in caplog.text, timeout=10, what="a nack")
        assert not confirmed.is_set()
        # Room for one: take the first job alone (a drain could also take the retried
        # publish when its pause ends meanwhile, as it does on a loaded machine).
        first = await session.transport.get(full)
        assert first is not None
        await first.ack()
        with anyio.fail_after(10):
            await confirmed.wait()
        [stored] = await drain(session.transport, full)
        assert stored.message_id == jobs[0]


async def test_a_graceful_stop_gives_back_unstarted_deliveries_as_fresh_jobs(
    queue: TaskQueue,
) -> None:
    """A worker holding 9 prefetched deliveries behind one running job stops gracefully: the 9
    go back to the queue as fresh copies (not redelivered), so the next worker runs them as
    first attempts, none through the quarantine, and the running job finishes once."""
    release = anyio.Event()
    runs: list[tuple[int, bool, int]] = []

    @queue.task(name="blocker")
    async def blocker() -> None:
        await release.wait()

    @queue.task(name="quick")
    async def quick(index: int) -> None:
        job = current_job()
        runs.append((index, job.redelivered, job.attempt))

    settings = WorkerSettings(concurrency=1, prefetch=10, grace=10)
    async with queue.session() as session:
        await queue.enqueue(blocker)
        batch = await queue.enqueue_many(quick, [(index,) for index in range(9)])
        assert batch.ok
        async with running_worker(queue, settings) as first:
            await wait_for(
                lambda: first.queue_figures()["default"].held == 9,
                timeout=10,
                what="9 deliveries held behind the running job",
            )
            first.stop()
            release.set()
            with anyio.fail_after(10):
                await first.wait_until(lambda s: s.in_flight == 0)
        assert first.statistics().succeeded == 1  # the blocker; none of the 9 started
        transport = session.transport
        work = await transport.queue_info(session.names.work_queue("default"))
        quarantine = await transport.queue_info(session.names.quarantine_queue("default"))
        assert (work.ready, quarantine.ready) == (9, 0)
        async with running_worker(queue, WorkerSettings(concurrency=4)) as second:
            with anyio.fail_after(20):
                await second.wait_until(lambda s: s.succeeded == 9)
    assert sorted(runs) == [(index, False, 1) for index in range(9)]


async def test_a_job_interrupted_by_a_stop_comes_back_as_its_next_attempt(
    queue: TaskQueue,
) -> None:
    """A job still running when the stop's grace runs out is handed back, not left unacked:
    the next worker runs it as attempt 2 (not redelivered, so not through the quarantine),
    the interruption in its history. Past ``crash_limit`` interruptions (1 here) it is
    dead-lettered with reason ``interrupted`` instead of going round again."""
    started = anyio.Event()
    runs: list[tuple[int, bool]] = []

    @queue.task(name="endless")
    async def endless() -> None:
        job = current_job()
        runs.append((job.attempt, job.redelivered))
        started.set()
        await anyio.sleep_forever()

    settings = WorkerSettings(concurrency=1, grace=0.2, crash_limit=1)
    async with queue.session() as session:
        names, transport = session.names, session.transport
        await queue.enqueue(endless)
        for _ in range(2):
            started = anyio.Event()
            async with running_worker(queue, settings) as worker:
                with anyio.fail_after(10):
                    await started.wait()
                worker.stop()
            if len(runs) == 1:
                work = await transport.queue_info(names.work_queue("default"))
                quarantine = await transport.queue_info(names.quarantine_queue("default"))
                assert (work.ready, quarantine.ready) == (1, 0)
        interrupted = "aqueue.exceptions.JobInterrupted"
        assert runs == [(1, False), (2, False)]
        [letter] = await queue.dead_letters().list()
        assert (letter.reason, letter.attempts) == ("interrupted", 2)
        assert letter.exception_type == interrupted
        assert [(f.attempt, f.type) for f in letter.history] == [(1, interrupted), (2, interrupted)]
        work = await transport.queue_info(names.work_queue("default"))
        quarantine = await transport.queue_info(names.quarantine_queue("default"))
        assert (work.ready, quarantine.ready) == (0, 0)
