"""The operator dashboard (needs ``pip install 'aqueue-rabbitmq[dashboard]'``).

``aqueue dashboard APP`` serves it; `app` makes it to mount in your own ASGI application::

    from fastapi import FastAPI
    import aqueue.dashboard

    web = FastAPI()
    web.mount("/aqueue", aqueue.dashboard.app(queue, token=os.environ["AQUEUE_DASHBOARD_TOKEN"]))

See the dashboard page of the docs for the screens and the security model.
"""

from __future__ import annotations

try:
    from aqueue._dashboard import app
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        f"aqueue.dashboard needs the dashboard extra: pip install 'aqueue-rabbitmq[dashboard]' "
        f"({exc})"
    ) from exc

__all__ = ["app"]
