"""The dashboard's ASGI application: `app(queue)`, a Starlette app to serve or to mount."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from aqueue._client.queue import TaskQueue
from aqueue._core.checks import is_number
from aqueue._dashboard import actions, pages
from aqueue._dashboard.auth import Admin, parse_auth
from aqueue._dashboard.history import sparkline
from aqueue._dashboard.monitor import Monitor
from aqueue._dashboard.present import fmt_time
from aqueue.exceptions import ConfigurationError

__all__ = ["Dashboard", "app"]

HERE = Path(__file__).parent
#: Dead letters on one page.
PAGE_SIZE = 50
#: Seconds between the live screens' refreshes.
REFRESH = 2.0


class Dashboard:
    """What every handler needs: the monitor, the admin credential, the templates, settings."""

    def __init__(
        self, queue: TaskQueue, admin: Admin, *, trace_url: str | None, refresh: float
    ) -> None:
        self.queue = queue
        self.monitor = Monitor(queue)
        self.admin = admin
        self.trace_url = trace_url
        self.refresh = refresh
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value from a message is text, never markup
            undefined=jinja2.StrictUndefined,
        )
        env.filters["when"] = fmt_time
        env.filters["spark"] = sparkline
        env.filters["num"] = _num
        self.templates = Jinja2Templates(env=env)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        """Render a template with what every page has."""
        context.update(
            request=request,
            admin_enabled=self.admin.enabled,
            basic_enabled=self.admin.basic is not None,
            csrf=self.admin.csrf_token if self.admin.enabled else "",
            refresh_ms=int(self.refresh * 1000),
            app_name=self.queue.name,
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def trace_link(self, trace_id: str | None) -> str | None:
        """The trace URL of a trace id, from the ``trace_url`` template; None without."""
        if trace_id is None or self.trace_url is None:
            return None
        return self.trace_url.replace("{trace_id}", trace_id)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}"


def _check_trace_url(trace_url: object) -> str | None:
    if trace_url is None:
        return None
    if not isinstance(trace_url, str) or "{trace_id}" not in trace_url:
        raise ConfigurationError(
            "trace_url must contain '{trace_id}', e.g. 'http://localhost:16686/trace/{trace_id}'"
        )
    if not re.match(r"https?://", trace_url):
        raise ConfigurationError(f"trace_url must be an http(s) URL, not {trace_url!r}")
    return trace_url


def app(
    queue: TaskQueue,
    *,
    auth: str | None = None,
    token: str | None = None,
    trace_url: str | None = None,
    refresh: float = REFRESH,
) -> Starlette:
    """The dashboard of `queue` as an ASGI app: serve it, or mount it in your own.

    ``app.mount("/aqueue", aqueue.dashboard.app(queue))`` in FastAPI or Starlette. It opens
    `queue` on the first request (an application that has it open already shares it).
    Read-only unless `auth` or `token` is given; see the dashboard page for the security
    model.

    Args:
        queue: the app's TaskQueue.
        auth: the admin credential for HTTP Basic, ``"user:password"``.
        token: the admin bearer token (8 characters or more).
        trace_url: a job's trace link, with ``{trace_id}`` in it (Jaeger:
            ``http://localhost:16686/trace/{trace_id}``).
        refresh: seconds between the live screens' refreshes.

    Raises:
        ConfigurationError: a bad argument.
    """
    given: object = queue  # run-time input: not every caller runs mypy
    if not isinstance(given, TaskQueue):
        raise ConfigurationError(f"app() needs an aqueue.TaskQueue, not {queue!r}")
    admin = Admin(basic=parse_auth(auth) if auth is not None else None, token=token)
    if not is_number(refresh, at_least=0.1, at_most=3600):
        raise ConfigurationError(f"refresh must be 0.1 to 3600 seconds, not {refresh!r}")
    dashboard = Dashboard(queue, admin, trace_url=_check_trace_url(trace_url), refresh=refresh)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dashboard.monitor.aclose()

    routes = [
        *pages.routes(),
        *actions.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    web = Starlette(routes=routes, lifespan=lifespan, exception_handlers=pages.handlers(dashboard))
    web.state.dashboard = dashboard
    return web
