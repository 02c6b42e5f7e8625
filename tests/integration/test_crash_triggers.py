"""Issue 16 on the shared RabbitMQ: what a message or a task throws at a worker never stops it.

Every trigger goes in among 20 healthy jobs. The worker must settle the bad job (one dead
letter, with the reason it died) or the edge must refuse it (a clear error, nothing
published); every healthy job runs exactly once, and a job sent after the dead letter runs too:
the worker's run loop is still serving.

One worker per queue type serves the whole module (the module-scoped `app` fixture), so the
file runs in seconds: the tests take turns on it, each starting with an empty dead-letter
queue and draining what it caused.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import pytest

from aqueue import Retry, Task, TaskQueue, Worker, WorkerSettings, WorkerStatistics, current_job
from aqueue._client.session import Session
from aqueue._core import wire as t
from aqueue._core.errors import MESSAGE_CHARS
from aqueue._core.topology import QueueType, TopologyNames
from aqueue._core.types import HeaderValue
from aqueue._serialization import encode_arguments
from aqueue._transport import Delivery, OutgoingMessage
from aqueue._transport.amqp import AmqpTransport
from aqueue.exceptions import ConfigurationError
from tests.conftest import SESSION_PREFIX
from tests.helpers.otel import install_sdk
from tests.helpers.polling import wait_for
from tests.helpers.worker_process import ROOT, aqueue_command, subprocess_env
from tests.helpers.workers import delete_topology, drain, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEALTHY = 20
WAIT = 20.0
#: Header bytes a raw message carries beside the job's own: under RabbitMQ's frame_max
#: (131072), so it can be published, but a dead-letter copy with them and the reason it died
#: on top would not fit in one frame unless the worker shrinks it.
BALLAST_CHARS = 125_000


class Boom(BaseException):
    """A BaseException of the task's own: not an Exception, not a cancellation."""


class Unprintable(Exception):
    """An exception whose text cannot be made: ``str()`` and ``repr()`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


@dataclass
class App:
    """The module's TaskQueue, its worker, and what the tasks recorded."""

    queue: TaskQueue
    names: TopologyNames
    url: str
    tasks: dict[str, Task[Any, Any]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)  # healthy jobs that ran, by job id
    runs: Counter[str] = field(default_factory=Counter)  # runs of the bad tasks, by job id
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    ended: BaseException | str | None = None  # how the worker's run ended, if it did
    _session: Session | None = None
    _worker: Worker | None = None
    _group: anyio.abc.TaskGroup | None = None

    @property
    def session(self) -> Session:
        assert self._session is not None
        return self._session

    @property
    def worker(self) -> Worker:
        assert self._worker is not None
        return self._worker

    @property
    def dead_letter_queue(self) -> str:
        return self.names.dead_letter_queue("default")

    async def serve(self) -> None:
        """Run the worker; record how it ended instead of tearing the fixture down."""
        try:
            await self.worker.run()
        except BaseException as exc:  # a worker that ended is what the tests report
            self.ended = exc
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
        else:
            self.ended = "run() returned"

    async def start(self) -> None:
        """Start a worker (concurrency 50) and wait until it consumes."""
        assert self._group is not None
        self.ended = None
        self._worker = Worker(self.queue, WorkerSettings(concurrency=50, grace=5))
        self._group.start_soon(self.serve)
        with anyio.fail_after(10):
            await self.worker.wait_started()

    async def ready(self) -> None:
        """Before each test: a worker serving, even if an earlier test's trigger ended one.

        That test failed already; a new worker (and queues purged of what it left) keeps
        the failures of the next tests their own.
        """
        if self.ended is None:
            return
        for queue in (
            self.names.work_queue("default"),
            self.names.quarantine_queue("default"),
            self.dead_letter_queue,
        ):
            await self.session.transport.purge(queue)
        await self.start()

    def assert_serving(self) -> None:
        assert self.ended is None, f"the worker's run loop ended: {self.ended!r}"

    async def settle(self, condition: Callable[[WorkerStatistics], bool], what: str) -> None:
        try:
            await wait_until(self.worker, condition, timeout=WAIT)
        except TimeoutError as exc:
            raise AssertionError(f"{what}: {exc}; the worker ended: {self.ended!r}") from exc

    async def dead_count(self) -> int:
        return await self.session.transport.message_count(self.dead_letter_queue)

    async def publish_raw(
        self,
        task: str,
        *,
        change: Mapping[str, HeaderValue] | None = None,
        args: Sequence[object] = (),
    ) -> str:
        """Publish a job as `enqueue` writes it, with headers changed; return its id."""
        job_id = uuid.uuid4().hex
        envelope = t.Envelope(
            job_id=job_id, task=task, queue="default", enqueued_at_ms=time.time_ns() // 1_000_000
        )
        headers = {**envelope.headers(), **(change or {})}
        message = OutgoingMessage(
            self.names.exchange, "default", encode_arguments(args, {}), job_id, headers
        )
        await self.session.transport.publish(message, timeout=10)
        return job_id


# -- the tasks: each bad one is counted, then fails its way --------------------------------------


async def _cancelled_itself(app: App) -> None:
    raise asyncio.CancelledError


async def _cancelled_future(app: App) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    app.waiting.append(future)
    await future  # the test cancels it, from its own task


async def _unprintable(app: App) -> None:
    raise Unprintable


async def _boom(app: App) -> None:
    raise Boom("a BaseException of its own")


async def _exits(app: App) -> None:
    sys.exit(3)


def _exits_in_thread(app: App) -> None:
    sys.exit(4)


async def _retry_forever(app: App) -> None:
    raise Retry(delay=float("inf"))


async def _fails(app: App) -> None:
    raise ValueError("fails every time")


async def _huge_message(app: App) -> None:
    raise ValueError("x" * 1_000_000)


async def _slow(app: App) -> None:
    await anyio.sleep(30)


#: name: (what the task does, its options)
BAD_TASKS: dict[str, tuple[Callable[[App], Any], dict[str, Any]]] = {
    "cancelled-itself": (_cancelled_itself, {}),
    "cancelled-future": (_cancelled_future, {}),
    "unprintable": (_unprintable, {}),
    "boom": (_boom, {}),
    "boom-no-retries": (_boom, {"retries": 0}),
    "exits": (_exits, {}),
    "exits-in-thread": (_exits_in_thread, {}),  # a plain function: it runs in a thread
    "retry-forever": (_retry_forever, {}),
    "fails-twice": (_fails, {"retries": 1, "backoff": 0}),
    "huge-message": (_huge_message, {}),
    "slow": (_slow, {}),
}


def make_app(url: str, prefix: str, queue_type: QueueType) -> App:
    """The app: `healthy` records that it ran; each of `BAD_TASKS` counts its runs and fails."""
    queue = TaskQueue(url, prefix=prefix, queue_type=queue_type, name=f"{prefix}-crashes")
    app = App(queue, TopologyNames(prefix), url)

    @queue.task(name="healthy")
    async def healthy(index: int) -> None:
        app.done.append(current_job().job_id)

    app.tasks["healthy"] = healthy
    for name, (body, options) in BAD_TASKS.items():
        app.tasks[name] = queue.task(name=name, **options)(_counted(app, body))
    return app


def _counted(app: App, body: Callable[[App], Any]) -> Callable[[], Any]:
    if inspect.iscoroutinefunction(body):

        async def run() -> None:
            app.runs[current_job().job_id] += 1
            await body(app)

        return run

    def run_in_thread() -> None:
        app.runs[current_job().job_id] += 1
        body(app)

    return run_in_thread


@pytest.fixture(scope="module")
def anyio_backend() -> tuple[str, dict[str, object]]:
    """Module scope, so that one worker (in the `app` fixture) serves every test here."""
    return ("asyncio", {"debug": False})


@pytest.fixture(scope="module", params=["quorum", "classic"])
async def app(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[App]:
    """The module's app with its worker running (concurrency 50), on one queue type."""
    install_sdk()  # telemetry records every failure: it must not depend on str(exception)
    prefix = f"{SESSION_PREFIX}-{uuid.uuid4().hex[:8]}"
    app = make_app(amqp_url, prefix, request.param)
    try:
        async with app.queue.session() as session, anyio.create_task_group() as group:
            app._session, app._group = session, group
            await app.start()
            yield app
            app.worker.stop()
    finally:
        await delete_topology(amqp_url, prefix)


async def beside_healthy(app: App, send_bad: Callable[[], Awaitable[str]]) -> Delivery:
    """Send the bad job among 20 healthy ones; return its only dead letter.

    Asserts that every healthy job ran once, that a job sent after the dead letter runs too,
    and that the bad job left exactly one message in the dead-letter queue.
    """
    await app.ready()
    assert await app.dead_count() == 0, "an earlier test left a dead letter"
    dead_before = app.worker.statistics().dead_lettered
    healthy = app.tasks["healthy"]
    first = await app.queue.enqueue_many(healthy, [(i,) for i in range(HEALTHY // 2)])
    bad_id = await send_bad()
    second = await app.queue.enqueue_many(healthy, [(i,) for i in range(HEALTHY // 2, HEALTHY)])
    ids = {job.job_id for job in (*first.jobs, *second.jobs)}
    assert len(ids) == HEALTHY

    await app.settle(
        lambda s: s.dead_lettered > dead_before and ids <= set(app.done),
        "the bad job to be dead-lettered and the healthy ones to run",
    )
    after = await app.queue.enqueue(healthy, -1)
    await app.settle(lambda s: after.job_id in app.done, "a job sent after the dead letter")
    app.assert_serving()

    dead = await drain(app.session.transport, app.dead_letter_queue)
    assert [letter.message_id for letter in dead] == [bad_id]
    runs = Counter(app.done)
    assert {job_id: runs[job_id] for job_id in (*ids, after.job_id)} == dict.fromkeys(
        (*ids, after.job_id), 1
    )
    return dead[0]


def _enqueue(app: App, task: str) -> Callable[[], Awaitable[str]]:
    async def send() -> str:
        return (await app.queue.enqueue(app.tasks[task])).job_id

    return send


def _dead_text(letter: Delivery, header: str) -> str:
    value = letter.headers.get(header)
    assert isinstance(value, str), f"{header}: {value!r}"
    return value


# -- tasks that raise what is not an Exception ---------------------------------------------------


async def test_task_raising_cancelled_error_is_dead_lettered_as_failed(app: App) -> None:
    """A task's own ``raise CancelledError`` is a failure of the job, not a worker shutdown."""
    letter = await beside_healthy(app, _enqueue(app, "cancelled-itself"))
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"
    assert letter.headers[t.HEADER_DEAD_EXC_TYPE] == "asyncio.exceptions.CancelledError"
    assert app.runs[letter.message_id or ""] == 1


async def test_task_awaiting_a_future_cancelled_by_another_task_is_dead_lettered(
    app: App,
) -> None:
    """A future the job awaits, cancelled by another task: the job failed, the worker goes on."""
    app.waiting.clear()

    async def send() -> str:
        job = await app.queue.enqueue(app.tasks["cancelled-future"])
        await wait_for(lambda: bool(app.waiting), timeout=WAIT, what="the job to await")
        app.waiting.pop().cancel()
        return job.job_id

    letter = await beside_healthy(app, send)
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"
    assert letter.headers[t.HEADER_DEAD_EXC_TYPE] == "asyncio.exceptions.CancelledError"
    assert app.runs[letter.message_id or ""] == 1


async def test_exception_whose_str_and_repr_raise_is_dead_lettered_with_a_placeholder(
    app: App,
) -> None:
    """Neither the dead letter, the logs nor the telemetry depend on the exception's text."""
    letter = await beside_healthy(app, _enqueue(app, "unprintable"))
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"
    assert _dead_text(letter, t.HEADER_DEAD_EXC_TYPE).endswith("Unprintable")
    message = _dead_text(letter, t.HEADER_DEAD_EXC_MESSAGE)
    assert "str() raised RuntimeError" in message


@pytest.mark.parametrize(
    ("task", "kind"),
    [
        ("boom", "test_crash_triggers.Boom"),
        ("boom-no-retries", "test_crash_triggers.Boom"),
        ("exits", "SystemExit"),
        ("exits-in-thread", "SystemExit"),
    ],
)
async def test_base_exceptions_of_a_task_are_settled_as_failures(
    app: App, task: str, kind: str
) -> None:
    """A custom BaseException or SystemExit (async or in a thread) fails the job once, no retry."""
    letter = await beside_healthy(app, _enqueue(app, task))
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"
    assert _dead_text(letter, t.HEADER_DEAD_EXC_TYPE).endswith(kind)
    assert letter.headers[t.HEADER_DEAD_ATTEMPTS] == 1
    assert app.runs[letter.message_id or ""] == 1


# -- retries and options -------------------------------------------------------------------------


async def test_retry_with_an_infinite_delay_fails_the_task(app: App) -> None:
    """``Retry(delay=inf)`` raises ConfigurationError in the task: a failure, dead-lettered."""
    letter = await beside_healthy(app, _enqueue(app, "retry-forever"))
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"
    assert letter.headers[t.HEADER_DEAD_EXC_TYPE] == "aqueue.exceptions.ConfigurationError"
    assert "finite" in _dead_text(letter, t.HEADER_DEAD_EXC_MESSAGE)
    assert app.runs[letter.message_id or ""] == 1


def test_backoff_over_the_longest_delay_is_refused_at_decoration() -> None:
    """``@queue.task(backoff=1e306)`` raises ConfigurationError where the task is declared."""
    queue = TaskQueue("amqp://guest:guest@127.0.0.1:5672/", prefix="p", telemetry=False)
    with pytest.raises(ConfigurationError, match="backoff"):

        @queue.task(backoff=1e306)
        async def never() -> None: ...

    assert not queue.tasks


@pytest.mark.parametrize(
    "options",
    [
        {"backoff": 1e306},
        {"max_backoff": 1e306},
        {"jitter": 2.0},
        {"timeout": 1e39},
        {"timeout": -1.0},
        {"retries": 10**12, "backoff": 0.0},
    ],
    ids=[
        "backoff-1e306",
        "max-backoff-1e306",
        "jitter-2",
        "timeout-1e39",
        "timeout-neg",
        "retries",
    ],
)
async def test_bad_options_in_a_raw_message_are_ignored(
    app: App, options: dict[str, HeaderValue]
) -> None:
    """Options a producer should never have sent: the task's own apply (1 retry, no backoff).

    (Infinities and NaN cannot be sent at all: the transport refuses them, see the
    conformance suite, as RabbitMQ would close the connection on them.)
    """
    letter = await beside_healthy(
        app, lambda: app.publish_raw("fails-twice", change={t.HEADER_OPTIONS: options})
    )
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"
    assert letter.headers[t.HEADER_DEAD_ATTEMPTS] == 2
    assert app.runs[letter.message_id or ""] == 2


@pytest.mark.parametrize("attempt", [-5, 0])
async def test_attempt_below_one_is_a_decode_error_and_never_runs(app: App, attempt: int) -> None:
    """``aqueue-attempt`` below 1: dead-lettered as ``decode-error``, the task never called."""
    letter = await beside_healthy(
        app, lambda: app.publish_raw("fails-twice", change={t.HEADER_ATTEMPT: attempt})
    )
    assert letter.headers[t.HEADER_DEAD_REASON] == "decode-error"
    assert f"must be 1 or more, not {attempt}" in _dead_text(letter, t.HEADER_DEAD_EXC_MESSAGE)
    assert app.runs[letter.message_id or ""] == 0


# -- dead letters too big for a frame -------------------------------------------------------------


def _connection(app: App) -> object:
    transport = app.session.transport
    assert isinstance(transport, AmqpTransport)
    connection = transport._amqp_connection()
    assert connection is not None
    return connection


async def test_huge_exception_message_is_cut_in_the_dead_letter(app: App) -> None:
    """A 1 MB exception message: one dead letter, its message cut, within the header budget."""
    connection = _connection(app)
    letter = await beside_healthy(app, _enqueue(app, "huge-message"))
    assert letter.headers[t.HEADER_DEAD_REASON] == "failed"
    assert _dead_text(letter, t.HEADER_DEAD_EXC_MESSAGE) == "x" * MESSAGE_CHARS
    assert t.encoded_size(dict(letter.headers)) <= t.HEADER_BUDGET
    assert _connection(app) is connection, "the publishing connection was closed"


@pytest.mark.parametrize(
    ("task", "big", "reason"),
    [
        ("fails-twice", "x-ballast", "failed"),  # a header of the job's own: dropped
        ("x" * BALLAST_CHARS, t.HEADER_TASK, "unknown-task"),  # one a dead letter keeps
    ],
    ids=["extra-header", "task-header"],
)
async def test_dead_letter_of_a_job_with_huge_headers_is_shrunk_to_fit(
    app: App, task: str, big: str, reason: str
) -> None:
    """Headers near frame_max: the dead letter is shrunk, marked, and the broker takes it."""
    connection = _connection(app)
    change: dict[str, HeaderValue] = (
        {"x-ballast": "x" * BALLAST_CHARS} if big != t.HEADER_TASK else {}
    )
    letter = await beside_healthy(app, lambda: app.publish_raw(task, change=change))
    assert letter.headers[t.HEADER_DEAD_REASON] == reason
    assert big in _dead_text(letter, t.HEADER_TRUNCATED)
    assert t.encoded_size(dict(letter.headers)) <= t.HEADER_BUDGET
    assert _connection(app) is connection, "the publishing connection was closed"


async def test_came_back_job_with_huge_headers_is_dead_lettered(app: App) -> None:
    """A delivery that says it came back, too big to copy to the quarantine: dead-lettered."""
    change: dict[str, HeaderValue] = {"x-delivery-count": 1}
    letter = await beside_healthy(app, lambda: app.publish_raw("x" * BALLAST_CHARS, change=change))
    assert letter.headers[t.HEADER_DEAD_REASON] == "crashed"
    assert t.HEADER_TASK in _dead_text(letter, t.HEADER_TRUNCATED)
    assert app.runs[letter.message_id or ""] == 0


# -- timeouts ------------------------------------------------------------------------------------

EDGE_CALLS: list[Any] = [
    pytest.param(lambda task: task.with_options(timeout=1e39), id="timeout-1e39"),
    pytest.param(lambda task: task.with_options(timeout=float("nan")), id="timeout-nan"),
    pytest.param(lambda task: task.with_options(timeout=10**400), id="timeout-no-float"),
    pytest.param(lambda task: task.with_options(retries=10**12), id="retries-huge"),
    pytest.param(lambda task: task.with_options(backoff=1e306), id="backoff-1e306"),
]


@pytest.mark.parametrize("bad", EDGE_CALLS)
async def test_options_no_header_can_carry_are_refused_at_the_edge(
    app: App, bad: Callable[[Task[Any, Any]], Task[Any, Any]]
) -> None:
    """A ConfigurationError (never OverflowError, never an ExceptionGroup); nothing published."""
    await app.ready()
    slow = app.tasks["slow"]
    received = app.worker.statistics().received
    with pytest.raises(ConfigurationError) as refused:
        await app.queue.enqueue_many(bad(slow), [()])
    assert type(refused.value) is ConfigurationError
    with pytest.raises(ConfigurationError):
        await app.queue.enqueue(bad(slow))
    # FIFO: had anything been published, the worker would have received it before this one
    probe = await app.queue.enqueue(app.tasks["healthy"], 0)
    await app.settle(lambda s: probe.job_id in app.done, "the probe job")
    assert app.worker.statistics().received == received + 1
    app.assert_serving()


async def test_timeout_of_a_tenth_of_a_second_arrives_exactly(app: App) -> None:
    """``timeout=0.1`` travels as a 64-bit double: the worker reads 0.1 and times the job out."""
    letter = await beside_healthy(
        app, lambda: _enqueue_task(app, app.tasks["slow"].with_options(timeout=0.1))
    )
    assert letter.headers[t.HEADER_DEAD_REASON] == "timeout"
    options = t.read_headers(letter.headers).options
    assert options["timeout"] == 0.1
    assert type(options["timeout"]) is float
    assert app.runs[letter.message_id or ""] == 1


async def _enqueue_task(app: App, task: Task[Any, Any]) -> str:
    return (await app.queue.enqueue(task)).job_id


# -- dead letters with times no datetime holds -----------------------------------------------------

FAR = 2**62


async def test_dead_letters_with_times_no_datetime_holds_are_listed_and_shown(app: App) -> None:
    """``DeadLetterQueue.list`` and ``aqueue dlq list/show`` read them: unknown times, exit 0."""
    await app.ready()
    assert await app.dead_count() == 0, "an earlier test left a dead letter"
    body = encode_arguments([1], {})
    by_worker: dict[str, HeaderValue] = {
        t.HEADER_TASK: "fails-twice",
        t.HEADER_ATTEMPT: 1,
        t.HEADER_ENQUEUED_AT: FAR,
        t.HEADER_HISTORY: [{"attempt": 1, "type": "ValueError", "message": "m", "at": FAR}],
        t.HEADER_DEAD_REASON: "failed",
        t.HEADER_DEAD_ATTEMPTS: 1,
        t.HEADER_DEAD_FIRST_FAILED_AT: FAR,
        t.HEADER_DEAD_LAST_FAILED_AT: -FAR,
        t.HEADER_DEAD_QUEUE: "default",
    }
    by_broker: dict[str, HeaderValue] = {
        t.HEADER_TASK: "fails-twice",
        t.HEADER_ENQUEUED_AT: -FAR,
        "x-death": [{"queue": app.names.work_queue("default"), "reason": "rejected", "time": FAR}],
    }
    ids = ["far-worker", "far-broker"]
    for job_id, headers in zip(ids, (by_worker, by_broker), strict=True):
        message = OutgoingMessage(app.names.dead_letter_exchange, "default", body, job_id, headers)
        await app.session.transport.publish(message, timeout=10)
    try:
        letters = await app.queue.dead_letters().list()
        assert [letter.job_id for letter in letters] == ids
        assert all(letter.enqueued_at is None for letter in letters)
        assert letters[0].first_failed_at is None
        assert letters[0].last_failed_at is None
        assert [failure.failed_at for failure in letters[0].history] == [None]

        target = ("--url", app.url, "--prefix", app.names.prefix)
        listed = await _run_cli("dlq", "list", "default", *target)
        assert listed.returncode == 0, listed.output
        assert all(job_id in listed.output for job_id in ids), listed.output
        for job_id in ids:
            shown = await _run_cli("dlq", "show", job_id, "--queue", "default", *target)
            assert shown.returncode == 0, shown.output
            assert job_id in shown.output
    finally:
        dead = await drain(app.session.transport, app.dead_letter_queue)
    assert sorted(letter.message_id or "" for letter in dead) == sorted(ids)


@dataclass(frozen=True)
class Done:
    returncode: int
    output: str


async def _run_cli(*args: str) -> Done:
    environment = subprocess_env({})
    for name in ("AQUEUE_URL", "AQUEUE_PREFIX"):
        environment.pop(name, None)
    with anyio.fail_after(60):
        done = await anyio.run_process(
            aqueue_command(*args), cwd=ROOT, env=environment, stdin=subprocess.DEVNULL, check=False
        )
    return Done(done.returncode, (done.stdout + done.stderr).decode(errors="replace"))
