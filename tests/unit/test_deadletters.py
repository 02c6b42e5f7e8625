"""Dead-letter tooling on the in-memory broker: read, find, replay, purge."""

from __future__ import annotations

import datetime as dt
import re

import anyio
import pytest

from aqueue import DeadLetter, DeadLetterQueue, ReplayResult, TaskQueue, current_job
from aqueue._client.deadletters import parse_dead_letter
from aqueue._client.session import Session
from aqueue._core import wire as t
from aqueue._core.topology import QueueType
from aqueue._core.types import HeaderValue
from aqueue._transport import Delivery, OutgoingMessage
from aqueue.exceptions import ConfigurationError, PublishNacked, QueueNotFound
from aqueue.testing import running_worker
from tests.helpers.workers import WAIT, wait_until

QUEUE_TYPES: list[QueueType] = ["quorum", "classic"]


async def put_dead_letters(
    session: Session, tasks: list[str], logical: str = "default"
) -> list[str]:
    """Publish dead letters as the worker writes them (task names in order); return their ids."""
    await session.producer.declare_queue(logical)
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
            session.names.dead_letter_exchange,
            logical,
            b'{"args": [%d], "kwargs": {}}' % index,
            job_id,
            headers,
        )
        await session.transport.publish(message, timeout=5)
        ids.append(job_id)
    return ids


async def job_ids(dlq: DeadLetterQueue) -> list[str]:
    return [letter.job_id for letter in await dlq.list(limit=10_000)]


async def test_worker_dead_letter_is_read_with_its_cause(memory_queue: TaskQueue) -> None:
    """A job that used up its retries reads back with reason, exception, attempts and times."""

    @memory_queue.task(retries=1, backoff=0.01, jitter=0)
    async def broken(x: int) -> None:
        raise ValueError(f"bad {x}")

    async with memory_queue, running_worker(memory_queue) as worker:
        before = dt.datetime.now(dt.UTC)
        job = await memory_queue.enqueue(broken, 7)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        dlq = memory_queue.dead_letters()
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

    async with queue.session() as session:
        job = await queue.enqueue_in(0.02, crash)
        work = session.names.work_queue("default")
        deliveries = 0
        with anyio.fail_after(WAIT):
            while deliveries < 3:  # a worker that dies on it, three times
                delivery = await session.transport.get(work)
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


async def test_foreign_message_in_the_dead_letter_queue_still_reads(
    memory_queue: TaskQueue,
) -> None:
    """A message with no aqueue headers at all reads, with reason 'unknown'."""
    async with memory_queue.session() as session:
        await session.producer.declare_queue("default")
        dead = session.names.dead_letter_queue("default")
        await session.transport.publish(OutgoingMessage("", dead, b"\x00", ""), timeout=5)
        [letter] = await memory_queue.dead_letters().list()
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
    async with queue.session() as session:
        ids = await put_dead_letters(session, ["a"] * 30)
        dlq = queue.dead_letters()
        first = await dlq.list(limit=5)
        assert [letter.job_id for letter in first] == ids[:5]
        assert [letter.job_id for letter in await dlq.list(limit=3)] == ids[:3]
        assert await job_ids(dlq) == ids
        assert await dlq.count() == 30
        assert await job_ids(dlq) == ids


async def test_find_returns_the_dead_letter_and_leaves_the_queue_alone(
    memory_queue: TaskQueue,
) -> None:
    """find() returns the job's dead letter (or None) and changes nothing."""
    async with memory_queue.session() as session:
        ids = await put_dead_letters(session, ["a", "b", "c", "d"])
        dlq = memory_queue.dead_letters()
        letter = await dlq.find("job-002")
        assert letter is not None
        assert (letter.task, letter.exception_message) == ("c", "bad 2")
        assert await dlq.find("nobody") is None
        assert await job_ids(dlq) == ids


async def test_replay_with_task_and_limit_keeps_the_rest_in_order(memory_queue: TaskQueue) -> None:
    """replay(task=, limit=) sends the oldest matching jobs back; the others stay, in order."""
    tasks = ["a", "b", "a", "b", "b", "a", "b"]
    async with memory_queue.session() as session:
        ids = await put_dead_letters(session, tasks)
        dlq = memory_queue.dead_letters()
        progress: list[tuple[ReplayResult, int]] = []
        result = await dlq.replay(
            task="b", limit=2, on_progress=lambda r, n: progress.append((r, n))
        )
        assert result == ReplayResult(replayed=2, skipped=5)
        assert progress[-1] == (result, 7)
        assert await job_ids(dlq) == [ids[i] for i in (0, 2, 4, 5, 6)]
        work = session.names.work_queue("default")
        replayed = [await session.transport.get(work) for _ in range(2)]
        assert await session.transport.get(work) is None
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


async def test_replay_without_filter_stops_at_the_limit(memory_queue: TaskQueue) -> None:
    """replay(limit=n) without a task replays the n oldest and looks at nothing more."""
    async with memory_queue.session() as session:
        ids = await put_dead_letters(session, ["a"] * 10)
        dlq = memory_queue.dead_letters()
        assert await dlq.replay(limit=3) == ReplayResult(replayed=3, skipped=0)
        assert await job_ids(dlq) == ids[3:]
        assert await dlq.replay() == ReplayResult(replayed=7, skipped=0)
        assert await dlq.count() == 0
        assert await dlq.replay() == ReplayResult(replayed=0, skipped=0)


async def test_replayed_job_runs_again_from_attempt_one_with_its_history(
    memory_queue: TaskQueue,
) -> None:
    """A dead-lettered job, once replayed, runs from attempt 1 and still carries its history."""
    healed = False
    runs: list[tuple[str, int]] = []

    @memory_queue.task(retries=1, backoff=0.01, jitter=0)
    async def flaky() -> None:
        runs.append((current_job().job_id, current_job().attempt))
        if not healed:
            raise OSError("down")

    async with memory_queue, running_worker(memory_queue) as worker:
        job = await memory_queue.enqueue(flaky)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
        healed = True
        assert await memory_queue.dead_letters().replay() == ReplayResult(1, 0)
        await wait_until(worker, lambda s: s.succeeded == 1)
        assert await memory_queue.dead_letters().count() == 0
    assert runs == [(job.job_id, 1), (job.job_id, 2), (job.job_id, 1)]


async def test_replay_of_jobs_that_fail_again_ends(memory_queue: TaskQueue) -> None:
    """Jobs that die again while the replay runs are not replayed twice by it: it ends."""

    @memory_queue.task
    async def always_fails() -> None:
        raise ValueError("still broken")

    async with memory_queue, running_worker(memory_queue) as worker:
        await memory_queue.enqueue_many(always_fails, [() for _ in range(20)])
        await wait_until(worker, lambda s: s.dead_lettered == 20)
        dlq = memory_queue.dead_letters()
        assert await dlq.replay() == ReplayResult(replayed=20, skipped=0)
        await wait_until(worker, lambda s: s.dead_lettered == 40)
        assert await dlq.count() == 20


async def test_replay_declares_a_missing_work_queue(memory_queue: TaskQueue) -> None:
    """Replay declares the work queue when it does not exist, rather than lose the jobs."""
    async with memory_queue.session() as session:
        await put_dead_letters(session, ["a", "a"], logical="gone")
        await session.transport.delete_queue(session.names.work_queue("gone"))
        assert await memory_queue.dead_letters("gone").replay() == ReplayResult(2, 0)
        assert await session.transport.message_count(session.names.work_queue("gone")) == 2


async def test_refused_publish_stops_the_replay_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
    memory_queue: TaskQueue,
) -> None:
    """A copy the broker refuses stops the replay; that dead letter and the rest stay, in order."""
    async with memory_queue.session() as session:
        ids = await put_dead_letters(session, ["a", "b", "a", "a", "a"])
        publish = session.producer.publish
        published = 0

        async def refuse_the_third(message: OutgoingMessage) -> None:
            nonlocal published
            published += 1
            if published == 3:
                raise PublishNacked("queue is full")
            await publish(message)

        monkeypatch.setattr(session.producer, "publish", refuse_the_third)
        dlq = memory_queue.dead_letters()
        with pytest.raises(PublishNacked):
            await dlq.replay(task="a")
        assert await job_ids(dlq) == [ids[1], ids[3], ids[4]]


async def test_cancelled_replay_loses_nothing(memory_queue: TaskQueue) -> None:
    """A replay cancelled midway leaves every job not yet replayed in the dead-letter queue."""
    async with memory_queue.session() as session:
        ids = await put_dead_letters(session, ["a", "b"] * 10)
        dlq = memory_queue.dead_letters()
        with anyio.CancelScope() as scope:

            def cancel_after_five(done: ReplayResult, total: int) -> None:
                if done.replayed == 5:
                    scope.cancel()

            await dlq.replay(task="a", on_progress=cancel_after_five)
        assert scope.cancelled_caught
        replayed = await session.transport.message_count(session.names.work_queue("default"))
        assert replayed == 5
        assert await job_ids(dlq) == [i for i in ids if i not in ids[0:10:2]]


async def test_purge_deletes_every_dead_letter(memory_queue: TaskQueue) -> None:
    """purge() deletes them all and says how many."""
    async with memory_queue.session() as session:
        await put_dead_letters(session, ["a"] * 4)
        dlq = memory_queue.dead_letters()
        assert await dlq.purge() == 4
        assert await dlq.count() == 0
        assert await dlq.list() == []


async def test_bad_input_and_missing_queues_are_refused_clearly(memory_queue: TaskQueue) -> None:
    """Bad names, limits and task filters raise ConfigurationError; so does a missing queue."""
    with pytest.raises(ConfigurationError, match="not open"):
        memory_queue.dead_letters()
    async with memory_queue.session() as session:
        with pytest.raises(ConfigurationError, match="queue name"):
            memory_queue.dead_letters("bad name")
        dlq = memory_queue.dead_letters("nowhere")
        with pytest.raises(QueueNotFound, match=re.escape("no dead-letter queue 't.nowhere.dlq'")):
            await dlq.count()
        with pytest.raises(QueueNotFound, match="no dead-letter queue"):
            await dlq.replay()
        with pytest.raises(QueueNotFound, match="no dead-letter queue"):
            await dlq.purge()
        await session.producer.declare_queue("nowhere")
        with pytest.raises(ConfigurationError, match="limit must be"):
            await dlq.list(limit=0)
        with pytest.raises(ConfigurationError, match="limit must be"):
            await dlq.replay(limit=0)
        with pytest.raises(ConfigurationError, match="task must be"):
            await dlq.replay(task="")


class _Held(Delivery):
    """A delivery as a reader holds it: headers and body only, never settled here."""

    def __init__(self, headers: dict[str, HeaderValue]) -> None:
        self.headers = headers
        self.body = b"{}"
        self.message_id = "job-far"
        self.content_type = ""
        self.routing_key = "default"
        self.queue = "t.default.dlq"
        self.redelivered = False

    async def ack(self) -> None:
        raise AssertionError("a reader never settles here")

    async def reject(self, *, requeue: bool) -> None:
        raise AssertionError("a reader never settles here")


@pytest.mark.parametrize("far", [2**62, -(2**62), 10**400])
def test_times_no_datetime_or_float_holds_read_as_unknown(far: int) -> None:
    """Times past year 9999, or beyond any float: None, never OverflowError; reason kept."""
    worker = _Held(
        {
            t.HEADER_ENQUEUED_AT: far,
            t.HEADER_DEAD_REASON: "failed",
            t.HEADER_DEAD_FIRST_FAILED_AT: far,
            t.HEADER_DEAD_LAST_FAILED_AT: far,
            t.HEADER_HISTORY: [{"attempt": 1, "type": "E", "message": "m", "at": far}],
        }
    )
    broker = _Held({"x-death": [{"queue": "t.default", "reason": "rejected", "time": far}]})
    for delivery, reason in ((worker, "failed"), (broker, "rejected")):
        letter = parse_dead_letter(
            delivery, queue="default", work_queue="t.default", delivery_limit=3
        )
        assert letter.reason == reason
        assert (letter.enqueued_at, letter.first_failed_at, letter.last_failed_at) == (
            None,
            None,
            None,
        )
    assert [
        f.failed_at
        for f in parse_dead_letter(
            worker, queue="default", work_queue="t.default", delivery_limit=3
        ).history
    ] == [None]


def test_an_empty_worker_reason_reads_as_unknown() -> None:
    """A dead-reason header that is empty says nothing: the reason is ``unknown``."""
    letter = parse_dead_letter(
        _Held({t.HEADER_DEAD_REASON: ""}), queue="default", work_queue="t.default", delivery_limit=3
    )
    assert (letter.reason, letter.source) == ("unknown", "worker")
