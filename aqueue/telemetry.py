"""OpenTelemetry for aqueue: a span for every publish and every job, and job metrics.

Imports the OpenTelemetry *API* only; the application (or ``aqueue worker --otel``) picks the
SDK. See the observability page for what is traced and measured, and how.
"""

from aqueue._observability.otel import (
    HEADERS,
    Telemetry,
    current_trace_ids,
    extract_context,
    inject_context,
    job_attributes,
    process_attributes,
    publish_attributes,
    workflow_id,
)

__all__ = [
    "HEADERS",
    "Telemetry",
    "current_trace_ids",
    "extract_context",
    "inject_context",
    "job_attributes",
    "process_attributes",
    "publish_attributes",
    "workflow_id",
]
