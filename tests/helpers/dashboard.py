"""Serving the dashboard in a test, and driving Debian's chromium at it with Playwright.

`serving` runs the app under uvicorn on a free loopback port in the test's own event loop;
`browser` launches ``/usr/bin/chromium`` (``apt-get install chromium``: scripts/setup does
it), never a downloaded browser. A missing chromium fails the test with the fix, the way
``AQUEUE_REQUIRE_BROKER`` turns a missing broker into a failure: a browser test that skips
where the browser is missing would prove nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import uvicorn
from playwright.async_api import Browser, async_playwright
from starlette.types import ASGIApp

from tests.helpers.polling import wait_for

CHROMIUM = Path(os.environ.get("AQUEUE_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"


def free_port() -> int:
    """A TCP port nothing listens on now, on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def require_chromium() -> None:
    """Fail the test, with the fix, when Debian's chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"no chromium at {CHROMIUM}: the browser tests need Debian's "
            "(apt-get install -y chromium; scripts/setup installs it)",
            pytrace=False,
        )


@asynccontextmanager
async def serving(web: ASGIApp) -> AsyncIterator[str]:
    """Serve `web` on a free loopback port for the block; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(web, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    )
    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        # uvicorn has no event for it
        await wait_for(lambda: server.started, timeout=10, what="uvicorn to listen")
        try:
            yield f"http://127.0.0.1:{port}"
        except Exception as exc:  # noqa: BLE001 - the server stops cleanly first, then it is raised
            failure = exc
        server.should_exit = True
    if failure is not None:
        raise failure


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, for the block."""
    require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()
