"""Results and workflows on the in-memory broker and result backend."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aqueue import TaskQueue, WorkerSettings, current_job
from aqueue._results import JobState, JobStatus, MemoryResultBackend, RemoteError
from aqueue._workflows import (
    Node,
    PlannedJob,
    assign_ids,
    chain,
    chord,
    final_ids,
    group,
    plan,
)
from aqueue.exceptions import (
    ConfigurationError,
    EncodeError,
    JobFailed,
    PublishError,
    ResultTimeout,
)
from aqueue.testing import running_worker
from tests.helpers.workers import WAIT, wait_until

SETTINGS = WorkerSettings(concurrency=20)


def make_queue() -> TaskQueue:
    return TaskQueue("memory://", prefix="t", results=MemoryResultBackend())


async def test_result_and_status_of_a_job() -> None:
    """job.result() returns the value; status goes from queued to succeeded."""
    queue = make_queue()
    gate = anyio.Event()

    @queue.task
    async def add(a: int, b: int) -> int:
        await gate.wait()
        return a + b

    async with queue:
        job = await queue.enqueue(add, 2, 3)
        assert await job.status() is JobStatus.QUEUED
        async with running_worker(queue, SETTINGS):
            gate.set()
            assert await job.result(timeout=WAIT) == 5
        assert await job.status() is JobStatus.SUCCEEDED
        assert await queue.job(job.job_id).result(timeout=1) == 5


async def test_failure_raises_job_failed_with_remote_traceback() -> None:
    """A job that fails for good raises JobFailed carrying the remote type and traceback."""
    queue = make_queue()

    @queue.task
    def explode() -> None:
        raise KeyError("missing")

    async with queue, running_worker(queue, SETTINGS):
        job = await queue.enqueue(explode)
        with pytest.raises(JobFailed) as info:
            await job.result(timeout=WAIT)
        assert await job.status() is JobStatus.FAILED
    assert info.value.remote_type == "KeyError"
    assert "raise KeyError" in info.value.remote_traceback


async def test_result_timeout_and_missing_backend() -> None:
    """Waiting too long raises ResultTimeout; without a backend, a clear ConfigurationError."""
    queue = make_queue()

    @queue.task
    async def never() -> None: ...

    async with queue:
        job = await queue.enqueue(never)
        with pytest.raises(ResultTimeout):
            await job.result(timeout=0.05)
    plain = TaskQueue("memory://")
    with pytest.raises(ConfigurationError, match="no result backend"):
        await plain.job("x").result(timeout=1)


async def test_progress_is_visible_from_the_handle() -> None:
    """Progress reported inside a task is seen through the job handle."""
    queue = make_queue()
    reported = anyio.Event()
    finish = anyio.Event()

    @queue.task
    async def long() -> str:
        await current_job().report_progress({"done": 3, "of": 10})
        reported.set()
        await finish.wait()
        return "ok"

    async with queue, running_worker(queue, SETTINGS):
        job = await queue.enqueue(long)
        with anyio.fail_after(WAIT):
            await reported.wait()
        assert await job.progress() == {"done": 3, "of": 10}
        assert await job.status() is JobStatus.RUNNING
        finish.set()
        assert await job.result(timeout=WAIT) == "ok"


async def test_chain_passes_each_result_on() -> None:
    """A chain of three returns the last result through the handle."""
    queue = make_queue()

    @queue.task
    async def fetch(url: str) -> str:
        return url.upper()

    @queue.task
    def parse(text: str) -> list[str]:
        return list(text)

    @queue.task
    async def store(items: list[str], tag: str) -> str:
        return f"{tag}:{len(items)}"

    async with queue, running_worker(queue, SETTINGS):
        job = await queue.enqueue(chain(fetch.s("abc"), parse.s(), store.s("t")))
        assert await job.result(timeout=WAIT) == "t:3"


async def test_chord_gathers_results_in_order() -> None:
    """A chord's callback gets every member's result in member order, once."""
    queue = make_queue()
    calls: list[list[int]] = []

    @queue.task
    async def square(n: int) -> int:
        await anyio.sleep(0.001 * (10 - n))  # finish out of order
        return n * n

    @queue.task
    async def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    async with queue:
        job = await queue.enqueue(chord([square.s(n) for n in range(10)], total.s()))
        # the callback is not published yet, but its handle is known: pending
        assert await job.status() is JobStatus.PENDING
        async with running_worker(queue, SETTINGS):
            assert await job.result(timeout=WAIT) == sum(n * n for n in range(10))
    assert calls == [[n * n for n in range(10)]]


async def test_group_and_nesting() -> None:
    """A group's handle gives results in order; a chain in a group and a group in a chain work."""
    queue = make_queue()

    @queue.task
    async def inc(n: int) -> int:
        return n + 1

    @queue.task
    async def total(values: list[int]) -> int:
        return sum(values)

    async with queue, running_worker(queue, SETTINGS):
        grouped = await queue.enqueue(group(inc.s(1), chain(inc.s(10), inc.s()), inc.s(100)))
        assert await grouped.result(timeout=WAIT) == [2, 12, 101]
        nested = await queue.enqueue(chain(inc.s(0), group(inc.s(), inc.s()), total.s()))
        assert await nested.result(timeout=WAIT) == 4


async def test_failing_member_fails_the_chord_and_runs_the_error_callback() -> None:
    """A failing member fails the chord's handle and runs its error callback once."""
    queue = make_queue()
    errors: list[dict[str, object]] = []
    callback_ran = False

    @queue.task
    async def member(n: int) -> int:
        if n == 2:
            raise ValueError("member 2 broke")
        return n

    @queue.task
    async def total(values: list[int]) -> int:
        nonlocal callback_ran
        callback_ran = True
        return sum(values)

    @queue.task
    async def on_error(error: dict[str, object]) -> None:
        errors.append(error)

    async with queue, running_worker(queue, SETTINGS) as worker:
        flow = chord([member.s(n) for n in range(4)], total.s(), on_error=on_error.s())
        job = await queue.enqueue(flow)
        with pytest.raises(JobFailed, match="member 2 broke") as info:
            await job.result(timeout=WAIT)
        await wait_until(worker, lambda s: s.succeeded >= 4)
    assert "raise ValueError" in info.value.remote_traceback
    assert not callback_ran
    assert len(errors) == 1
    assert errors[0]["type"] == "ValueError"


async def test_workflow_with_a_group_needs_a_backend() -> None:
    """A chord without a result backend is refused at enqueue."""
    queue = TaskQueue("memory://")

    @queue.task
    async def a() -> None: ...

    async with queue:
        with pytest.raises(ConfigurationError, match="needs a result backend"):
            await queue.enqueue(chord([a.s()], a.si()))


async def test_redelivered_finished_step_does_not_run_again() -> None:
    """A workflow step published again after it succeeded (a redelivered predecessor) is not
    run again, and what follows it is published with the same ids, so it runs once too.
    """
    queue = make_queue()
    runs: list[str] = []

    @queue.task
    async def first() -> int:
        runs.append("first")
        return 7

    @queue.task
    async def second(value: int) -> int:
        runs.append("second")
        return value * 2

    flow = assign_ids(chain(first.s(), second.s()), "root-1")
    [handle] = final_ids(flow)
    async with queue.session() as session, running_worker(queue, SETTINGS) as worker:
        await session.flows.start(flow, root="root-1")
        assert await queue.job(handle).result(timeout=WAIT) == 14
        await session.flows.start(flow, root="root-1")
        await wait_until(worker, lambda s: s.succeeded == 4)
    assert runs == ["first", "second"]


async def test_group_whose_members_all_fail_runs_its_error_callback_once() -> None:
    """Regression: each failing member of a plain group published the group's error callback
    (the copies share one id, so a second copy ran again only if both were in flight at once).
    """
    queue = make_queue()
    errors: list[dict[str, object]] = []

    @queue.task
    async def broken(n: int) -> None:
        raise ValueError(f"member {n} broke")

    @queue.task
    async def on_error(error: dict[str, object]) -> None:
        errors.append(error)

    async with queue, running_worker(queue, SETTINGS) as worker:
        grouped = await queue.enqueue(group(broken.s(1), broken.s(2), on_error=on_error.s()))
        with pytest.raises(JobFailed, match="broke"):
            await grouped.result(timeout=WAIT)
        for member in grouped.jobs:
            with pytest.raises(JobFailed):
                await member.result(timeout=WAIT)
        # the two members (failed) and the one error callback (succeeded) are settled
        await wait_until(worker, lambda s: s.failed >= 2 and s.succeeded >= 1)
        # a sentinel behind anything still queued: once it ran, nothing else is coming
        sentinel = await queue.enqueue(on_error, {"sentinel": True})
        await sentinel.result(timeout=WAIT)
        await wait_until(worker, lambda s: s.succeeded >= 2)
        # two members, one error callback (not a copy per failing member), the sentinel
        assert worker.statistics().received == 4
    assert len(errors) == 2
    assert errors[0]["type"] == "ValueError"
    assert errors[1] == {"sentinel": True}


async def test_member_redelivered_after_the_barrier_does_not_publish_the_callback() -> None:
    """Regression: a member that did not complete the barrier, redelivered after it was
    complete, published the chord's callback a second time (a second run if both copies were
    in flight at once). Only the completing member, and its redeliveries, carry on.
    """
    queue = make_queue()
    calls: list[list[int]] = []

    @queue.task
    async def ident(n: int) -> int:
        return n

    @queue.task
    async def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    flow = assign_ids(chord([ident.s(n) for n in range(3)], total.s()), "root-r")
    members = plan(flow, root="root-r")
    [handle] = final_ids(flow)
    async with queue.session() as session, running_worker(queue, SETTINGS) as worker:
        await session.flows.start(flow, root="root-r")
        assert await queue.job(handle).result(timeout=WAIT) == 3
        await wait_until(worker, lambda s: s.succeeded == 4)
        # every member's redelivery carries on again; only the completing one publishes
        for index, member in enumerate(members):
            await session.flows.succeeded(member.links, index)
        sentinel = await queue.enqueue(ident, 99)
        assert await sentinel.result(timeout=WAIT) == 99
        await wait_until(worker, lambda s: s.succeeded >= 6)
        assert worker.statistics().received == 6  # 4 steps, 1 callback copy, the sentinel
    assert calls == [[0, 1, 2]]


async def test_error_callback_survives_a_failed_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the error path claimed "once" before publishing the callback; when that
    publish failed, the redelivered step found the claim taken and the callback never ran.
    """
    queue = make_queue()
    errors: list[dict[str, object]] = []

    @queue.task
    async def step() -> None: ...

    @queue.task
    async def on_error(error: dict[str, object]) -> None:
        errors.append(error)

    flow = assign_ids(chain(step.s(), step.si(), on_error=on_error.s()), "root-e")
    [first] = plan(flow, root="root-e")
    [callback] = final_ids(flow.error_links[0])
    error = RemoteError("ValueError", "broke", "Traceback ...")
    calls = 0

    async with queue.session() as session, running_worker(queue, SETTINGS):
        real_start = session.flows.start

        async def flaky_start(node: Node, **kwargs: Any) -> list[PlannedJob]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise PublishError("broker said no")
            return await real_start(node, **kwargs)

        monkeypatch.setattr(session.flows, "start", flaky_start)
        with pytest.raises(PublishError):
            await session.flows.failed(first.links, first.job_id, error)
        await session.flows.failed(first.links, first.job_id, error)  # the redelivery
        await session.flows.failed(first.links, "another-step", error)  # claimed: nothing
        with pytest.raises(JobFailed, match="broke"):
            await queue.job(final_ids(flow)[0]).result(timeout=WAIT)
        await queue.job(callback).result(timeout=WAIT)
    assert calls == 2
    assert [e["job_id"] for e in errors] == [first.job_id]


async def test_empty_groups_inside_workflows_are_refused() -> None:
    """Regression: an empty group before a callback never finished; it is refused up front."""
    queue = make_queue()

    @queue.task
    async def a(*values: object) -> None: ...

    with pytest.raises(ConfigurationError, match="at least one member"):
        chord([], a.s())
    async with queue:
        with pytest.raises(ConfigurationError, match="empty group"):
            await queue.enqueue(chain(a.s(), group(), a.s()))
        assert await (await queue.enqueue(group())).result(timeout=1) == []


async def test_status_is_not_set_back_to_queued_by_a_late_record() -> None:
    """Regression: "queued" is recorded after the publish; a fast worker's "running" stays."""
    queue = make_queue()
    started = anyio.Event()
    finish = anyio.Event()

    @queue.task
    async def slow() -> None:
        started.set()
        await finish.wait()

    async with queue.session() as session, running_worker(queue, SETTINGS):
        job = await queue.enqueue(slow)
        with anyio.fail_after(WAIT):
            await started.wait()
        await session.states.record_many([JobState(job.job_id, JobStatus.QUEUED)])
        assert await job.status() is JobStatus.RUNNING
        finish.set()
        await job.result(timeout=WAIT)


async def test_enqueue_many_records_queued_and_scheduled_states() -> None:
    """Regression: jobs sent with enqueue_many had no state (status None) until a worker
    started them; they are queued (or scheduled) from the confirm on, as with enqueue.
    """
    queue = make_queue()

    @queue.task
    async def noop(n: int) -> None: ...

    @queue.task(store_result=False)
    async def untracked(n: int) -> None: ...

    async with queue:
        now = await queue.enqueue_many(noop, [(n,) for n in range(3)])
        later = await queue.enqueue_many(noop, [(9,)], delay=60)
        hidden = await queue.enqueue_many(untracked, [(1,)])
        assert [await job.status() for job in now.jobs] == [JobStatus.QUEUED] * 3
        assert await later.jobs[0].status() is JobStatus.SCHEDULED
        assert await hidden.jobs[0].status() is None


async def test_a_workflow_header_too_big_for_one_frame_is_refused_at_enqueue() -> None:
    """Regression: a step carrying a huge continuation (a chain into a group of 1,000)
    made RabbitMQ close the connection (frame_too_large) on every retry of the publish, for
    30 s, then ConnectionLost. It is an EncodeError at enqueue, and nothing is published.
    """
    queue = make_queue()

    @queue.task
    async def first() -> int:
        return 1

    @queue.task
    async def member(value: int) -> int:
        return value

    async with queue.session() as session:
        with pytest.raises(EncodeError, match="aqueue-workflow header"):
            await queue.enqueue(chain(first.s(), group(member.s() for _ in range(1000))))
        work_queue = session.names.work_queue("default")
        assert await session.transport.message_count(work_queue) == 0
        # the same members as a chord's header travel in their own messages: fine
        await queue.enqueue(chord([member.s(n) for n in range(1000)], member.s()))
        assert await session.transport.message_count(work_queue) == 1000


async def test_worker_without_backend_survives_a_chord_member() -> None:
    """A chord member reaching a worker with no result backend fails; the worker goes on."""
    producer = TaskQueue("memory://no-backend", prefix="t", results=MemoryResultBackend())
    consumer = TaskQueue("memory://no-backend", prefix="t")
    ran = anyio.Event()

    for app in (producer, consumer):

        @app.task(name="member")
        async def member() -> int:
            return 1

        @app.task(name="after")
        async def after(values: list[int]) -> None: ...

        @app.task(name="plain")
        async def plain() -> None:
            ran.set()

    async with producer, consumer:
        member_task = producer.tasks["member"]
        after_task = producer.tasks["after"]
        await producer.enqueue(chord([member_task.s()], after_task.s()))
        async with running_worker(consumer, SETTINGS) as worker:
            await wait_until(worker, lambda s: s.dead_lettered == 1)
            await consumer.enqueue(consumer.tasks["plain"])
            with anyio.fail_after(WAIT):
                await ran.wait()
