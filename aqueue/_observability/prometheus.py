"""Prometheus metrics for ``aqueue worker --metrics-port``.

The only module that imports prometheus_client (the optional extra ``aqueue-rabbitmq[metrics]``).
The same job metrics as the OpenTelemetry ones (`aqueue._observability.hooks.JobMetrics`), under
Prometheus names, each labelled ``task`` and ``queue``:

- ``aqueue_jobs_started_total``, ``aqueue_jobs_succeeded_total``, ``aqueue_jobs_failed_total``,
  ``aqueue_jobs_retried_total``, ``aqueue_jobs_dead_lettered_total``,
  ``aqueue_jobs_expired_total``, ``aqueue_jobs_cancelled_total`` (counters);
- ``aqueue_jobs_in_flight`` (gauge);
- ``aqueue_job_duration_seconds`` and ``aqueue_job_queue_wait_seconds`` (histograms).

``aqueue_job_queue_wait_seconds`` is the figure to scale workers on: how long jobs waited
between becoming due and starting. Per queue (labelled ``queue``), sampled by a running worker
about once a second: ``aqueue_queue_oldest_wait_seconds``, ``aqueue_queue_ready``,
``aqueue_worker_concurrency``, ``aqueue_worker_busy_ratio``, ``aqueue_worker_loop_lag_seconds``
and ``aqueue_worker_cpu_saturated`` (gauges; docs/scaling.md says how each is computed).

The same port answers ``GET /scale`` (`aqueue._observability.scale`). prometheus_client's own
server serves its registry on every path and takes no other route, so `serve_metrics` runs
the stdlib WSGI server itself, with prometheus_client's WSGI app for everything but ``/scale``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from socketserver import ThreadingMixIn
from threading import Thread
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

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
    MetricSink,
)
from aqueue._observability.scale import ScaleSignal

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

_LABELS = ("task", "queue")
#: The Prometheus name of each per-queue gauge.
GAUGE_NAMES: dict[Gauge, str] = {
    "oldest_wait": "aqueue_queue_oldest_wait_seconds",
    "ready": "aqueue_queue_ready",
    "concurrency": "aqueue_worker_concurrency",
    "busy_ratio": "aqueue_worker_busy_ratio",
    "loop_lag": "aqueue_worker_loop_lag_seconds",
    "cpu_saturated": "aqueue_worker_cpu_saturated",
}


class PrometheusMetrics(JobMetrics):
    """Job metrics kept in a prometheus_client registry.

    Args:
        registry: where the metrics are registered (default: prometheus_client's global one,
            which also has the process and Python collectors). One `PrometheusMetrics` per
            registry: a second one would register the same names again.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(_PrometheusSink(registry))
        self.registry = registry


class _PrometheusSink(MetricSink):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.counters = {
            name: PromCounter(f"aqueue_jobs_{name}", description, _LABELS, registry=registry)
            for name, description in COUNTERS.items()
        }
        self.histograms = {
            "duration": PromHistogram(
                "aqueue_job_duration_seconds",
                HISTOGRAMS["duration"],
                _LABELS,
                registry=registry,
                buckets=SECONDS_BUCKETS,
            ),
            "queue_wait": PromHistogram(
                "aqueue_job_queue_wait_seconds",
                HISTOGRAMS["queue_wait"],
                _LABELS,
                registry=registry,
                buckets=SECONDS_BUCKETS,
            ),
        }
        self.in_flight_gauge = PromGauge(
            "aqueue_jobs_in_flight", IN_FLIGHT, _LABELS, registry=registry
        )
        self.gauges = {
            name: PromGauge(GAUGE_NAMES[name], description, ("queue",), registry=registry)
            for name, description in GAUGES.items()
        }

    def count(self, counter: Counter, task: str, queue: str) -> None:
        self.counters[counter].labels(task, queue).inc()

    def observe(self, histogram: Histogram, seconds: float, task: str, queue: str) -> None:
        self.histograms[histogram].labels(task, queue).observe(seconds)

    def in_flight(self, delta: int, task: str, queue: str) -> None:
        self.in_flight_gauge.labels(task, queue).inc(delta)

    def gauge(self, gauge: Gauge, value: float, queue: str) -> None:
        self.gauges[gauge].labels(queue).set(value)


@dataclass(slots=True)
class MetricsServer:
    """The HTTP server of ``/metrics``, in a daemon thread."""

    server: WSGIServer
    thread: Thread

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on (the port the system chose, for port 0)."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # a thread per request, not joined at close: a stuck scraper cannot hold a worker's exit
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Log nothing: a scrape every few seconds would drown the worker's own lines."""


def metrics_app(registry: CollectorRegistry, scale: ScaleSignal | None = None) -> WSGIApplication:
    """The WSGI app: ``/scale`` from `scale` (when given), every other path the metrics."""
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if scale is None or environ.get("PATH_INFO") != "/scale":
            answer: Iterable[bytes] = metrics(environ, start_response)
            return answer
        status, body = scale.answer(environ.get("QUERY_STRING", ""))
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def serve_metrics(
    port: int,
    address: str = "0.0.0.0",  # noqa: S104 - scraped from outside its container
    registry: CollectorRegistry = REGISTRY,
    scale: ScaleSignal | None = None,
) -> MetricsServer:
    """Serve `registry` on ``http://address:port/metrics`` in a daemon thread.

    Every path but ``/scale`` answers the Prometheus text format; ``/scale`` answers
    `scale`'s JSON document when it is given.

    Raises:
        OSError: the port cannot be bound (in use, or not allowed).
    """
    # the family the address needs (an IPv6 address cannot bind an AF_INET socket), as
    # prometheus_client's own server picks it
    family, _, _, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(_ThreadingServer):
        address_family = family

    server = make_server(
        str(sockaddr[0]), port, metrics_app(registry, scale), Server, handler_class=_QuietHandler
    )
    thread = Thread(target=server.serve_forever, name="aqueue-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
