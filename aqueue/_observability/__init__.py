"""Tier 3, how aqueue is seen: the instrumentation seam, job metrics, logs, OpenTelemetry.

The core calls `hooks` and knows nothing else about observability; OpenTelemetry (``otel``)
and Prometheus (``prometheus``) are instrumentations, each the only importer of its library.
"""
