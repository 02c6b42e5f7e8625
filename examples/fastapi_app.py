"""A FastAPI app that enqueues jobs and workflows and reports on them.

Run it (with RabbitMQ and Redis up) in two terminals::

    aqueue worker examples.tasks:queue
    uvicorn examples.fastapi_app:app

then::

    curl -X POST localhost:8000/jobs -H 'content-type: application/json' -d '{"name": "q3"}'
    curl localhost:8000/jobs/<job_id>

The TaskQueue opens in the app's lifespan (`aqueue.contrib.fastapi.lifespan`): one connection
to RabbitMQ and one Redis client for the whole process; endpoints get it as a dependency
(`AqueueDependency`). The configuration comes from the environment (see `examples.tasks`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from aqueue import JobStatus, chord
from aqueue.contrib.fastapi import AqueueDependency, lifespan
from examples.tasks import count_words, queue, report, total

app = FastAPI(title="aqueue example", lifespan=lifespan(queue))


class ReportRequest(BaseModel):
    """What to build: a report in a number of steps."""

    name: str = Field(min_length=1, max_length=100)
    steps: int = Field(default=5, ge=1, le=100)
    seconds_per_step: float = Field(default=0.2, ge=0, le=10)
    fail: bool = False


class WordCountRequest(BaseModel):
    """Texts to count the words of, in parallel, then add up."""

    texts: list[str] = Field(min_length=1, max_length=1000)


class Accepted(BaseModel):
    """A job was enqueued: where to look for it."""

    job_id: str
    url: str


class JobError(BaseModel):
    """Why a job failed, as raised in the worker."""

    type: str
    message: str
    traceback: str


class JobView(BaseModel):
    """What is known about a job."""

    job_id: str
    status: JobStatus
    progress: Any = None
    result: Any = None
    error: JobError | None = None


def _accepted(job_id: str) -> Accepted:
    return Accepted(job_id=job_id, url=app.url_path_for("get_job", job_id=job_id))


@app.post("/jobs", status_code=202)
async def create_job(request: ReportRequest, queue: AqueueDependency) -> Accepted:
    """Enqueue a report; returns once RabbitMQ has confirmed the job."""
    job = await queue.enqueue(
        report, request.name, request.steps, request.seconds_per_step, request.fail
    )
    return _accepted(job.job_id)


@app.post("/workflows", status_code=202)
async def create_workflow(request: WordCountRequest, queue: AqueueDependency) -> Accepted:
    """Start a chord: count each text's words in parallel, then add the counts up.

    The id returned is the callback's: its result is the workflow's.
    """
    job = await queue.enqueue(chord([count_words.s(text) for text in request.texts], total.s()))
    return _accepted(job.job_id)


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, queue: AqueueDependency) -> JobView:
    """The job's status, its last progress, and its result or error (404 if unknown)."""
    state = await queue.job(job_id).state()
    if state is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id} (unknown, or expired)")
    error = state.error
    return JobView(
        job_id=job_id,
        status=state.status,
        progress=state.progress,
        result=state.result,
        error=None
        if error is None
        else JobError(type=error.type, message=error.message, traceback=error.traceback),
    )
