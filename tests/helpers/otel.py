"""OpenTelemetry in tests: an in-memory span exporter behind the global tracer provider.

The global provider can be set once per process, so the first test that asks for `spans`
installs an SDK `TracerProvider` (with a `SimpleSpanProcessor` into one shared
`InMemorySpanExporter`) for the rest of the session; each test that asks gets the exporter
emptied. Registered as a pytest plugin in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

_EXPORTER = InMemorySpanExporter()
_INSTALLED: list[TracerProvider] = []  # the provider, once installed


def install_sdk() -> InMemorySpanExporter:
    """Make an SDK provider feeding the shared in-memory exporter the global one (once)."""
    if not _INSTALLED:  # one global provider per process, as OpenTelemetry allows
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
        _INSTALLED.append(provider)
    return _EXPORTER


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The exporter every finished span goes to, empty at the start of the test."""
    exporter = install_sdk()
    exporter.clear()
    yield exporter
    exporter.clear()


@dataclass(frozen=True)
class Tree:
    """Finished spans, with their parent links resolved."""

    spans: Sequence[ReadableSpan]

    def named(self, name: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
        """The spans called `name` (of `kind`, if given), in start order."""
        found = [s for s in self.spans if s.name == name and (kind is None or s.kind == kind)]
        return sorted(found, key=lambda s: s.start_time or 0)

    def one(self, name: str, kind: SpanKind | None = None) -> ReadableSpan:
        """The only span called `name`."""
        found = self.named(name, kind)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.describe()}"
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        """The span's parent among these spans (None for a root or an unknown parent)."""
        if span.parent is None:
            return None
        for candidate in self.spans:
            context = candidate.context
            if context is not None and context.span_id == span.parent.span_id:
                return candidate
        return None

    def ancestors(self, span: ReadableSpan) -> list[ReadableSpan]:
        """The span's parent, its parent's parent, ... among these spans."""
        found = []
        parent = self.parent(span)
        while parent is not None:
            found.append(parent)
            parent = self.parent(parent)
        return found

    def trace_ids(self) -> set[int]:
        """The distinct trace ids."""
        return {s.context.trace_id for s in self.spans if s.context is not None}

    def describe(self) -> str:
        """One line per span: name, kind, parent name (for assertion messages)."""
        lines = []
        for span in sorted(self.spans, key=lambda s: s.start_time or 0):
            parent = self.parent(span)
            lines.append(
                f"{span.name} [{span.kind.name}] <- {parent.name if parent else None} "
                f"{span.status.status_code.name} {dict(span.attributes or {})}"
            )
        return "\n".join(lines)
