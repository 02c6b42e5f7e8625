"""Issue 5: traces across a real RabbitMQ, from an HTTP request to the last step of a chain,
and spans exported over OTLP/HTTP by ``aqueue worker --otel``."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from aqueue import TaskQueue, WorkerSettings, chain
from aqueue.contrib.fastapi import AqueueDependency, lifespan
from aqueue.testing import running_worker
from tests.helpers.otel import Tree
from tests.helpers.otlp import Receiver, otlp_receiver
from tests.helpers.polling import wait_for
from tests.helpers.rabbit_node import free_ports
from tests.helpers.worker_process import WorkerProcess, apps_env
from tests.helpers.workers import delete_topology, wait_until
from tests.integration.apps import jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

tracer = trace.get_tracer("tests.fastapi")


#: Recent FastAPI releases make a SERVER span per request themselves when an OpenTelemetry
#: SDK is installed; older ones need opentelemetry-instrumentation-fastapi, for which
#: `ServerSpan` stands in.
FASTAPI_TRACES = importlib.util.find_spec("fastapi.telemetry") is not None


class ServerSpan:
    """What opentelemetry-instrumentation-fastapi does: a SERVER span around each request,
    continuing the trace context the caller sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with tracer.start_as_current_span(
            f"{scope['method']} {scope['path']}",
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
        ):
            await self.app(scope, receive, send)


async def test_an_http_request_and_its_chain_are_one_trace(
    amqp_url: str, prefix: str, spans: InMemorySpanExporter
) -> None:
    """client → POST /orders/7 → enqueue chain(charge, ship) → worker runs charge, publishes
    ship → ship fails once and is retried → ship succeeds: one trace, each span the child of
    the one that caused it."""
    queue = TaskQueue(amqp_url, prefix=prefix, name=f"{prefix}-web")
    failures = {"ship": 1}

    @queue.task(name="charge")
    async def charge(order_id: int) -> int:
        return order_id * 10

    @queue.task(name="ship", retries=2, backoff=0.05, jitter=0)
    async def ship(amount: int) -> str:
        if failures["ship"]:
            failures["ship"] -= 1
            raise ConnectionError("carrier API down")
        return f"shipped {amount}"

    api = FastAPI(lifespan=lifespan(queue))  # the helper of aqueue.contrib.fastapi
    if not FASTAPI_TRACES:
        api.add_middleware(ServerSpan)

    @api.post("/orders/{order_id}")
    async def create_order(order_id: int, jobs: AqueueDependency) -> dict[str, str]:
        job = await jobs.enqueue(chain(charge.s(order_id), ship.s()))
        return {"job_id": job.job_id}

    try:
        async with (
            queue,
            running_worker(queue, WorkerSettings(concurrency=4)) as worker,
            api.router.lifespan_context(api),
        ):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                with tracer.start_as_current_span("caller", kind=SpanKind.CLIENT):
                    headers: dict[str, str] = {}
                    propagate.inject(headers)
                    response = await client.post("/orders/7", headers=headers)
            assert response.status_code == 200, response.text
            await wait_until(worker, lambda s: s.succeeded == 2, timeout=30)
    finally:
        await delete_topology(amqp_url, prefix)

    tree = Tree(spans.get_finished_spans())
    assert len(tree.trace_ids()) == 1, tree.describe()
    caller = tree.one("caller")
    publish_charge = tree.one("publish charge", SpanKind.PRODUCER)
    # the request's span (FastAPI may put spans of its own between it and the enqueue)
    server = next(s for s in tree.ancestors(publish_charge) if s.kind == SpanKind.SERVER)
    assert tree.parent(server) is caller
    process_charge = tree.one("process charge", SpanKind.CONSUMER)
    publish_ship, retry_ship = tree.named("publish ship", SpanKind.PRODUCER)
    failed_ship, done_ship = tree.named("process ship", SpanKind.CONSUMER)
    chain_of_causes = [
        (process_charge, publish_charge),
        (publish_ship, process_charge),  # the continuation, published by the worker
        (failed_ship, publish_ship),
        (retry_ship, failed_ship),  # the retry copy, published inside the failed attempt
        (done_ship, retry_ship),
    ]
    for child, parent in chain_of_causes:
        assert tree.parent(child) is parent, f"{child.name} <- {parent.name}\n{tree.describe()}"
    _check_conventions(publish_charge, process_charge, prefix)
    assert failed_ship.status.status_code is StatusCode.ERROR
    assert failed_ship.status.description == "ConnectionError: carrier API down"
    assert [event.name for event in failed_ship.events] == ["exception"]
    assert _attribute(failed_ship, "aqueue.settlement") == "retried"
    assert _attribute(retry_ship, "aqueue.attempt") == 2
    assert _attribute(done_ship, "aqueue.attempt") == 2
    assert done_ship.status.status_code is StatusCode.UNSET
    workflow = _attribute(publish_charge, "aqueue.workflow_id")
    assert isinstance(workflow, str)
    for span in (process_charge, publish_ship, failed_ship, retry_ship, done_ship):
        assert _attribute(span, "aqueue.workflow_id") == workflow


def _attribute(span: ReadableSpan, key: str) -> object:
    return (span.attributes or {}).get(key)


def _check_conventions(publish: ReadableSpan, process: ReadableSpan, prefix: str) -> None:
    """The messaging attributes of a PRODUCER span and its CONSUMER span."""
    job_id = _attribute(publish, "aqueue.job_id")
    for span, operation in ((publish, "publish"), (process, "process")):
        assert _attribute(span, "messaging.system") == "rabbitmq"
        assert _attribute(span, "messaging.operation.type") == operation
        assert _attribute(span, "messaging.message.id") == job_id
        assert _attribute(span, "aqueue.job_id") == job_id
        assert _attribute(span, "aqueue.task") == "charge"
        assert _attribute(span, "aqueue.queue") == "default"
        assert _attribute(span, "aqueue.attempt") == 1
        assert _attribute(span, "messaging.destination.name") == prefix
        assert _attribute(span, "messaging.rabbitmq.destination.routing_key") == "default"
    assert _attribute(process, "messaging.destination.subscription.name") == f"{prefix}.default"
    wait = _attribute(process, "aqueue.queue_wait")
    assert isinstance(wait, float)
    assert wait >= 0


@dataclass(frozen=True)
class OtelWorker:
    """An ``aqueue worker --otel`` subprocess of the jobs app, and where it exports to."""

    app: jobs.App
    receiver: Receiver
    process: WorkerProcess
    records: Path


@asynccontextmanager
async def otel_worker(
    amqp_url: str, prefix: str, tmp_path: Path, env: Callable[[str], Mapping[str, str]]
) -> AsyncIterator[OtelWorker]:
    """Start ``aqueue worker --otel`` with an OTLP receiver, ``env(receiver.endpoint)`` added
    to its environment; afterwards it is killed if it still runs and the topology deleted."""
    out = tmp_path / "records"
    app = jobs.make_app(amqp_url, prefix, out=out)
    with otlp_receiver() as receiver:
        process = WorkerProcess(
            "tests.integration.apps.jobs:queue",
            ["--otel"],
            env={**apps_env(amqp_url, prefix, out), **env(receiver.endpoint)},
            log=tmp_path / "worker.log",
        )
        try:
            process.start()
            await process.wait_started()
            yield OtelWorker(app, receiver, process, out)
        finally:
            process.cleanup()
            await delete_topology(amqp_url, prefix)


async def test_worker_otel_exports_spans_over_otlp_http(
    amqp_url: str, prefix: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """``aqueue worker --otel`` with OTEL_EXPORTER_OTLP_ENDPOINT: the job's CONSUMER span
    arrives as protobuf over HTTP, as its producer's child, under OTEL_SERVICE_NAME; and the
    job metrics follow, with OTEL_METRICS_EXPORTER=otlp."""

    def env(endpoint: str) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "orders-worker",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "otlp",  # metrics only when asked for (issue 12)
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        }

    async with otel_worker(amqp_url, prefix, tmp_path, env) as running:
        app, receiver, worker = running.app, running.receiver, running.process
        async with app.queue:
            with tracer.start_as_current_span("request"):
                job = await app.queue.enqueue(app.done, 0.0, 0.0)
        await wait_for(
            lambda: bool(receiver.spans_named("process done")),
            timeout=30,
            what="the worker's span at the receiver",
            details=worker.output_tail,
        )
        await worker.terminate()
    [received] = receiver.spans_named("process done")
    publish = Tree(spans.get_finished_spans()).one("publish done")
    assert publish.context is not None
    assert received.service == "orders-worker"
    assert received.span.kind == ProtoSpan.SpanKind.SPAN_KIND_CONSUMER
    assert received.span.trace_id == publish.context.trace_id.to_bytes(16, "big")
    assert received.span.parent_span_id == publish.context.span_id.to_bytes(8, "big")
    assert received.attributes["aqueue.job_id"] == job.job_id
    assert received.attributes["messaging.system"] == "rabbitmq"
    assert all(r.endswith("application/x-protobuf") for r in receiver.requests), receiver.requests
    # flushed when the worker stopped, if not before
    assert {"aqueue.jobs.started", "aqueue.jobs.succeeded", "aqueue.job.queue_wait"} <= (
        receiver.metric_names
    )


async def test_worker_otel_flushes_its_spans_on_shutdown(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """With a long batch delay, the spans of a job still arrive: SIGTERM flushes them. No
    metrics are exported unless asked for (issue 12: Jaeger answers them with 404s)."""

    def env(endpoint: str) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{endpoint}/v1/traces",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{endpoint}/v1/metrics",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        }

    async with otel_worker(amqp_url, prefix, tmp_path, env) as running:
        app, receiver, worker, out = running.app, running.receiver, running.process, running.records
        async with app.queue:
            await app.queue.enqueue(app.done, 0.0, 0.0)
        await wait_for(
            lambda: out.exists() and "done" in out.read_text(),
            timeout=30,
            what="the job to run",
            details=worker.output_tail,
        )
        await anyio.sleep(0.5)
        assert receiver.spans_named("process done") == []  # still batched
        await worker.terminate()
    [received] = receiver.spans_named("process done")
    assert received.service == "aqueue-worker"  # the default service.name
    assert receiver.metric_names == set()
    assert not any("/v1/metrics" in request for request in receiver.requests)
    assert "OpenTelemetry: exporting traces over OTLP/HTTP as" in worker.output()


async def test_worker_otel_stops_within_a_second_or_so_when_no_collector_answers(
    amqp_url: str, prefix: str, tmp_path: Path
) -> None:
    """Issue 12: spans batched for a collector where nothing listens do not hold the exit
    for the exporter's ~10 s of retries: SIGTERM to exit stays within a few seconds, with
    one warning that the spans were dropped."""
    [port] = free_ports(1)

    def env(_endpoint: str) -> dict[str, str]:
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        }

    async with otel_worker(amqp_url, prefix, tmp_path, env) as running:
        app, worker, out = running.app, running.process, running.records
        async with app.queue:
            await app.queue.enqueue(app.done, 0.0, 0.0)
        await wait_for(
            lambda: out.exists() and "done" in out.read_text(),
            timeout=30,
            what="the job to run",
            details=worker.output_tail,
        )
        began = anyio.current_time()
        await worker.terminate()
        assert anyio.current_time() - began < 4, worker.output_tail()
    assert worker.output().count("the collector did not take the last spans within 1 s") == 1
