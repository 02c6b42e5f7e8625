"""Fixtures shared by every test tier.

Integration tests need RabbitMQ at ``AQUEUE_TEST_AMQP_URL`` (default the local broker). When
none answers they are skipped with the reason shown, unless ``AQUEUE_REQUIRE_BROKER=1`` (set by
CI and by ``scripts/test``), which turns the skip into a failure: a green CI always means the
integration tier ran against a real broker.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from hypothesis import settings

from aqueue import TaskQueue
from aqueue._core.topology import TopologyNames

pytest_plugins = ["tests.helpers.fixtures", "tests.helpers.otel"]

# Property tests (tests/unit/test_fuzz_*.py): quick in CI, long on demand with
# HYPOTHESIS_PROFILE=long (docs/testing.md). No deadline: a loaded 2-core CI machine would
# turn slow examples into flaky failures.
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("long", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Run every async test on asyncio (aio-pika is asyncio-only); the unit and conformance
    tiers in debug mode.

    Debug mode reports coroutines never awaited, callbacks that block the loop and
    non-thread-safe calls; with ``filterwarnings = error`` the first of those fails the test.
    It also records a stack for every callback the loop schedules, which slows the
    integration tier's throughput tests (10,000 jobs) past their publish timeouts under
    coverage: those run without it.
    """
    debug = request.node.get_closest_marker("integration") is None
    return ("asyncio", {"debug": debug})


def _broker_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The URL of the RabbitMQ the integration tier talks to."""
    url = os.environ.get("AQUEUE_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    if not _broker_answers(url):
        reason = f"no RabbitMQ answers at {url}"
        if os.environ.get("AQUEUE_REQUIRE_BROKER") == "1":
            pytest.fail(f"{reason} and AQUEUE_REQUIRE_BROKER=1", pytrace=False)
        pytest.skip(reason)
    return url


#: Every prefix of this pytest process starts with this, so the sweep at the end removes
#: only this run's leftovers from a broker that other runs may share.
SESSION_PREFIX = f"aqtest-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def prefix() -> str:
    """A topology prefix unique to one test, so tests never share a queue."""
    return f"{SESSION_PREFIX}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def sweep_shared_broker() -> object:
    """After the run, delete the queues and exchanges this run left on the shared broker.

    Tests clean up after themselves; this catches what a failed or killed test left behind
    (quorum queues cost memory on the broker for as long as they exist).
    """
    yield None
    url = os.environ.get("AQUEUE_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    if _broker_answers(url):
        from tests.helpers.sweep import sweep

        sweep(url, SESSION_PREFIX)


@pytest.fixture
def names(prefix: str) -> TopologyNames:
    """The topology names for this test's prefix."""
    return TopologyNames(prefix)


@pytest.fixture
def memory_queue() -> TaskQueue:
    """A closed `TaskQueue` on its own in-memory broker, prefix ``t`` (so ``t.default``)."""
    return TaskQueue("memory://", prefix="t")


@pytest.fixture
async def amqp_cleanup(amqp_url: str) -> AsyncIterator[list[str]]:
    """A list to append broker queue names to; they are deleted when the test ends."""
    from aqueue._transport.amqp import AmqpTransport

    queues: list[str] = []
    yield queues
    transport = AmqpTransport([amqp_url], connection_name="aqueue-tests-cleanup")
    await transport.connect(timeout=10)
    try:
        for queue in queues:
            await transport.delete_queue(queue)
    finally:
        await transport.aclose()


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the Redis the result-backend tests talk to (database 15 by default)."""
    url = os.environ.get("AQUEUE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2):
            pass
    except OSError:
        reason = f"no Redis answers at {url}"
        if os.environ.get("AQUEUE_REQUIRE_BROKER") == "1":
            pytest.fail(f"{reason} and AQUEUE_REQUIRE_BROKER=1", pytrace=False)
        pytest.skip(reason)
    return url


#: A test that measures something records it with ``record_property("figure:NAME", value)``;
#: the figures are printed at the end of the run (also from pytest-xdist processes, whose own
#: output is not shown), as well as written to a junit report.
FIGURE_PREFIX = "figure:"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the tests recorded (`FIGURE_PREFIX`)."""
    lines = []
    for report in terminalreporter.stats.get("passed", []):
        figures = [
            (name.removeprefix(FIGURE_PREFIX), value)
            for name, value in getattr(report, "user_properties", ())
            if name.startswith(FIGURE_PREFIX)
        ]
        if figures:
            lines.append(report.nodeid)
            lines.extend(f"  {name}: {value}" for name, value in figures)
    if lines:
        terminalreporter.section("figures measured by tests")
        for line in lines:
            terminalreporter.write_line(line)


#: ``parallel`` or ``serial``: which of its two phases `scripts/test` runs (unset: every test).
PHASE = os.environ.get("AQUEUE_TEST_PHASE", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a phase of `scripts/test`, keep only that phase's tests (marker ``serial``).

    Tests that assert timing (a delay's lateness, a fast queue's wait, a rate) run alone,
    after the parallel phase: beside three other test processes on two cores they would
    measure the machine, not aqueue.
    """
    if PHASE not in ("parallel", "serial"):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        serial = item.get_closest_marker("serial") is not None
        (keep if serial == (PHASE == "serial") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
