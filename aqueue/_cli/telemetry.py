"""What ``aqueue worker`` sets up to be observed: logging, the OpenTelemetry SDK, /metrics.

The only module that imports the OpenTelemetry *SDK* and its OTLP exporter (the optional
extra ``aqueue-rabbitmq[otel]``), and the one that starts the Prometheus endpoint
(``aqueue-rabbitmq[metrics]``).
Everything is imported when an option asks for it: the CLI works without the extras, says
which one to install when an option needs it, and ``aqueue dlq`` loads no OpenTelemetry.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Literal

from aqueue._client.queue import TaskQueue
from aqueue._observability.logs import JobLogFilter, JsonLogFormatter, TextLogFormatter

logger = logging.getLogger("aqueue.worker")

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
#: ``service.name`` of a worker's spans unless OTEL_SERVICE_NAME (or
#: OTEL_RESOURCE_ATTRIBUTES) names one.
DEFAULT_SERVICE_NAME = "aqueue-worker"

_OTEL_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.metrics",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
)
_METRICS_MODULES = ("prometheus_client",)


class ObservabilityError(Exception):
    """An observability option cannot be honoured (a missing extra, a port in use)."""


def require_extra(option: str, extra: str, modules: Sequence[str]) -> None:
    """Check that the modules an option needs import.

    Raises:
        ObservabilityError: one does not, naming the extra that provides it.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ObservabilityError(
                f"{option} needs the optional dependencies of aqueue-rabbitmq[{extra}]: "
                f'pip install "aqueue-rabbitmq[{extra}]" ({exc})'
            ) from exc


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Log to stderr at `level`, as text or JSON lines, with the job and trace fields.

    Like `logging.basicConfig`, it leaves a root logger that has handlers already alone.
    """
    from aqueue._observability.otel import (
        current_trace_ids,  # the OpenTelemetry API: only when needed
    )

    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobLogFilter(trace_ids=current_trace_ids))
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else TextLogFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


#: Seconds the exit waits for the last spans and metrics to reach the collector: one that does
#: not answer would hold it ~10 s per signal (the exporters retry until their timeout).
SHUTDOWN_GRACE = 1.0


def _enabled(variable: str, default: str = "otlp") -> bool:
    return os.environ.get(variable, default).strip().lower() != "none"


def setup_otel(default_service_name: str = DEFAULT_SERVICE_NAME) -> Callable[[], None]:
    """Install the OpenTelemetry SDK as the global tracer and meter providers.

    Spans go through a BatchSpanProcessor and metrics through a periodic reader, both to
    OTLP/HTTP exporters configured by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``,
    ``OTEL_METRIC_EXPORT_INTERVAL``, ...). ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` describe the process. Traces are exported unless
    ``OTEL_TRACES_EXPORTER=none``; metrics only when asked for with
    ``OTEL_METRICS_EXPORTER=otlp``: Jaeger, the collector most people start with, takes no
    metrics and answers 404 to every export. ``OTEL_SDK_DISABLED=true`` turns both off.

    Returns:
        A function that flushes and shuts both providers down (call it on exit); it returns
        within about `SHUTDOWN_GRACE` seconds even when the collector does not answer.
    """
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        logger.info("OTEL_SDK_DISABLED=true: no traces or metrics are exported")
        return lambda: None
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": default_service_name})
    # shut down by the function returned, within SHUTDOWN_GRACE, not by their atexit hooks
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if _enabled("OTEL_TRACES_EXPORTER"):
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    readers = (
        [PeriodicExportingMetricReader(OTLPMetricExporter())]
        if _enabled("OTEL_METRICS_EXPORTER", default="none")
        else []
    )
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, shutdown_on_exit=False
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    logger.info(
        "OpenTelemetry: exporting %s over OTLP/HTTP as service %r",
        " and ".join(
            signal
            for signal, enabled in (
                ("traces", _enabled("OTEL_TRACES_EXPORTER")),
                ("metrics", bool(readers)),
            )
            if enabled
        )
        or "nothing",
        resource.attributes.get("service.name"),
    )

    def flush_and_stop() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    def shutdown() -> None:
        # in a daemon thread, waited for SHUTDOWN_GRACE: what has not reached the collector
        # by then is dropped, and the exit does not wait for the exporters' retries
        stopping = threading.Thread(target=flush_and_stop, name="otel-shutdown", daemon=True)
        stopping.start()
        stopping.join(SHUTDOWN_GRACE)
        if stopping.is_alive():
            logger.warning(
                "OpenTelemetry: the collector did not take the last spans within %g s; they "
                "are dropped (is OTEL_EXPORTER_OTLP_ENDPOINT right, and the collector up?)",
                SHUTDOWN_GRACE,
            )

    return shutdown


@contextmanager
def worker_observability(
    queue: TaskQueue,
    *,
    otel: bool,
    metrics_port: int | None,
    metrics_address: str,
    identity: Callable[[], Mapping[str, object]] = dict,
    target_wait: float | None = None,
) -> Iterator[None]:
    """Set up what a worker's options ask for; tear it down (flushing spans) on the way out.

    The metrics port also answers ``/scale``, naming the worker by `identity` and taking
    `target_wait` (``--target-wait``) when a request names no target.

    Raises:
        ObservabilityError: a missing extra, or a metrics port that cannot be bound; raised
            before anything is started.
    """
    if otel:
        require_extra("--otel", "otel", _OTEL_MODULES)
    if metrics_port is not None:
        require_extra("--metrics-port", "metrics", _METRICS_MODULES)
    with ExitStack() as stack:
        if metrics_port is not None:
            from aqueue._observability.prometheus import PrometheusMetrics, serve_metrics
            from aqueue._observability.scale import ScaleSignal

            signal = ScaleSignal(identity, target_wait)
            try:
                server = serve_metrics(metrics_port, metrics_address, scale=signal)
            except OSError as exc:
                raise ObservabilityError(
                    f"cannot serve metrics on {metrics_address}:{metrics_port}: {exc}"
                ) from exc
            stack.callback(server.close)
            queue.instrument(PrometheusMetrics())
            queue.instrument(signal)
            host, port = server.address
            logger.info(
                "serving Prometheus metrics on http://%s:%d/metrics and the scaling signal "
                "on http://%s:%d/scale",
                host,
                port,
                host,
                port,
            )
        if otel:
            from aqueue._observability.otel import Telemetry

            if not any(isinstance(i, Telemetry) for i in queue.instrumentation):
                logger.warning(
                    "the TaskQueue was made with telemetry=False: --otel exports no aqueue spans"
                )
            stack.callback(setup_otel())
        yield
