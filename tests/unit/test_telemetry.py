"""aqueue.telemetry: trace context in headers, span attributes, and traces on the memory broker."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import anyio.lowlevel
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from aqueue import JobContext, Retry, TaskQueue, WorkerSettings, chain, current_job
from aqueue._core import wire as t
from aqueue._core.types import HeaderValue
from aqueue._core.wire import HEADER_WORKFLOW
from aqueue._observability.hooks import NO_OBSERVER
from aqueue._observability.otel import _Watch
from aqueue._transport import OutgoingMessage
from aqueue._workflows import WorkflowLinks
from aqueue.telemetry import (
    Telemetry,
    current_trace_ids,
    extract_context,
    inject_context,
    job_attributes,
    process_attributes,
    publish_attributes,
    workflow_id,
)
from aqueue.testing import running_worker
from tests.helpers.jobs import publish_job
from tests.helpers.otel import Tree
from tests.helpers.workers import drain, wait_until

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _message(**headers: HeaderValue) -> OutgoingMessage:
    return OutgoingMessage(
        exchange="aq",
        routing_key="default",
        body=b'{"args":[],"kwargs":{}}',
        message_id="job-1",
        headers={
            t.HEADER_TASK: "tasks.add",
            t.HEADER_QUEUE: "default",
            t.HEADER_ATTEMPT: 2,
            **headers,
        },
    )


class _Delivery:
    """The attributes of a delivery that telemetry reads (no settling)."""

    def __init__(self, headers: Mapping[str, HeaderValue]) -> None:
        self.headers = headers
        self.body = b"{}"
        self.message_id = "job-1"
        self.routing_key = "default"
        self.exchange = "aq"
        self.queue = "aq.default"
        self.redelivered = False


# -- carriers ---------------------------------------------------------------------------------


def test_inject_then_extract_gives_back_the_span_context(spans: InMemorySpanExporter) -> None:
    """The context injected into headers is the one extracted from them."""
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("outer") as span:
        headers = inject_context({"other": 1})
    assert headers["other"] == 1
    assert isinstance(headers["traceparent"], str)
    carried = trace.get_current_span(extract_context(headers)).get_span_context()
    assert carried.trace_id == span.get_span_context().trace_id
    assert carried.span_id == span.get_span_context().span_id
    assert carried.is_remote


def test_inject_outside_a_span_keeps_the_context_the_headers_carry() -> None:
    """No current span: the headers pass through unchanged (a retry keeps its trace)."""
    headers: dict[str, HeaderValue] = {"traceparent": TRACEPARENT, "n": 1}
    assert inject_context(headers) == headers
    assert inject_context(headers) is not headers


def test_extract_reads_only_string_headers() -> None:
    """A traceparent that is not a string (a broken producer) is ignored, not an error."""
    context = extract_context({"traceparent": 42})
    assert not trace.get_current_span(context).get_span_context().is_valid
    context = extract_context({"traceparent": TRACEPARENT})
    span_context = trace.get_current_span(context).get_span_context()
    assert f"{span_context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"


def test_current_trace_ids_inside_and_outside_a_span(spans: InMemorySpanExporter) -> None:
    """Hex ids inside a span, None outside (for the log filter)."""
    assert current_trace_ids() is None
    with trace.get_tracer("test").start_as_current_span("s") as span:
        ids = current_trace_ids()
    context = span.get_span_context()
    assert ids == (f"{context.trace_id:032x}", f"{context.span_id:016x}")


# -- attributes -------------------------------------------------------------------------------


def test_publish_attributes_follow_the_messaging_conventions() -> None:
    """Exchange, routing key, message id and operation, plus the aqueue job fields."""
    links = WorkflowLinks("root-1").encode()
    attributes = publish_attributes(_message(**{HEADER_WORKFLOW: links}))
    assert attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "publish",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "aq",
        "messaging.rabbitmq.destination.routing_key": "default",
        "messaging.message.id": "job-1",
        "messaging.message.body.size": 23,
        "aqueue.job_id": "job-1",
        "aqueue.task": "tasks.add",
        "aqueue.queue": "default",
        "aqueue.attempt": 2,
        "aqueue.workflow_id": "root-1",
    }


def test_publish_attributes_of_a_dead_letter_name_the_reason() -> None:
    """The dead-letter copy's span says why the job died."""
    attributes = publish_attributes(_message(**{t.HEADER_DEAD_REASON: "timeout"}))
    assert attributes["aqueue.dead_letter.reason"] == "timeout"
    assert "aqueue.workflow_id" not in attributes


def test_process_attributes_before_decoding() -> None:
    """What the consumer span knows from the headers alone; the logical queue wins."""
    delivery = _Delivery({t.HEADER_TASK: "tasks.add", t.HEADER_ATTEMPT: 1})
    attributes = process_attributes(delivery, "default")  # type: ignore[arg-type]
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "aq"
    assert attributes["messaging.destination.subscription.name"] == "aq.default"
    assert attributes["messaging.message.id"] == "job-1"
    assert attributes["aqueue.task"] == "tasks.add"
    assert attributes["aqueue.queue"] == "default"
    assert attributes["aqueue.attempt"] == 1


def test_job_attributes_count_redeliveries_and_queue_wait() -> None:
    """The decoded job's attempt (redeliveries included) and its wait in seconds."""
    job = JobContext(
        job_id="j",
        task="tasks.add",
        queue="default",
        attempt=3,
        args=(),
        kwargs={},
        enqueued_at=100.0,
        due_at=101.0,
        started_at=103.5,
        headers={HEADER_WORKFLOW: WorkflowLinks("root-2").encode()},
    )
    assert job_attributes(job) == {"aqueue.attempt": 3, "aqueue.queue_wait": 2.5}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(WorkflowLinks("abc").encode(), "abc", id="links"),
        pytest.param("not json", None, id="not-json"),
        pytest.param('{"next": []}', None, id="no-root"),
        pytest.param("[1, 2]", None, id="not-an-object"),
        pytest.param('{"root": 7}', None, id="root-not-a-string"),
        pytest.param(7, None, id="not-a-string"),
    ],
)
def test_workflow_id(value: HeaderValue, expected: str | None) -> None:
    """The root id of the workflow header, or None for anything else."""
    assert workflow_id({HEADER_WORKFLOW: value}) == expected
    assert workflow_id({}) is None


# -- traces through a worker ------------------------------------------------------------------


async def test_a_chain_with_retries_is_one_trace(
    spans: InMemorySpanExporter, memory_queue: TaskQueue
) -> None:
    """request → publish a → process a → publish b (continuation) → process b, failing twice:
    each retry is published from inside the failed attempt's span, all in one trace."""
    calls = {"b": 0}

    @memory_queue.task(name="a")
    async def a(x: int) -> int:
        return x + 1

    @memory_queue.task(name="b", retries=3, backoff=0.01, jitter=0)
    async def b(x: int) -> int:
        calls["b"] += 1
        if calls["b"] == 1:
            raise Retry(delay=0.01)
        if calls["b"] == 2:
            raise ValueError("boom")
        return x * 2

    async with memory_queue:
        with trace.get_tracer("test").start_as_current_span("request"):
            await memory_queue.enqueue(chain(a.s(1), b.s()))
        async with running_worker(memory_queue, WorkerSettings()) as worker:
            await wait_until(worker, lambda s: s.succeeded == 2)
    tree = Tree(spans.get_finished_spans())
    assert len(tree.trace_ids()) == 1, tree.describe()
    request = tree.one("request")
    publish_a = tree.one("publish a", SpanKind.PRODUCER)
    process_a = tree.one("process a", SpanKind.CONSUMER)
    assert tree.parent(publish_a) is request
    assert tree.parent(process_a) is publish_a
    publishes_b = tree.named("publish b", SpanKind.PRODUCER)
    processes_b = tree.named("process b", SpanKind.CONSUMER)
    assert len(publishes_b) == 3
    assert len(processes_b) == 3
    assert tree.parent(publishes_b[0]) is process_a  # the continuation
    for attempt, (publish, process) in enumerate(zip(publishes_b, processes_b, strict=True), 1):
        assert tree.parent(process) is publish
        assert process.attributes is not None
        assert process.attributes["aqueue.attempt"] == attempt
        workflow = publish_a.attributes["aqueue.workflow_id"]  # type: ignore[index]
        assert process.attributes["aqueue.workflow_id"] == workflow
    assert tree.parent(publishes_b[1]) is processes_b[0]  # a retry is the failed attempt's child
    assert tree.parent(publishes_b[2]) is processes_b[1]
    retried_by_request, failed, succeeded = processes_b
    assert retried_by_request.status.status_code is StatusCode.UNSET  # Retry is not a failure
    assert [e.name for e in retried_by_request.events] == ["aqueue.retry"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "ValueError"  # type: ignore[index]
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.attributes["aqueue.settlement"] == "retried"  # type: ignore[index]
    assert succeeded.status.status_code is StatusCode.UNSET
    assert succeeded.attributes["aqueue.settlement"] == "succeeded"  # type: ignore[index]


async def test_a_dead_letter_is_published_inside_the_failed_job(
    spans: InMemorySpanExporter,
    memory_queue: TaskQueue,
) -> None:
    """A job out of retries: its span is an error, and the dead letter is its child."""

    @memory_queue.task(name="bad", retries=0)
    async def bad() -> None:
        raise KeyError("missing")

    async with memory_queue:
        await memory_queue.enqueue(bad)
        async with running_worker(memory_queue) as worker:
            await wait_until(worker, lambda s: s.dead_lettered == 1)
    tree = Tree(spans.get_finished_spans())
    process = tree.one("process bad")
    enqueue, dead = tree.named("publish bad")
    assert tree.parent(process) is enqueue
    assert tree.parent(dead) is process
    assert dead.attributes["aqueue.dead_letter.reason"] == "failed"  # type: ignore[index]
    assert dead.attributes["messaging.destination.name"] == "t.dlx"  # type: ignore[index]
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes["aqueue.settlement"] == "dead-lettered"  # type: ignore[index]


async def test_an_unknown_task_gets_an_error_span(
    spans: InMemorySpanExporter, memory_queue: TaskQueue
) -> None:
    """A delivery that never runs still has its span, with the reason it was dead-lettered."""

    @memory_queue.task(name="known")
    async def known() -> None:
        return None

    async with memory_queue.session() as session:
        await publish_job(session, "unknown")
        async with running_worker(memory_queue) as worker:
            await wait_until(worker, lambda s: s.dead_lettered == 1)
    process = Tree(spans.get_finished_spans()).one("process unknown")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes["error.type"] == "aqueue.exceptions.UnknownTaskError"  # type: ignore[index]
    assert process.attributes["aqueue.settlement"] == "dead-lettered"  # type: ignore[index]


async def test_a_publish_outside_any_span_continues_the_trace_the_message_carries(
    spans: InMemorySpanExporter,
    memory_queue: TaskQueue,
) -> None:
    """A dead-letter replay from the command line stays in the job's trace."""

    @memory_queue.task(name="job")
    async def job() -> None:
        return None

    async with memory_queue.session() as session:
        await publish_job(session, job.name, headers={"traceparent": TRACEPARENT})
        [got] = await drain(session.transport, "t.default")
    publish = Tree(spans.get_finished_spans()).one("publish job")
    assert publish.parent is not None
    assert f"{publish.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{publish.parent.span_id:016x}" == "b7ad6b7169203331"
    # the message now carries the publish span, a child of the carried one
    assert f"{publish.context.span_id:016x}" in str(got.headers["traceparent"])


async def test_enqueue_many_makes_a_producer_span_per_job(
    spans: InMemorySpanExporter, memory_queue: TaskQueue
) -> None:
    """Each message of a batch has its own span and its own trace context."""

    @memory_queue.task(name="job")
    async def job(i: int) -> None:
        return None

    async with memory_queue.session() as session:
        with trace.get_tracer("test").start_as_current_span("batch"):
            await memory_queue.enqueue_many(job, [(i,) for i in range(5)])
        parents = {
            got.headers["traceparent"] for got in await drain(session.transport, "t.default")
        }
    tree = Tree(spans.get_finished_spans())
    publishes = tree.named("publish job")
    assert len(publishes) == 5
    assert all(tree.parent(p) is tree.one("batch") for p in publishes)
    assert len(parents) == 5


async def test_telemetry_false_adds_no_trace_context(spans: InMemorySpanExporter) -> None:
    """A TaskQueue(telemetry=False) has no hooks: no spans, no traceparent header."""
    queue = TaskQueue("memory://", prefix="t", telemetry=False)

    @queue.task(name="job")
    async def job() -> None:
        return None

    assert queue.instrumentation == ()
    async with queue.session() as session:
        with trace.get_tracer("test").start_as_current_span("request"):
            await queue.enqueue(job)
        [got] = await drain(session.transport, "t.default")
    assert "traceparent" not in got.headers
    assert [s.name for s in spans.get_finished_spans()] == ["request"]


def _points(reader: InMemoryMetricReader) -> dict[str, dict[tuple[str, str], float]]:
    """Metric name → (task, queue) → value (a sum, or a histogram's count)."""
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, dict[tuple[str, str], float]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = point.attributes or {}
                    key = (str(attributes["aqueue.task"]), str(attributes["aqueue.queue"]))
                    value = getattr(point, "value", None)
                    found.setdefault(metric.name, {})[key] = (
                        point.count if value is None else value  # type: ignore[union-attr]
                    )
    return found


async def test_metrics_through_an_sdk_meter_provider() -> None:
    """The OpenTelemetry instruments count jobs per task and queue and time them."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    queue = TaskQueue(
        "memory://",
        prefix="t",
        telemetry=False,
        instrumentation=[Telemetry(meter_provider=provider, tracing=False)],
    )
    attempts = {"n": 0}

    @queue.task(name="ok")
    async def ok() -> None:
        await anyio.lowlevel.checkpoint()

    @queue.task(name="flaky", retries=1, backoff=0.01, jitter=0)
    async def flaky() -> None:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("once")

    async with queue:
        for _ in range(3):
            await queue.enqueue(ok)
        await queue.enqueue(flaky)
        async with running_worker(queue) as worker:
            await wait_until(worker, lambda s: s.succeeded == 4)
    points = _points(reader)
    ok_key, flaky_key = ("ok", "default"), ("flaky", "default")
    assert points["aqueue.jobs.started"] == {ok_key: 3, flaky_key: 2}
    assert points["aqueue.jobs.succeeded"] == {ok_key: 3, flaky_key: 1}
    assert points["aqueue.jobs.failed"] == {flaky_key: 1}
    assert points["aqueue.jobs.retried"] == {flaky_key: 1}
    assert points["aqueue.job.duration"] == {ok_key: 3, flaky_key: 2}
    assert points["aqueue.job.queue_wait"] == {ok_key: 3, flaky_key: 2}
    assert points["aqueue.jobs.in_flight"] == {ok_key: 0, flaky_key: 0}
    provider.shutdown()


# -- without an SDK ---------------------------------------------------------------------------


async def test_without_an_sdk_the_trace_context_passes_through_a_workflow() -> None:
    """No SDK, no spans: a job's continuation still carries the trace context it came with,
    so a worker further on that has an SDK continues the same trace."""
    telemetry = Telemetry(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    queue = TaskQueue("memory://", prefix="t", telemetry=False, instrumentation=[telemetry])
    seen: list[str | None] = []

    @queue.task(name="a")
    async def a() -> int:
        seen.append(current_job().headers.get("traceparent"))
        return 1

    @queue.task(name="b")
    async def b(x: int) -> None:
        seen.append(current_job().headers.get("traceparent"))

    async with queue:
        token = otel_context.attach(extract_context({"traceparent": TRACEPARENT}))
        try:
            await queue.enqueue(chain(a.s(), b.s()))  # a remote context is current: injected
        finally:
            otel_context.detach(token)
        await queue.enqueue(b, 2)  # none: none injected
        async with running_worker(queue) as worker:
            await wait_until(worker, lambda s: s.succeeded == 3)
    assert sorted(seen, key=str) == [TRACEPARENT, TRACEPARENT, None]


def test_without_an_sdk_a_job_without_trace_context_costs_no_observer() -> None:
    """The cheap path: nothing to record, nothing to pass on."""
    telemetry = Telemetry(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    assert telemetry.job(_Delivery({t.HEADER_TASK: "x"}), "default") is NO_OBSERVER  # type: ignore[arg-type]
    message = _message()
    with telemetry.publish(message) as sent:
        assert sent is message


def test_an_sdk_set_up_later_is_found() -> None:
    """The global providers are looked up again (at most every SDK_CHECK_INTERVAL seconds)."""
    providers: list[object] = [NoOpTracerProvider()]
    watch = _Watch(None, lambda: providers[-1])
    assert not watch.sdk()
    providers.append(SdkTracerProvider())
    assert not watch.sdk()  # not looked up again yet
    watch._next = 0.0
    assert watch.sdk()
    providers.append(NoOpTracerProvider())
    assert watch.sdk()  # OpenTelemetry sets its global provider once: an SDK found stays
    assert _Watch(SdkTracerProvider(), lambda: None).sdk()
    assert not _Watch(NoOpTracerProvider(), lambda: SdkTracerProvider()).sdk()


async def test_a_retry_request_past_the_last_attempt_is_a_failure(
    spans: InMemorySpanExporter,
    memory_queue: TaskQueue,
) -> None:
    """Retry is no failure while attempts remain; out of them, the job died: status ERROR."""

    @memory_queue.task(name="again", retries=0)
    async def again() -> None:
        raise Retry(delay=0.01)

    async with memory_queue:
        await memory_queue.enqueue(again)
        async with running_worker(memory_queue) as worker:
            await wait_until(worker, lambda s: s.dead_lettered == 1)
    process = Tree(spans.get_finished_spans()).one("process again")
    assert process.status.status_code is StatusCode.ERROR
    assert [e.name for e in process.events] == ["aqueue.retry", "exception"]
    assert process.attributes["aqueue.settlement"] == "dead-lettered"  # type: ignore[index]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


async def test_an_exception_whose_str_raises_is_recorded_on_the_span(
    spans: InMemorySpanExporter, memory_queue: TaskQueue
) -> None:
    """The SDK's ``record_exception`` calls ``str()``: the span gets the exception event
    anyway, with a placeholder message, and the job is dead-lettered by a living worker."""

    @memory_queue.task(name="unprintable")
    async def unprintable() -> None:
        raise _Unprintable

    async with memory_queue, running_worker(memory_queue) as worker:
        await memory_queue.enqueue(unprintable)
        await wait_until(worker, lambda s: s.dead_lettered == 1)
    process = Tree(spans.get_finished_spans()).one("process unprintable")
    assert process.status.status_code is StatusCode.ERROR
    assert "str() raised RuntimeError" in (process.status.description or "")
    [event] = [e for e in process.events if e.name == "exception"]
    assert event.attributes is not None
    assert str(event.attributes["exception.type"]).endswith("_Unprintable")
    assert "str() raised RuntimeError" in str(event.attributes["exception.message"])
    assert "raise _Unprintable" in str(event.attributes["exception.stacktrace"])
