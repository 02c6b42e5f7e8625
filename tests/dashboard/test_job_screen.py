"""The job screen on real RabbitMQ and Redis: arguments (redacted before they are stored),
every attempt with its error and traceback, the result and the timings."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as redis
from opentelemetry import trace

import aqueue.dashboard
from aqueue.testing import running_worker
from tests.dashboard.conftest import SECRET, WORKER, Flaky
from tests.helpers.dashboard import serving
from tests.helpers.workers import wait_until

pytestmark = pytest.mark.integration


async def raw_state(redis_url: str, flaky: Flaky, job_id: str) -> bytes:
    """The job's state as Redis holds it, byte for byte."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = await client.get(flaky.backend.key("job", job_id))
    finally:
        await client.aclose()
    assert isinstance(raw, bytes)
    return raw


async def test_a_job_that_fails_twice_then_succeeds_shows_three_attempts(
    flaky: Flaky, redis_url: str
) -> None:
    """Attempts 1 and 2 with their ValueErrors, messages and tracebacks, attempt 3 succeeded
    with its result; the arguments as sent, the password redacted; the timings; the same in
    ``GET /api/jobs/{id}``. The password is never in Redis: not in the queued state the
    producer writes, nor in any the worker writes."""
    async with flaky.queue:
        job = await flaky.queue.enqueue(flaky.sign_up, "<script>alert(1)</script>", SECRET)
        queued = await raw_state(redis_url, flaky, job.job_id)
        assert SECRET.encode() not in queued
        assert b"[redacted]" in queued
        async with running_worker(flaky.queue, WORKER) as worker:
            assert await job.result(timeout=30) == "welcome <script>alert(1)</script>"
            await wait_until(worker, lambda stats: stats.succeeded == 1)
        assert flaky.runs == [1, 2, 3]
        stored = await raw_state(redis_url, flaky, job.job_id)
        assert SECRET.encode() not in stored
        state = await flaky.queue.job(job.job_id).state()
        assert state is not None
        assert [(f.attempt, f.type) for f in state.history] == [
            (1, "ValueError"),
            (2, "ValueError"),
        ]
        assert "run 1" in state.history[0].message
        for failure in state.history:  # attempt 1's traceback survived attempts 2 and 3
            assert "raise ValueError" in failure.traceback
        assert state.enqueued_at is not None
        assert state.started_at is not None
        assert state.finished_at is not None
        assert state.enqueued_at <= state.history[0].at <= state.started_at <= state.finished_at

        web = aqueue.dashboard.app(flaky.queue)
        async with serving(web) as url, httpx.AsyncClient(base_url=url) as http:
            page = (await http.get(f"/jobs/{job.job_id}")).text
            api = (await http.get(f"/api/jobs/{job.job_id}")).json()
    assert page.count("<tr data-attempt=") == 3
    for attempt, outcome in ((1, "failed"), (2, "failed"), (3, "succeeded")):
        assert f'<tr data-attempt="{attempt}" class="{outcome}">' in page
    assert "mail server &lt;b&gt;down&lt;/b&gt; (run 1)" in page
    assert "mail server &lt;b&gt;down&lt;/b&gt; (run 2)" in page
    assert page.count("raise ValueError") == 2  # each failure's traceback
    # the result, as JSON (the tojson filter writes < as \u003c: text, never markup)
    assert '<pre class="result">"welcome \\u003cscript\\u003ealert(1)' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "<b>down" not in page
    assert "[redacted]" in page
    assert SECRET not in page
    for timing in ('class="enqueued"', 'class="started"', 'class="finished"'):
        assert timing in page
    assert api["state"]["result"] == "welcome <script>alert(1)</script>"
    assert [a["outcome"] for a in api["state"]["attempts"]] == ["failed", "failed", "succeeded"]
    assert api["state"]["attempts"][1]["type"] == "ValueError"
    assert SECRET not in api["state"]["arguments"]
    assert api["state"]["finished_at"] >= api["state"]["started_at"]


@pytest.mark.usefixtures("spans")  # an SDK tracer provider: messages carry a traceparent
async def test_a_job_that_never_died_links_to_its_trace(flaky: Flaky) -> None:
    """With tracing on, the worker records the trace id of the job's message: the job screen
    of a job that succeeded (no dead letter to read it from) links to that trace."""
    async with flaky.queue:
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            job = await flaky.queue.enqueue(flaky.sign_up, "a@example.com", SECRET)
        async with running_worker(flaky.queue, WORKER):
            await job.result(timeout=30)
        expected = trace.format_trace_id(caller.get_span_context().trace_id)
        web = aqueue.dashboard.app(flaky.queue, trace_url="http://jaeger:16686/trace/{trace_id}")
        async with serving(web) as url, httpx.AsyncClient(base_url=url) as http:
            page = (await http.get(f"/jobs/{job.job_id}")).text
            api = (await http.get(f"/api/jobs/{job.job_id}")).json()
    assert api["state"]["trace_id"] == expected
    assert f'<a class="trace" href="http://jaeger:16686/trace/{expected}">' in page
