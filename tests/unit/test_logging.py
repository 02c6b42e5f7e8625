"""Structured logs: the job fields on every line about a job, as text or JSON."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from aqueue import JobContext, JobLogFilter, JsonLogFormatter, TaskQueue, TextLogFormatter
from aqueue._tasks.context import reset_current_job, set_current_job
from aqueue.testing import running_worker
from tests.helpers.jobs import publish_job
from tests.helpers.workers import wait_until


def _job(attempt: int = 2) -> JobContext:
    return JobContext(
        job_id="j1",
        task="tasks.send",
        queue="emails",
        attempt=attempt,
        args=(),
        kwargs={},
        enqueued_at=0.0,
        due_at=0.0,
        started_at=0.0,
    )


def _record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, message, args or ("you",), None)
    record.__dict__.update(extra)
    return record


def _fields(record: logging.LogRecord, *names: str) -> tuple[object, ...]:
    return tuple(vars(record)[name] for name in names)


def _filtered(record: logging.LogRecord, job: JobContext | None) -> logging.LogRecord:
    token = set_current_job(job) if job is not None else None
    try:
        assert JobLogFilter().filter(record)
    finally:
        if token is not None:
            reset_current_job(token)
    return record


def test_the_filter_adds_the_current_jobs_fields() -> None:
    """Inside a job: job_id, task, attempt and queue."""
    record = _filtered(_record(), _job())
    assert _fields(record, "job_id", "task", "attempt", "queue") == (
        "j1",
        "tasks.send",
        2,
        "emails",
    )


def test_the_filter_adds_nothing_outside_a_job() -> None:
    """Outside a job the record is untouched (and never dropped)."""
    record = _filtered(_record(), None)
    assert "job_id" not in vars(record)


def test_fields_given_with_extra_win() -> None:
    """``extra=`` is more precise than the current job (a dead letter names its own)."""
    record = _filtered(_record(job_id="given"), _job())
    assert _fields(record, "job_id", "task") == ("given", "tasks.send")


def test_the_filter_adds_trace_ids_from_its_source() -> None:
    """With a trace-id source, trace_id and span_id; none when it returns None."""
    record = _record()
    JobLogFilter(trace_ids=lambda: ("t" * 32, "s" * 16)).filter(record)
    assert _fields(record, "trace_id", "span_id") == ("t" * 32, "s" * 16)
    record = _record()
    JobLogFilter(trace_ids=lambda: None).filter(record)
    assert "trace_id" not in vars(record)


def test_text_lines_end_with_the_job_fields_before_any_traceback() -> None:
    """``… message [job_id=… task=… attempt=… queue=…]`` then the traceback."""
    formatter = TextLogFormatter("%(levelname)s %(name)s: %(message)s")
    assert formatter.format(_record()) == "INFO app: hello you"
    record = _filtered(_record(), _job())
    assert (
        formatter.format(record)
        == "INFO app: hello you [job_id=j1 task=tasks.send attempt=2 queue=emails]"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = formatter.format(record).splitlines()
    assert lines[0].endswith("queue=emails]")
    assert lines[-1] == "ValueError: boom"


def test_json_lines_are_one_object_each() -> None:
    """time, level, logger, message, the job fields, extra fields, and the exception."""
    formatter = JsonLogFormatter()
    record = _filtered(_record(order=7, when=object()), _job())
    try:
        raise KeyError("k")
    except KeyError:
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["time"].endswith("Z")
    assert entry["level"] == "INFO"
    assert entry["logger"] == "app"
    assert entry["message"] == "hello you"
    assert (entry["job_id"], entry["task"], entry["attempt"], entry["queue"]) == (
        "j1",
        "tasks.send",
        2,
        "emails",
    )
    assert entry["order"] == 7
    assert entry["when"].startswith("<object object")
    assert entry["exception"].splitlines()[-1] == "KeyError: 'k'"


def test_json_lines_outside_a_job_have_no_job_fields() -> None:
    """Only what is known: no nulls for job fields on worker lines."""
    entry = json.loads(JsonLogFormatter().format(_record("started %s")))
    assert set(entry) == {"time", "level", "logger", "message"}


async def test_the_workers_lines_about_a_job_carry_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The retry and dead-letter lines (logged after the run) and a task's own lines."""
    caplog.handler.addFilter(JobLogFilter())
    caplog.set_level(logging.INFO)
    queue = TaskQueue("memory://", prefix="t", telemetry=False)

    @queue.task(name="flaky", retries=1, backoff=0.01, jitter=0)
    async def flaky() -> None:
        logging.getLogger("app").info("working")
        raise RuntimeError("nope")

    async with queue.session() as session:
        job = await queue.enqueue(flaky)
        await publish_job(session, "ghost", job_id="ghost-id")
        async with running_worker(queue) as worker:
            await wait_until(worker, lambda s: s.dead_lettered == 2)
    about_flaky = [r for r in caplog.records if getattr(r, "job_id", None) == job.job_id]
    assert [(r.name, vars(r)["attempt"]) for r in about_flaky] == [
        ("app", 1),
        ("aqueue.worker", 1),  # retrying
        ("app", 2),
        ("aqueue.worker", 2),  # dead-lettered
    ]
    assert all(_fields(r, "task", "queue") == ("flaky", "default") for r in about_flaky)
    [ghost] = [r for r in caplog.records if getattr(r, "job_id", None) == "ghost-id"]
    assert _fields(ghost, "task", "attempt", "queue") == ("ghost", 1, "default")
    assert "dead-lettered" in ghost.getMessage()
