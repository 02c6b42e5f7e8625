"""Dead-letter tooling on the in-memory broker: read, find, replay, purge."""

from __future__ import annotations

import datetime as dt
import re
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from aqueue import (
    DeadLetter,
    DeadLetterQueue,
    ReplayResult,
    TaskQueue,
    Worker,
    WorkerSettings,
    current_job,
)
from aqueue._core import topology as t
from aqueue._core.topology import QueueType
from aqueue._core.types import HeaderValue
from aqueue._transport import OutgoingMessage
from aqueue.exceptions import ConfigurationError, PublishNacked
from aqueue.testing import running_worker
from tests.unit.test_worker import WAIT, wait_until

QUEUE_TYPES: list[QueueType] = ["quorum", "classic"]


def running(queue: TaskQueue, **settings: object) -> AbstractAsyncContextManager[Worker]:
    return running_worker(queue, WorkerSettings(**settings))  # type: ignore[arg-type]


async def put_dead_letters(
    queue: TaskQueue, tasks: list[str], logical: str = "default"
) -> list[str]:
    """Publish dead letters as the worker writes them (task names in order); return their ids."""
    await queue.declare_queue(logical)
    ids = []
    for index, task in enumerate(tasks):
        job_id = f"job-{index:03d}"
        headers: dict[str, HeaderValue] = {
            t.HEADER_TASK: task,
            t.HEADER_QUEUE: logical,
            t.HEADER_ATTEMPT: 1,
            t.HEADER_ENQUEUED_AT: 1_700_000_000_000,
            t.HEADER_DEAD_REASON: "failed",
            t.HEADER_DEAD_ATTEMPTS: 1,
            t.HEADER_DEAD_QUEUE: logical,
            t.HEADER_DEAD_EXC_TYPE: "ValueError",
            t.HEADER_DEAD_EXC_MESSAGE: f"bad {index}",
            t.HEADER_HISTORY: [
                {"attempt": 1, "type": "ValueError", "message": f"bad {index}", "at": 1}
            ],
        }
        message = OutgoingMessage(
            queue.names.dead_letter_exchange,
            logical,
            b'{"args": [%d], "kwargs": {}}' % index,
            job_id,
            headers,
        )
        await queue.transport.publish(message, timeout=5)
        ids.append(job_id)
    return ids


async def job_ids(dlq: DeadLetterQueue) -> list[str]:
    return [letter.job_id for letter in await dlq.list(limit=10_000)]


async def test_worker_dead_letter_is_read_with_its_cause() -> None:
    """A job that used up its retries reads back with reason, exception, attempts and times."""
    queue = TaskQueue("memory://", prefix="t")

    @queue.task(retries=1, backoff=0.01, jitter=0)
    async def broken(x: int) -> None:
        raise ValueError(f"bad {x}")

    async with queue, running(queue) as worker:
        before = dt.datetime.now(dt.UTC)
        job = await queue.enqueue(broken, 7)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        dlq = queue.dead_letters()
        [letter] = await dlq.list()
        assert await dlq.count() == 1
    assert isinstance(letter, DeadLetter)
    assert (letter.job_id, letter.task, letter.queue) == (job.job_id, broken.name, "default")
    assert (letter.reason, letter.source, letter.attempts) == ("failed", "worker", 2)
    assert (letter.exception_type, letter.exception_message) == ("ValueError", "bad 7")
    assert letter.traceback is not None
    assert "raise ValueError" in letter.traceback
    assert [(f.attempt, f.message) for f in letter.history] == [(1, "bad 7"), (2, "bad 7")]
    assert letter.first_failed_at is not None
    assert letter.last_failed_at is not None
    assert letter.enqueued_at is not None
    assert letter.first_failed_at.tzinfo is not None
    assert before - dt.timedelta(seconds=1) <= letter.enqueued_at <= letter.first_failed_at
    assert letter.first_failed_at <= letter.last_failed_at
    assert letter.body_size == len(letter.body) > 0
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"


async def test_broker_dead_letter_names_the_delivery_limit_not_the_delay_levels() -> None:
    """A delayed job that crashed workers past the delivery limit reads as delivery_limit.

    It went through the delay levels first, so ``x-first-death-reason`` says ``expired``: the
    reason comes from the work queue's ``x-death`` entry.
    """
    queue = TaskQueue("memory://", prefix="t", delivery_limit=2)

    @queue.task
    async def crash() -> None: ...

    async with queue:
        job = await queue.enqueue_in(0.02, crash)
        work = queue.names.work_queue("default")
        deliveries = 0
        with anyio.fail_after(WAIT):
            while deliveries < 3:  # a worker that dies on it, three times
                delivery = await queue.transport.get(work)
                if delivery is None:
                    await anyio.sleep(0.01)
                    continue
                await delivery.reject(requeue=True)
                deliveries += 1
        dlq = queue.dead_letters()
        [letter] = await dlq.list()
    assert letter.headers["x-first-death-reason"] == "expired"
    assert (letter.job_id, letter.task) == (job.job_id, crash.name)
    assert (letter.reason, letter.source) == ("delivery_limit", "broker")
    assert letter.attempts == 3  # attempt 1, then delivery counts 1 and 2
    assert letter.exception_type is None
    assert letter.traceback is None
    assert letter.last_failed_at is not None
    assert abs(letter.last_failed_at - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)
    assert letter.first_failed_at == letter.last_failed_at


async def test_foreign_message_in_the_dead_letter_queue_still_reads() -> None:
    """A message with no aqueue headers at all reads, with reason 'unknown'."""
    queue = TaskQueue("memory://", prefix="t")
    async with queue:
        await queue.declare_queue("default")
        dead = queue.names.dead_letter_queue("default")
        await queue.transport.publish(OutgoingMessage("", dead, b"\x00", ""), timeout=5)
        [letter] = await queue.dead_letters().list()
    assert (letter.job_id, letter.task, letter.reason, letter.attempts) == (
        "",
        None,
        "unknown",
        None,
    )
    assert letter.queue == "default"


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
async def test_list_is_a_peek_that_keeps_every_message_in_order(queue_type: QueueType) -> None:
    """Listing (all, or the first few) leaves the queue as it was: nothing lost or reordered."""
    queue = TaskQueue("memory://", prefix="t", queue_type=queue_type)
    async with queue:
        ids = await put_dead_letters(queue, ["a"] * 30)
        dlq = queue.dead_letters()
        first = await dlq.list(limit=5)
        assert [letter.job_id for letter in first] == ids[:5]
        assert [letter.job_id for letter in await dlq.list(limit=3)] == ids[:3]
        assert await job_ids(dlq) == ids
        assert await dlq.count() == 30
        assert await job_ids(dlq) == ids


async def test_find_returns_the_dead_letter_and_leaves_the_queue_alone() -> None:
    """find() returns the job's dead letter (or None) and changes nothing."""
    queue = TaskQueue("memory://", prefix="t")
    async with queue:
        ids = await put_dead_letters(queue, ["a", "b", "c", "d"])
        dlq = queue.dead_letters()
        letter = await dlq.find("job-002")
        assert letter is not None
        assert (letter.task, letter.exception_message) == ("c", "bad 2")
        assert await dlq.find("nobody") is None
        assert await job_ids(dlq) == ids


async def test_replay_with_task_and_limit_keeps_the_rest_in_order() -> None:
    """replay(task=, limit=) sends the oldest matching jobs back; the others stay, in order."""
    queue = TaskQueue("memory://", prefix="t")
    tasks = ["a", "b", "a", "b", "b", "a", "b"]
    async with queue:
        ids = await put_dead_letters(queue, tasks)
        dlq = queue.dead_letters()
        progress: list[tuple[ReplayResult, int]] = []
        result = await dlq.replay(
            task="b", limit=2, on_progress=lambda r, n: progress.append((r, n))
        )
        assert result == ReplayResult(replayed=2, skipped=5)
        assert progress[-1] == (result, 7)
        assert await job_ids(dlq) == [ids[i] for i in (0, 2, 4, 5, 6)]
        work = queue.names.work_queue("default")
        replayed = [await queue.transport.get(work) for _ in range(2)]
        assert await queue.transport.get(work) is None
    assert [d.message_id if d else None for d in replayed] == ["job-001", "job-003"]
    assert replayed[0] is not None
    headers = replayed[0].headers
    assert replayed[0].body == b'{"args": [1], "kwargs": {}}'
    assert headers[t.HEADER_ATTEMPT] == 1
    assert headers[t.HEADER_TASK] == "b"
    assert headers[t.HEADER_ENQUEUED_AT] == 1_700_000_000_000
    assert not [key for key in headers if key.startswith("aqueue-dead-")]
    assert not [key for key in headers if key in t.BROKER_HEADERS - {"x-delivery-count"}]
    assert headers[t.HEADER_HISTORY] == [
        {"attempt": 1, "type": "ValueError", "message": "bad 1", "at": 1}
    ]


async def test_replay_without_filter_stops_at_the_limit() -> None:
    """replay(limit=n) without a task replays the n oldest and looks at nothing more."""
    queue = TaskQueue("memory://", prefix="t")
    async with queue:
        ids = await put_dead_letters(queue, ["a"] * 10)
        dlq = queue.dead_letters()
        assert await dlq.replay(limit=3) == ReplayResult(replayed=3, skipped=0)
        assert await job_ids(dlq) == ids[3:]
        assert await dlq.replay() == ReplayResult(replayed=7, skipped=0)
        assert await dlq.count() == 0
        assert await dlq.replay() == ReplayResult(replayed=0, skipped=0)


async def test_replayed_job_runs_again_from_attempt_one_with_its_history() -> None:
    """A dead-lettered job, once replayed, runs from attempt 1 and still carries its history."""
    queue = TaskQueue("memory://", prefix="t")
    healed = False
    runs: list[tuple[str, int]] = []

    @queue.task(retries=1, backoff=0.01, jitter=0)
    async def flaky() -> None:
        runs.append((current_job().job_id, current_job().attempt))
        if not healed:
            raise OSError("down")

    async with queue, running(queue) as worker:
        job = await queue.enqueue(flaky)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        healed = True
        assert await queue.dead_letters().replay() == ReplayResult(1, 0)
        await wait_until(worker, lambda s: s.succeeded == 1)
        assert await queue.dead_letters().count() == 0
    assert runs == [(job.job_id, 1), (job.job_id, 2), (job.job_id, 1)]


async def test_replay_of_jobs_that_fail_again_ends() -> None:
    """Jobs that die again while the replay runs are not replayed twice by it: it ends."""
    queue = TaskQueue("memory://", prefix="t")

    @queue.task
    async def always_fails() -> None:
        raise ValueError("still broken")

    async with queue, running(queue) as worker:
        await queue.enqueue_many(always_fails, [() for _ in range(20)])
        await wait_until(worker, lambda s: s.dead_lettered == 20)
        dlq = queue.dead_letters()
        assert await dlq.replay() == ReplayResult(replayed=20, skipped=0)
        await wait_until(worker, lambda s: s.dead_lettered == 40)
        assert await dlq.count() == 20


async def test_replay_declares_a_missing_work_queue() -> None:
    """Replay declares the work queue when it does not exist, rather than lose the jobs."""
    queue = TaskQueue("memory://", prefix="t")
    async with queue:
        await put_dead_letters(queue, ["a", "a"], logical="gone")
        await queue.transport.delete_queue(queue.names.work_queue("gone"))
        assert await queue.dead_letters("gone").replay() == ReplayResult(2, 0)
        assert await queue.transport.message_count(queue.names.work_queue("gone")) == 2


async def test_refused_publish_stops_the_replay_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A copy the broker refuses stops the replay; that dead letter and the rest stay, in order."""
    queue = TaskQueue("memory://", prefix="t")
    async with queue:
        ids = await put_dead_letters(queue, ["a", "b", "a", "a", "a"])
        publish = queue.producer.publish
        published = 0

        async def refuse_the_third(message: OutgoingMessage) -> None:
            nonlocal published
            published += 1
            if published == 3:
                raise PublishNacked("queue is full")
            await publish(message)

        monkeypatch.setattr(queue.producer, "publish", refuse_the_third)
        dlq = queue.dead_letters()
        with pytest.raises(PublishNacked):
            await dlq.replay(task="a")
        assert await job_ids(dlq) == [ids[1], ids[3], ids[4]]


async def test_cancelled_replay_loses_nothing() -> None:
    """A replay cancelled midway leaves every job not yet replayed in the dead-letter queue."""
    queue = TaskQueue("memory://", prefix="t")
    async with queue:
        ids = await put_dead_letters(queue, ["a", "b"] * 10)
        dlq = queue.dead_letters()
        with anyio.CancelScope() as scope:

            def cancel_after_five(done: ReplayResult, total: int) -> None:
                if done.replayed == 5:
                    scope.cancel()

            await dlq.replay(task="a", on_progress=cancel_after_five)
        assert scope.cancelled_caught
        replayed = await queue.transport.message_count(queue.names.work_queue("default"))
        assert replayed == 5
        assert await job_ids(dlq) == [i for i in ids if i not in ids[0:10:2]]


async def test_purge_deletes_every_dead_letter() -> None:
    """purge() deletes them all and says how many."""
    queue = TaskQueue("memory://", prefix="t")
    async with queue:
        await put_dead_letters(queue, ["a"] * 4)
        dlq = queue.dead_letters()
        assert await dlq.purge() == 4
        assert await dlq.count() == 0
        assert await dlq.list() == []


async def test_bad_input_and_missing_queues_are_refused_clearly() -> None:
    """Bad names, limits and task filters raise ConfigurationError; so does a missing queue."""
    queue = TaskQueue("memory://", prefix="t")
    with pytest.raises(ConfigurationError, match="queue name"):
        queue.dead_letters("bad name")
    async with queue:
        dlq = queue.dead_letters("nowhere")
        with pytest.raises(
            ConfigurationError, match=re.escape("no dead-letter queue 't.nowhere.dlq'")
        ):
            await dlq.count()
        with pytest.raises(ConfigurationError, match="no dead-letter queue"):
            await dlq.replay()
        with pytest.raises(ConfigurationError, match="no dead-letter queue"):
            await dlq.purge()
        await queue.declare_queue("nowhere")
        with pytest.raises(ConfigurationError, match="limit must be"):
            await dlq.list(limit=0)
        with pytest.raises(ConfigurationError, match="limit must be"):
            await dlq.replay(limit=0)
        with pytest.raises(ConfigurationError, match="task must be"):
            await dlq.replay(task="")
