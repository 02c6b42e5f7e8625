"""``aqueue dashboard APP``: serve the operator dashboard with uvicorn.

Every argument is checked before anything connects; the queue is opened on the first
request. Binds to loopback unless ``--host`` says otherwise; read-only unless ``--auth`` or
``--token`` (or their environment variables) give an admin credential.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from aqueue._cli.common import AppArgument, app, console, load_queue
from aqueue.exceptions import ConfigurationError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def dashboard(
    app_path: AppArgument,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on.", min=1, max=65535)] = 8089,
    auth: Annotated[
        str | None,
        typer.Option(
            help="The admin credential, 'user:password' (HTTP Basic): it allows replay, "
            "purge and cancel.",
            envvar="AQUEUE_DASHBOARD_AUTH",
            show_envvar=True,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="An admin bearer token (8 characters or more), for scripts.",
            envvar="AQUEUE_DASHBOARD_TOKEN",
            show_envvar=True,
        ),
    ] = None,
    trace_url: Annotated[
        str | None,
        typer.Option(
            help="A job's trace link, with {trace_id}: http://localhost:16686/trace/{trace_id}",
            envvar="AQUEUE_TRACE_URL",
        ),
    ] = None,
) -> None:
    """Serve the operator dashboard: queues, workers, jobs, dead letters, schedules."""
    try:
        import uvicorn

        from aqueue._dashboard import app as dashboard_app
    except ImportError as exc:
        raise typer.BadParameter(
            f"the dashboard needs its extra: pip install 'aqueue-rabbitmq[dashboard]' ({exc})"
        ) from exc
    queue = load_queue(app_path)
    try:
        web = dashboard_app(queue, auth=auth, token=token, trace_url=trace_url)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not _loopback(host) and auth is None and token is None:
        console.print(
            f"the dashboard listens on {host}, beyond loopback: anyone who reaches it reads it"
        )
    mode = "admin" if auth is not None or token is not None else "read-only"
    console.print(f"aqueue dashboard ({mode}) on http://{host}:{port}/")
    server = uvicorn.Server(
        uvicorn.Config(web, host=host, port=port, lifespan="on", log_level="warning")
    )
    server.run()
