"""What telemetry costs a worker: the plain drain with tracing off, and with an SDK tracing.

The ``plain`` scenario is the default (`aqueue.telemetry.Telemetry` through the API, no SDK:
its no-op tracer); ``untraced`` turns the hooks off (``telemetry=False``); ``traced`` gives the
same Telemetry an SDK `TracerProvider` with a `BatchSpanProcessor` and an exporter that drops
the spans, so what is measured is aqueue's spans and the SDK's span machinery, not a network.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from aqueue.telemetry import Telemetry
from benchmarks._aqueue import _drain

Figures = dict[str, float]


class _DropExporter(SpanExporter):
    """Counts the spans it is given and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def untraced(url: str, count: int) -> Figures:
    """No instrumentation hooks at all."""
    return await _drain(url, count, "untraced", io=False, instrumentation=())


async def traced(url: str, count: int) -> Figures:
    """Every job a CONSUMER span, batched to an exporter that drops them."""
    exporter = _DropExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    try:
        figures = await _drain(
            url,
            count,
            "traced",
            io=False,
            instrumentation=(Telemetry(tracer_provider=provider),),
        )
    finally:
        provider.shutdown()  # exports what is still batched
    # prefill publishes one span per job, the drain one more
    if exporter.spans < 2 * count:
        print(f"  !! traced: {exporter.spans} spans exported, expected {2 * count}")
    return figures
