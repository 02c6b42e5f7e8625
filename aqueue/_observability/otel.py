"""OpenTelemetry for aqueue, re-exported by `aqueue.telemetry`; the one importer of the API.

Each publish is a PRODUCER span carrying the W3C trace context in the message headers; each
delivery a CONSUMER span from its arrival to its settlement, so retries, dead letters and
workflow steps published while settling are its children; job metrics go through a
`MetricSink`. Without an SDK every call is the API's no-op. The observability page documents
the span names, attributes (OpenTelemetry messaging conventions), metrics and costs.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import replace
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from aqueue._core import wire as t
from aqueue._core.errors import error_message, qualified_name, traceback_tail
from aqueue._core.types import HeaderValue
from aqueue._observability.hooks import (
    NO_OBSERVER,
    Instrumentation,
    JobObserver,
    QueueStats,
    Settlement,
)
from aqueue._observability.logs import JobLogFilter, JsonLogFormatter, TextLogFormatter
from aqueue._observability.metrics import (
    COUNTERS,
    GAUGES,
    HISTOGRAMS,
    IN_FLIGHT,
    SECONDS_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    JobMetrics,
    JobMetricsObserver,
    MetricSink,
    record_gauges,
)
from aqueue._serialization import loads
from aqueue._tasks.context import JobContext
from aqueue._transport import Delivery, OutgoingMessage
from aqueue.exceptions import AqueueError, Retry

__all__ = [
    "HEADERS",
    "Instrumentation",
    "JobLogFilter",
    "JobMetrics",
    "JobObserver",
    "JsonLogFormatter",
    "MetricSink",
    "Telemetry",
    "TextLogFormatter",
    "current_trace_ids",
    "extract_context",
    "inject_context",
    "job_attributes",
    "process_attributes",
    "publish_attributes",
    "workflow_id",
]

try:
    _VERSION = importlib.metadata.version("aqueue-rabbitmq")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    _VERSION = "0"

#: The instrumentation scope of aqueue's tracer and meter.
SCOPE = "aqueue"
#: The message headers the W3C trace context travels in.
HEADERS = ("traceparent", "tracestate")

_SYSTEM = "rabbitmq"


# -- carriers ---------------------------------------------------------------------------------


class _HeaderGetter(Getter[Mapping[str, HeaderValue]]):
    """Reads trace context from AMQP headers: string values only."""

    def get(self, carrier: Mapping[str, HeaderValue], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, HeaderValue]) -> list[str]:
        return [key for key, value in carrier.items() if isinstance(value, str)]


class _HeaderSetter(Setter[dict[str, HeaderValue]]):
    def set(self, carrier: dict[str, HeaderValue], key: str, value: str) -> None:
        carrier[key] = value


_GETTER = _HeaderGetter()
_SETTER = _HeaderSetter()


def inject_context(
    headers: Mapping[str, HeaderValue], context: otel_context.Context | None = None
) -> dict[str, HeaderValue]:
    """A copy of `headers` with the trace context of `context` (default: the current one).

    Uses the global propagator (W3C trace context and baggage unless ``OTEL_PROPAGATORS``
    says otherwise). Without a valid span in `context`, the headers stay as they were: a
    trace context they carry already passes through.
    """
    carrier = dict(headers)
    propagate.inject(carrier, context=context, setter=_SETTER)
    return carrier


def extract_context(headers: Mapping[str, HeaderValue]) -> otel_context.Context:
    """The trace context carried by message headers (empty when they carry none)."""
    return propagate.extract(headers, getter=_GETTER)


# -- attributes -------------------------------------------------------------------------------


def workflow_id(headers: Mapping[str, HeaderValue]) -> str | None:
    """The id of the workflow a message belongs to (its root id), or None."""
    value = headers.get(t.HEADER_WORKFLOW)
    if not isinstance(value, str):
        return None
    try:
        root = loads(value.encode())["root"]
    except (AqueueError, KeyError, TypeError):
        return None
    return root if isinstance(root, str) else None


def _job_headers(headers: Mapping[str, HeaderValue], attributes: dict[str, Any]) -> None:
    task = headers.get(t.HEADER_TASK)
    if isinstance(task, str):
        attributes["aqueue.task"] = task
    queue = headers.get(t.HEADER_QUEUE)
    if isinstance(queue, str):
        attributes["aqueue.queue"] = queue
    attempt = headers.get(t.HEADER_ATTEMPT)
    if isinstance(attempt, int) and not isinstance(attempt, bool):
        attributes["aqueue.attempt"] = attempt
    workflow = workflow_id(headers)
    if workflow is not None:
        attributes["aqueue.workflow_id"] = workflow


def publish_attributes(message: OutgoingMessage) -> dict[str, Any]:
    """The attributes of the PRODUCER span of `message`."""
    attributes: dict[str, Any] = {
        "messaging.system": _SYSTEM,
        "messaging.operation.type": "publish",
        "messaging.operation.name": "publish",
        "messaging.destination.name": message.exchange,
        "messaging.message.id": message.message_id,
        "messaging.message.body.size": len(message.body),
        "aqueue.job_id": message.message_id,
    }
    if message.routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = message.routing_key
    _job_headers(message.headers, attributes)
    reason = message.headers.get(t.HEADER_DEAD_REASON)
    if isinstance(reason, str):
        attributes["aqueue.dead_letter.reason"] = reason
    return attributes


def process_attributes(delivery: Delivery, queue: str) -> dict[str, Any]:
    """The attributes of the CONSUMER span of `delivery`, known before it is decoded."""
    message_id = delivery.message_id or ""
    attributes: dict[str, Any] = {
        "messaging.system": _SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": delivery.exchange,
        "messaging.destination.subscription.name": delivery.queue,
        "messaging.message.id": message_id,
        "messaging.message.body.size": len(delivery.body),
        "aqueue.job_id": message_id,
        "aqueue.queue": queue,
    }
    if delivery.routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = delivery.routing_key
    _job_headers(delivery.headers, attributes)
    attributes["aqueue.queue"] = queue  # the logical queue it was consumed from
    return attributes


def job_attributes(job: JobContext) -> dict[str, Any]:
    """What a decoded job adds to its CONSUMER span.

    The attempt with redeliveries counted (the header says the attempt it was published as),
    and its wait in the queue, in seconds.
    """
    return {"aqueue.attempt": job.attempt, "aqueue.queue_wait": job.queue_wait}


def current_trace_ids() -> tuple[str, str] | None:
    """The current span's (trace id, span id) in hex, or None outside a sampled span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


def _error_type(error: BaseException) -> str:
    return qualified_name(type(error))


def _fail(span: trace.Span, error: BaseException) -> None:
    """Mark the span failed; never depends on ``str(error)``, which is user code and may raise."""
    message = error_message(error)
    try:
        span.record_exception(error)
    except Exception:  # noqa: BLE001 - the SDK calls str(error): record the same event safely
        span.add_event(
            "exception",
            {
                "exception.type": _error_type(error),
                "exception.message": message,
                "exception.stacktrace": traceback_tail(error),
                "exception.escaped": "False",
            },
        )
    span.set_attribute("error.type", _error_type(error))
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"))


# -- metrics ----------------------------------------------------------------------------------


#: The OpenTelemetry name and unit of each per-queue gauge.
OTEL_GAUGES: dict[Gauge, tuple[str, str]] = {
    "oldest_wait": ("aqueue.queue.oldest_wait", "s"),
    "ready": ("aqueue.queue.ready", "{message}"),
    "concurrency": ("aqueue.worker.concurrency", "{runner}"),
    "busy_ratio": ("aqueue.worker.busy_ratio", "1"),
    "loop_lag": ("aqueue.worker.loop_lag", "s"),
    "cpu_saturated": ("aqueue.worker.cpu_saturated", "1"),
}


class _OtelMetrics:
    """aqueue's OpenTelemetry instruments on one meter provider (None: the global one)."""

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        meter = metrics.get_meter(SCOPE, _VERSION, meter_provider=meter_provider)
        self.counters = {
            name: meter.create_counter(f"aqueue.jobs.{name}", "{job}", description)
            for name, description in COUNTERS.items()
        }
        self.histograms = {
            "duration": meter.create_histogram(
                "aqueue.job.duration",
                "s",
                HISTOGRAMS["duration"],
                explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            ),
            "queue_wait": meter.create_histogram(
                "aqueue.job.queue_wait",
                "s",
                HISTOGRAMS["queue_wait"],
                explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
            ),
        }
        self.in_flight_counter = meter.create_up_down_counter(
            "aqueue.jobs.in_flight", "{job}", IN_FLIGHT
        )
        self.gauges = {
            name: meter.create_gauge(OTEL_GAUGES[name][0], OTEL_GAUGES[name][1], description)
            for name, description in GAUGES.items()
        }


class _OtelSink(MetricSink):
    def __init__(self, instruments: _OtelMetrics) -> None:
        self._instruments = instruments

    def count(self, counter: Counter, task: str, queue: str) -> None:
        self._instruments.counters[counter].add(1, {"aqueue.task": task, "aqueue.queue": queue})

    def observe(self, histogram: Histogram, seconds: float, task: str, queue: str) -> None:
        self._instruments.histograms[histogram].record(
            seconds, {"aqueue.task": task, "aqueue.queue": queue}
        )

    def in_flight(self, delta: int, task: str, queue: str) -> None:
        self._instruments.in_flight_counter.add(delta, {"aqueue.task": task, "aqueue.queue": queue})

    def gauge(self, gauge: Gauge, value: float, queue: str) -> None:
        self._instruments.gauges[gauge].set(value, {"aqueue.queue": queue})


# Instruments are made once per meter provider: the SDK warns about every duplicate, and an
# application may make many TaskQueues (one per test, say).
_SINKS: dict[MeterProvider | None, _OtelSink] = {}


def _sink(meter_provider: MeterProvider | None) -> _OtelSink:
    sink = _SINKS.get(meter_provider)
    if sink is None:
        sink = _SINKS[meter_provider] = _OtelSink(_OtelMetrics(meter_provider))
    return sink


class _NoSink(MetricSink):
    def count(self, counter: Counter, task: str, queue: str) -> None:
        pass

    def observe(self, histogram: Histogram, seconds: float, task: str, queue: str) -> None:
        pass

    def in_flight(self, delta: int, task: str, queue: str) -> None:
        pass

    def gauge(self, gauge: Gauge, value: float, queue: str) -> None:
        pass


_NO_SINK = _NoSink()


# -- the instrumentation ----------------------------------------------------------------------


class Telemetry(Instrumentation):
    """Traces and metrics through the OpenTelemetry API; a `TaskQueue` installs one by default.

    Args:
        tracer_provider: where spans go; None: the global provider
            (``trace.set_tracer_provider``), looked up again, at most once a second, until an
            SDK is there: an SDK set up after the queue was made is used.
        meter_provider: where metrics go; None: the global provider, likewise.
        tracing: make spans and propagate trace context.
        metrics: record the job metrics.

    Added in 0.1.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        tracing: bool = True,
        metrics: bool = True,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, _VERSION, tracer_provider=tracer_provider)
        self.tracing = tracing
        self.sink: MetricSink = _sink(meter_provider) if metrics else _NO_SINK
        self._metrics = metrics
        self._traces = _Watch(tracer_provider, trace.get_tracer_provider)
        self._measures = _Watch(meter_provider, get_meter_provider)

    def __repr__(self) -> str:
        return f"<Telemetry tracing={self.tracing} metrics={self._metrics}>"

    # Without an SDK (the API's proxy or no-op providers) spans and measurements are dropped
    # anyway: skip making them, and only pass a trace context a message carries on to the
    # messages published while it runs (so an SDK further down the line sees one trace).

    def _tracing_sdk(self) -> bool:
        return self.tracing and self._traces.sdk()

    def _metrics_sink(self) -> MetricSink | None:
        return self.sink if self._metrics and self._measures.sdk() else None

    def publish(self, message: OutgoingMessage) -> AbstractContextManager[OutgoingMessage]:
        if self._tracing_sdk():
            return _PublishSpan(self.tracer, message)
        if not self.tracing:
            return nullcontext(message)
        if trace.get_current_span().get_span_context().is_valid:  # another library's context
            return nullcontext(replace(message, headers=inject_context(message.headers)))
        carried = _CARRIED.get()
        if carried is None:
            return nullcontext(message)
        passed = {k: v for k in _carrier_fields() if isinstance(v := carried.get(k), str)}
        return nullcontext(replace(message, headers={**message.headers, **passed}))

    def job(self, delivery: Delivery, queue: str) -> JobObserver:
        sink = self._metrics_sink()
        if self._tracing_sdk():
            return _JobSpan(self.tracer, sink or _NO_SINK, delivery, queue)
        if self.tracing and not _carrier_fields().isdisjoint(delivery.headers):
            return _CarriedContext(sink or _NO_SINK, delivery, queue)
        if sink is not None:
            return JobMetricsObserver(sink, delivery, queue)
        return NO_OBSERVER

    def sample(self, stats: Sequence[QueueStats]) -> None:
        sink = self._metrics_sink()
        if sink is not None:
            record_gauges(sink, stats)

    def deduplicated(self, task: str, queue: str, job_id: str) -> None:
        sink = self._metrics_sink()
        if sink is not None:
            sink.count("deduplicated", task, queue)


def _from_api(provider: object) -> bool:
    """Whether a provider is one of the API's own (a proxy or a no-op): no SDK behind it."""
    return type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


#: Seconds between two looks at the global provider while no SDK is behind it.
SDK_CHECK_INTERVAL = 1.0


class _Watch:
    """Whether an SDK is behind a provider (the given one, else the global one).

    The global provider is looked up at most every `SDK_CHECK_INTERVAL` seconds until an SDK
    is there (a lookup costs more than the rest of a job's hooks without one); OpenTelemetry
    sets the global provider once, so an SDK found stays.
    """

    __slots__ = ("_given", "_lookup", "_next", "_sdk")

    def __init__(self, given: object, lookup: Callable[[], object]) -> None:
        self._given = given
        self._lookup = lookup
        self._next = 0.0
        self._sdk = given is not None and not _from_api(given)

    def sdk(self) -> bool:
        if self._sdk or self._given is not None:
            return self._sdk
        now = time.monotonic()
        if now >= self._next:
            self._next = now + SDK_CHECK_INTERVAL
            self._sdk = not _from_api(self._lookup())
        return self._sdk


_FIELDS: list[tuple[object, frozenset[str]]] = [(None, frozenset())]


def _carrier_fields() -> frozenset[str]:
    """The header names the global propagator uses (cached per propagator)."""
    textmap = propagate.get_global_textmap()
    cached, fields = _FIELDS[0]
    if cached is not textmap:
        fields = frozenset(textmap.fields)
        _FIELDS[0] = (textmap, fields)
    return fields


#: The headers of the delivery being processed, when it carries a trace context and no SDK is
#: there to make a span of it: the publish hook copies its trace headers onto what the job
#: publishes (parsing them only to write them out again would cost more than the job's hooks).
_CARRIED: ContextVar[Mapping[str, HeaderValue] | None] = ContextVar(
    "aqueue_carried_trace_context", default=None
)


class _CarriedContext(JobMetricsObserver):
    """No SDK: the delivery's trace context passes on to what the job publishes."""

    __slots__ = ("_delivery", "_token")

    def __init__(self, sink: MetricSink, delivery: Delivery, queue: str) -> None:
        super().__init__(sink, delivery, queue)
        self._delivery = delivery
        self._token: Token[Mapping[str, HeaderValue] | None] | None = None

    def __enter__(self) -> JobObserver:
        self._token = _CARRIED.set(self._delivery.headers)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if self._token is not None:
            _CARRIED.reset(self._token)


class _PublishSpan(AbstractContextManager[OutgoingMessage]):
    """The PRODUCER span of one publish; its context goes into the message's headers."""

    __slots__ = ("_message", "_span", "_tracer")

    def __init__(self, tracer: trace.Tracer, message: OutgoingMessage) -> None:
        self._tracer = tracer
        self._message = message
        self._span: trace.Span = trace.INVALID_SPAN

    def __enter__(self) -> OutgoingMessage:
        message = self._message
        parent: otel_context.Context | None = None
        if not trace.get_current_span().get_span_context().is_valid:
            # outside any span (a replay from the command line): continue the trace the
            # message carries, if any
            parent = extract_context(message.headers)
        task = message.headers.get(t.HEADER_TASK)
        span = self._tracer.start_span(
            f"publish {task if isinstance(task, str) else message.exchange}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=publish_attributes(message),
        )
        self._span = span
        headers = inject_context(message.headers, trace.set_span_in_context(span, parent))
        return replace(message, headers=headers)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            _fail(self._span, exc)
        self._span.end()


class _JobSpan(JobMetricsObserver):
    """The CONSUMER span of one delivery, current from its arrival until it is settled."""

    __slots__ = ("_delivery", "_failed", "_logical", "_settled", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: trace.Tracer, sink: MetricSink, delivery: Delivery, queue: str
    ) -> None:
        super().__init__(sink, delivery, queue)
        self._tracer = tracer
        self._delivery = delivery
        self._logical = queue
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: Token[otel_context.Context] | None = None
        self._settled = False
        self._failed = False

    def __enter__(self) -> JobObserver:
        delivery = self._delivery
        parent = extract_context(delivery.headers)
        task = delivery.headers.get(t.HEADER_TASK)
        span = self._tracer.start_span(
            f"process {task if isinstance(task, str) else self._logical}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=process_attributes(delivery, self._logical),
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        span = self._span
        if not self._settled:
            # cancelled (shutdown): unsettled on purpose, the broker delivers it again
            span.set_attribute("aqueue.settlement", "unsettled")
        if self._token is not None:
            otel_context.detach(self._token)
        span.end()

    def started(self, job: JobContext) -> None:
        super().started(job)
        if self._span.is_recording():
            self._span.set_attributes(job_attributes(job))

    def finished(self, job: JobContext, error: BaseException | None, duration: float) -> None:
        super().finished(job, error, duration)
        if error is None:
            return
        if isinstance(error, Retry):  # asked for, not a failure
            self._span.add_event("aqueue.retry", {"aqueue.retry.delay": error.delay or -1.0})
        else:
            self._failed = True
            _fail(self._span, error)

    def settled(self, settlement: Settlement, error: BaseException | None) -> None:
        super().settled(settlement, error)
        self._settled = True
        span = self._span
        span.set_attribute("aqueue.settlement", settlement)
        if settlement in ("dead-lettered", "requeued") and error is not None and not self._failed:
            # never ran (undecodable, an unknown task), ran out of Retry requests, or could
            # not be settled (the result backend or the broker failed)
            self._failed = True
            _fail(span, error)
