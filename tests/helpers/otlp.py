"""A tiny OTLP/HTTP receiver on 127.0.0.1, as Jaeger or a collector runs one.

It accepts ``POST /v1/traces`` and ``POST /v1/metrics`` with protobuf bodies (gzip or not),
decodes them with opentelemetry-proto and keeps what arrived; anything else gets a 404. It
serves in a daemon thread until `close`.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived, with its resource's ``service.name``."""

    service: str
    span: Span

    @property
    def attributes(self) -> dict[str, object]:
        """The span's attributes as plain values."""
        return _plain(self.span.attributes)


def _plain(attributes: Iterable[KeyValue]) -> dict[str, object]:
    values: dict[str, object] = {}
    for item in attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind) if kind else None
    return values


@dataclass
class Receiver:
    """What an `otlp_receiver` got so far (appended from its server thread)."""

    endpoint: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    metric_names: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)

    def spans_named(self, name: str) -> list[ReceivedSpan]:
        """The spans called `name`, in arrival order."""
        return [s for s in list(self.spans) if s.span.name == name]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            receiver.requests.append(f"{self.path} {self.headers.get('Content-Type')}")
            if self.path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = str(_plain(resource_spans.resource.attributes).get("service.name"))
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend(ReceivedSpan(service, s) for s in scope_spans.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                metrics = ExportMetricsServiceRequest.FromString(body)
                for resource_metrics in metrics.resource_metrics:
                    for scope_metrics in resource_metrics.scope_metrics:
                        receiver.metric_names.update(m.name for m in scope_metrics.metrics)
                reply = ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            return  # quiet

    return Handler


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """Serve on a free port of 127.0.0.1; ``receiver.endpoint`` is its base URL."""
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    receiver.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
