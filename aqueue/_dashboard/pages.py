"""The dashboard's screens (HTML) and their JSON twins under ``/api/`` (GET: read-only)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from aqueue._client.monitor import schedules_document
from aqueue._core.heartbeats import live_workers
from aqueue._core.topology import validate_name
from aqueue._dashboard.monitor import Letter, Overview
from aqueue._dashboard.present import (
    arguments_text,
    job_attempts,
    stored_arguments_text,
    trace_id,
)
from aqueue.exceptions import ConfigurationError, ConnectionFailed, QueueNotFound

if TYPE_CHECKING:
    from aqueue._dashboard.app import Dashboard

__all__ = ["board_of", "handlers", "routes"]


def board_of(request: Request) -> Dashboard:
    """The dashboard a request is for (the Starlette app's state)."""
    board: Dashboard = request.app.state.dashboard
    return board


_board = board_of

Handler = Callable[[Request], Awaitable[Response]]


async def _overview(request: Request) -> Response:
    board = _board(request)
    return board.render(
        request, "overview.html", **_overview_context(board, await board.monitor.overview())
    )


async def _queues_partial(request: Request) -> Response:
    board = _board(request)
    return board.render(
        request, "_queues.html", **_overview_context(board, await board.monitor.overview())
    )


async def _workers(request: Request) -> Response:
    board = _board(request)
    return board.render(
        request, "workers.html", **_overview_context(board, await board.monitor.overview())
    )


async def _workers_partial(request: Request) -> Response:
    board = _board(request)
    return board.render(
        request, "_workers.html", **_overview_context(board, await board.monitor.overview())
    )


async def _api_overview(request: Request) -> Response:
    board = _board(request)
    return JSONResponse(overview_json(await board.monitor.overview()))


async def _find_job(request: Request) -> Response:
    board = _board(request)
    job_id = request.query_params.get("id", "").strip()
    if job_id:
        return RedirectResponse(request.url_for("job", job_id=job_id), status_code=303)
    return board.render(request, "find.html")


async def _job(request: Request) -> Response:
    board = _board(request)
    context = await _job_context(board, request.path_params["job_id"])
    return board.render(request, "job.html", **context)


async def _api_job(request: Request) -> Response:
    board = _board(request)
    context = await _job_context(board, request.path_params["job_id"])
    state = context["state"]
    return JSONResponse(
        {
            "job_id": context["job_id"],
            "state": None
            if state is None
            else {
                "status": state.status.value,
                "task": state.task,
                "attempt": state.attempt,
                "updated_at": state.updated_at,
                "error": None
                if state.error is None
                else {"type": state.error.type, "message": state.error.message},
                "result": state.result,
                "arguments": state.arguments,
                "attempts": [
                    {
                        "attempt": row.attempt,
                        "outcome": row.outcome,
                        "at": row.at,
                        "type": row.type or None,
                        "message": row.message or None,
                        "traceback": row.traceback or None,
                    }
                    for row in job_attempts(state)
                ],
                "enqueued_at": state.enqueued_at,
                "started_at": state.started_at,
                "finished_at": state.finished_at,
                "trace_id": state.trace_id,
            },
        }
    )


async def _dead_letters(request: Request) -> Response:
    board = _board(request)
    name = _queue(request)
    offset = _int(request, "offset", 0)
    snapshot, pending = await board.monitor.snapshot(name)
    letters = snapshot.page(offset, _PAGE)
    background = BackgroundTask(board.monitor.fill, name) if pending else None
    response = board.render(
        request,
        "deadletters.html",
        queue=name,
        letters=letters,
        snapshot=snapshot,
        offset=offset,
        page_size=_PAGE,
        total=len(snapshot.letters),
    )
    response.background = background
    return response


async def _api_dead_letters(request: Request) -> Response:
    board = _board(request)
    name = _queue(request)
    offset, limit = _int(request, "offset", 0), min(_int(request, "limit", _PAGE), 500)
    snapshot, pending = await board.monitor.snapshot(name)
    return JSONResponse(
        {
            "queue": name,
            "count": snapshot.count,
            "reading": snapshot.reading or pending,
            "offset": offset,
            "dead_letters": [_letter_json(x) for x in snapshot.page(offset, limit)],
        },
        background=BackgroundTask(board.monitor.fill, name) if pending else None,
    )


async def _dead_letter(request: Request) -> Response:
    board = _board(request)
    name = _queue(request)
    job_id = request.path_params["job_id"]
    await board.monitor.session()
    letter = await board.queue.dead_letters(name).find(job_id)
    if letter is None:
        raise HTTPException(404, f"no dead letter of job {job_id} in queue {name}")
    task = board.queue.tasks.get(letter.task or "")
    return board.render(
        request,
        "deadletter.html",
        queue=name,
        letter=letter,
        arguments=arguments_text(task, letter.body),
        trace=board.trace_link(trace_id(letter.headers)),
    )


async def _purge_form(request: Request) -> Response:
    board = _board(request)
    return board.render(request, "purge.html", queue=_queue(request))


async def _schedules(request: Request) -> Response:
    board = _board(request)
    await board.monitor.session()
    document = schedules_document(
        board.queue.schedules, list(board.monitor.schedulers.values()), now=time.time()
    )
    return board.render(request, "schedules.html", document=document)


async def _login(request: Request) -> Response:
    board = _board(request)
    if board.admin.who(request.headers.get("authorization")) is None:
        return Response(
            "the admin credential is needed",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="aqueue dashboard"'},
        )
    return RedirectResponse(request.url_for("overview"), status_code=303)


def routes() -> list[Route]:
    """Every GET route."""
    return [
        Route("/", _overview, name="overview"),
        Route("/partials/queues", _queues_partial, name="queues_partial"),
        Route("/workers", _workers, name="workers"),
        Route("/partials/workers", _workers_partial, name="workers_partial"),
        Route("/jobs", _find_job, name="find_job"),
        Route("/jobs/{job_id}", _job, name="job"),
        Route("/queues/{queue}/dead-letters", _dead_letters, name="dead_letters"),
        Route("/queues/{queue}/dead-letters/{job_id}", _dead_letter, name="dead_letter"),
        Route("/queues/{queue}/purge", _purge_form, name="purge_form"),
        Route("/schedules", _schedules, name="schedules"),
        Route("/login", _login, name="login"),
        Route("/api/overview", _api_overview, name="api_overview"),
        Route("/api/jobs/{job_id}", _api_job, name="api_job"),
        Route("/api/queues/{queue}/dead-letters", _api_dead_letters, name="api_dead_letters"),
    ]


_PAGE = 50


def _queue(request: Request) -> str:
    try:
        return validate_name(request.path_params["queue"])
    except ConfigurationError as exc:
        raise HTTPException(400, str(exc)) from exc


def _int(request: Request, key: str, default: int) -> int:
    text = request.query_params.get(key)
    if text is None:
        return default
    if not text.isdigit():
        raise HTTPException(400, f"{key} must be a whole number >= 0, not {text!r}")
    return int(text)


def _overview_context(board: Dashboard, overview: Overview) -> dict[str, Any]:
    history = {
        row.queue: board.monitor.history.points(row.queue, overview.at)
        for row in overview.view.queues
    }
    beats = {
        worker_id: seen.heartbeat
        for worker_id, seen in live_workers(board.monitor.collector.seen, now=overview.at).items()
    }
    return {"overview": overview, "history": history, "beats": beats}


async def _job_context(board: Dashboard, job_id: str) -> dict[str, Any]:
    session = await board.monitor.session()
    state = None
    if session.states.backend is not None:
        state = await session.states.backend.get_state(job_id)
    found: tuple[str, Letter] | None = None
    for name, snapshot in board.monitor.snapshots.items():
        for letter in snapshot.letters:
            if letter.job_id == job_id:
                found = (name, letter)
    trace = found[1].trace_id if found else None
    if trace is None and state is not None:
        trace = state.trace_id
    return {
        "job_id": job_id,
        "state": state,
        "attempts": job_attempts(state) if state is not None else [],
        "arguments": stored_arguments_text(state.arguments) if state is not None else None,
        "has_backend": session.states.backend is not None,
        "dead": found,
        "trace": board.trace_link(trace) if trace else None,
    }


def _letter_json(letter: Letter) -> dict[str, Any]:
    return {
        "job_id": letter.job_id,
        "task": letter.task,
        "reason": letter.reason,
        "source": letter.source,
        "exception_type": letter.exception_type,
        "exception_message": letter.exception_message,
        "attempts": letter.attempts,
        "last_failed_at": letter.last_failed_at,
    }


def overview_json(overview: Overview) -> dict[str, Any]:
    """``GET /api/overview``: the queues and workers of ``aqueue stats --json``, dead letters."""
    view = overview.view
    return {
        "generated_at": round(overview.at, 3),
        "queues": [
            {
                "queue": row.queue,
                "ready": row.ready,
                "unacked": row.unacked,
                "consumers": row.consumers,
                "dead_letters": overview.dead.get(row.queue),
                "in_per_s": row.in_per_s,
                "out_per_s": row.out_per_s,
                "wait_p95": row.wait_p95,
                "oldest_wait": row.oldest_wait,
            }
            for row in view.queues
        ],
        "workers": [
            {
                "worker_id": w.worker_id,
                "host": w.host,
                "pid": w.pid,
                "queues": list(w.queues),
                "concurrency": w.concurrency,
                "busy_ratio": round(w.busy_ratio, 4),
                "last_seen": round(w.last_seen, 3),
                "decisions": {
                    queue: [decision.to_payload() for decision in decisions]
                    for queue, decisions in w.decisions.items()
                },
            }
            for w in view.workers
        ],
    }


def handlers(board: Dashboard) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Errors as pages (or JSON under ``/api/``): 404, 400, broker unreachable (503)."""

    async def show(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return board.render(
            request, "error.html", status=status, status_code=status, message=message
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - registered for it only
        return await show(request, exc.status_code, str(exc.detail))

    async def missing(request: Request, exc: Exception) -> Response:
        return await show(request, 404, str(exc))

    async def unreachable(request: Request, exc: Exception) -> Response:
        return await show(request, 503, f"the broker did not answer: {exc}")

    return {HTTPException: http_error, QueueNotFound: missing, ConnectionFailed: unreachable}
