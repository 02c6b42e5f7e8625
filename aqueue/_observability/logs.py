"""Structured logs: every line about a job carries its id, task, attempt and queue.

`JobLogFilter` adds the fields ``job_id``, ``task``, ``attempt`` and ``queue`` to each record
logged while a job is current (the worker makes it current from the moment the delivery is
decoded until it is settled, so the retry and dead-letter lines carry them too, and so do the
lines a task logs itself, on any logger, in a thread as well). Fields given with ``extra=``
win. `TextLogFormatter` and `JsonLogFormatter` print them; ``aqueue worker --log-format
text|json`` installs the pair on the root logger.

Nothing here configures logging: that is the application's (or the CLI's) to do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable

from aqueue._tasks.context import job_or_none

#: The job fields, in the order they are printed.
JOB_FIELDS = ("job_id", "task", "attempt", "queue")
#: Trace correlation fields, added when a `JobLogFilter` has a ``trace_ids`` source.
TRACE_FIELDS = ("trace_id", "span_id")

#: What a trace-id source returns: (trace id, span id) as hex, or None outside a span.
TraceIds = Callable[[], tuple[str, str] | None]

# Every attribute a bare LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys()
) | {"message", "asctime"}


class JobLogFilter(logging.Filter):
    """Adds the current job's fields (and, optionally, trace ids) to every record it sees.

    Attach it to a *handler* (``handler.addFilter(JobLogFilter())``), so that records from
    every logger, the application's included, get the fields. It never drops a record.

    Args:
        trace_ids: returns the current (trace id, span id), e.g.
            `aqueue._observability.otel.current_trace_ids`; None: no trace fields.

    Added in 0.1.
    """

    def __init__(self, trace_ids: TraceIds | None = None) -> None:
        super().__init__()
        self._trace_ids = trace_ids

    def filter(self, record: logging.LogRecord) -> bool:
        job = job_or_none()
        if job is not None:
            fields = record.__dict__
            fields.setdefault("job_id", job.job_id)
            fields.setdefault("task", job.task)
            fields.setdefault("attempt", job.attempt)
            fields.setdefault("queue", job.queue)
        if self._trace_ids is not None and "trace_id" not in record.__dict__:
            ids = self._trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class TextLogFormatter(logging.Formatter):
    """``time LEVEL logger: message [job_id=… task=… attempt=… queue=…]``.

    The bracket appears on lines about a job only; a traceback follows it.

    Added in 0.1.
    """

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = super().formatMessage(record)
        fields = record.__dict__
        if "job_id" not in fields:
            return text
        pairs = " ".join(f"{name}={fields.get(name)}" for name in JOB_FIELDS)
        return f"{text} [{pairs}]"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``; then
    ``job_id``, ``task``, ``attempt``, ``queue`` on lines about a job; ``trace_id`` and
    ``span_id`` inside a span (with a filter that adds them); every ``extra=`` field; and
    ``exception`` (the formatted traceback) when there is one. Values that are not JSON are
    written as their ``str()``.

    Added in 0.1.
    """

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
