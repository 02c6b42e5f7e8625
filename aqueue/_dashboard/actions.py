"""The dashboard's actions: ``POST /api/...`` for replay, purge and cancel.

Each takes JSON (``Content-Type: application/json``) or the dashboard's own form
(``application/x-www-form-urlencoded``); a form is answered with a redirect back to the
page, JSON with JSON. Every one needs the admin credential and, with HTTP Basic, the CSRF
token (`aqueue._dashboard.auth`); a refused one changes nothing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from aqueue._dashboard.pages import _queue
from aqueue._dashboard.pages import board_of as _board

if TYPE_CHECKING:
    from aqueue._dashboard.app import Dashboard

__all__ = ["routes"]

#: Bytes of a request body read at most.
MAX_BODY = 1_000_000


class _Body:
    """A POST body, JSON or form, read as one mapping of lists (form) or values (JSON)."""

    def __init__(self, values: dict[str, Any], *, form: bool) -> None:
        self.values = values
        self.form = form

    def get(self, key: str) -> Any:
        value = self.values.get(key)
        if self.form and isinstance(value, list):
            return value[0] if value else None
        return value

    def all(self, key: str) -> list[Any]:
        value = self.values.get(key)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]


async def _read(request: Request) -> _Body | Response:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return JSONResponse({"error": "request body too large"}, status_code=413)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        return _Body(parse_qs(raw.decode("utf-8", "replace")), form=True)
    if kind in ("application/json", "") and raw.strip():
        try:
            values = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(values, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        return _Body(values, form=False)
    if kind in ("application/json", ""):
        return _Body({}, form=False)
    return JSONResponse({"error": f"unsupported content type {kind!r}"}, status_code=415)


def _refusal(board: Dashboard, request: Request, body: _Body) -> Response | None:
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return _error(request, body, 403, "cross-origin request refused")
    csrf = request.headers.get("x-csrf-token") or body.get("csrf")
    verdict = board.admin.verdict(request.headers.get("authorization"), csrf)
    if verdict == "ok":
        return None
    if verdict == "read-only":
        message = "this dashboard is read-only: start it with --auth or a token to act"
        return _error(request, body, 403, message)
    if verdict == "csrf":
        return _error(request, body, 403, "missing or wrong CSRF token")
    # a form is a browser that can ask its user for Basic credentials; a script (JSON) is
    # told the scheme without a challenge a browser would turn into a prompt
    scheme = "Basic" if body.form and board.admin.basic else "Bearer"
    headers = {"WWW-Authenticate": f'{scheme} realm="aqueue dashboard"'}
    return _error(request, body, 401, "the admin credential is needed", headers)


def _error(
    request: Request,
    body: _Body,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """A refusal: a page for the dashboard's forms, JSON for scripts."""
    if body.form:
        response = _board(request).render(
            request, "error.html", status=status, status_code=status, message=message
        )
        response.headers.update(headers or {})
        return response
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _answer(request: Request, body: _Body, page: str, document: dict[str, Any]) -> Response:
    if body.form:
        return RedirectResponse(page, status_code=303)
    return JSONResponse(document)


async def _replay(request: Request) -> Response:
    board = _board(request)
    name = _queue(request)
    body = await _read(request)
    if isinstance(body, Response):
        return body
    if (refused := _refusal(board, request, body)) is not None:
        return refused
    job_ids = [str(x) for x in [*body.all("job_id"), *body.all("job_ids")] if x]
    everything = body.get("all") in (True, "1", "true")
    if not job_ids and not everything:
        return _error(
            request, body, 400, "name the dead letters (job_id) or ask for all (all=true)"
        )
    await board.monitor.session()
    dlq = board.queue.dead_letters(name)
    result = await dlq.replay(job_ids=None if everything else job_ids)
    board.monitor.forget(name, None if everything else set(job_ids))
    page = str(request.url_for("dead_letters", queue=name))
    return _answer(request, body, page, {"replayed": result.replayed, "skipped": result.skipped})


async def _purge(request: Request) -> Response:
    board = _board(request)
    name = _queue(request)
    body = await _read(request)
    if isinstance(body, Response):
        return body
    if (refused := _refusal(board, request, body)) is not None:
        return refused
    if body.get("confirm") != name:
        message = f"confirm the purge: send confirm={name!r} (the queue's name)"
        return _error(request, body, 400, message)
    await board.monitor.session()
    purged = await board.queue.dead_letters(name).purge()
    board.monitor.forget(name)
    page = str(request.url_for("dead_letters", queue=name))
    return _answer(request, body, page, {"purged": purged})


async def _cancel(request: Request) -> Response:
    board = _board(request)
    job_id = request.path_params["job_id"]
    body = await _read(request)
    if isinstance(body, Response):
        return body
    if (refused := _refusal(board, request, body)) is not None:
        return refused
    await board.monitor.session()
    cancelled = await board.queue.cancel(job_id)
    page = str(request.url_for("job", job_id=job_id))
    return _answer(request, body, page, {"cancelled": cancelled})


async def _csrf(request: Request) -> Response:
    board = _board(request)
    if board.admin.who(request.headers.get("authorization")) is None:
        return JSONResponse({"error": "the admin credential is needed"}, status_code=401)
    return JSONResponse({"csrf_token": board.admin.csrf_token})


def routes() -> list[Route]:
    """Every POST route."""
    return [
        Route("/api/queues/{queue}/replay", _replay, methods=["POST"], name="replay"),
        Route("/api/queues/{queue}/purge", _purge, methods=["POST"], name="purge"),
        Route("/api/jobs/{job_id}/cancel", _cancel, methods=["POST"], name="cancel"),
        Route("/api/csrf", _csrf, name="csrf"),
    ]
