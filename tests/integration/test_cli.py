"""Issue 2: ``aqueue worker`` refuses bad input before it connects, with exit code 2.

Every worker here points at a port where nothing listens: a worker that tried to connect would
be refused and exit 1 (with "connection refused"), so exit 2 shows that it never needed the
broker.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers.rabbit_node import free_ports
from tests.helpers.worker_process import ROOT, aqueue_command, subprocess_env

pytestmark = pytest.mark.integration

APP = "tests.integration.apps.jobs:queue"


def run_worker(*args: str, connect_timeout: float) -> tuple[int, str, float]:
    """Run ``aqueue worker ARGS`` against a dead port; return its exit code, output and seconds."""
    [port] = free_ports(1)
    env = subprocess_env(
        {
            "AQUEUE_TEST_URL": f"amqp://guest:guest@127.0.0.1:{port}/",
            "AQUEUE_TEST_CONNECT_TIMEOUT": str(connect_timeout),
        }
    )
    began = time.monotonic()
    done = subprocess.run(
        aqueue_command("worker", *args),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=connect_timeout + 30,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - began


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["tests.integration.apps.jobs"],
            "'tests.integration.apps.jobs' must look like 'package.module:attribute'",
            id="no-attribute",
        ),
        pytest.param(
            [":queue"], "':queue' must look like 'package.module:attribute'", id="no-module"
        ),
        pytest.param(
            ["tests.integration.apps.missing:queue"],
            "cannot import 'tests.integration.apps.missing': No module named",
            id="missing-module",
        ),
        pytest.param(
            ["tests.integration.apps.broken:queue"],
            "cannot import 'tests.integration.apps.broken': RuntimeError: "
            "AQUEUE_SETTINGS is not set",
            id="module-raises",
        ),
        pytest.param(
            ["tests.integration.apps.jobs:not_a_queue"],
            "'tests.integration.apps.jobs:not_a_queue' is str, not an aqueue.TaskQueue",
            id="not-a-queue",
        ),
        pytest.param(
            ["tests.integration.apps.jobs:nothing_here"],
            "module 'tests.integration.apps.jobs' has no attribute 'nothing_here'",
            id="missing-attribute",
        ),
        pytest.param([APP, "--concurrency", "0"], "'--concurrency'", id="concurrency-0"),
        pytest.param([APP, "--prefetch", "0"], "'--prefetch'", id="prefetch-0"),
        pytest.param([APP, "--grace", "-1"], "'--grace'", id="negative-grace"),
        pytest.param([APP, "-Q", "bad queue"], "queue name 'bad queue'", id="bad-queue-name"),
        pytest.param(
            [APP, "-Q", "emails:50,reports:0"],
            "the concurrency in 'reports:0' must be an integer >= 1",
            id="queue-concurrency-0",
        ),
        pytest.param(
            [APP, "-Q", "reports:4:thread=4"],
            "unknown option 'thread' for queue 'reports:4:thread=4'; did you mean 'threads'?",
            id="queue-unknown-option",
        ),
        pytest.param([APP, "--log-level", "LOUD"], "unknown log level 'LOUD'", id="log-level"),
    ],
)
def test_bad_input_fails_before_connecting_with_exit_code_2(args: list[str], message: str) -> None:
    """Bad CLI input exits 2 with a message naming the problem, without touching the broker."""
    code, output, seconds = run_worker(*args, connect_timeout=30)
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output
    assert "connection refused" not in output
    assert seconds < 20


def test_good_input_with_no_broker_exits_1_once_refused() -> None:
    """Control: good input does try the broker and exits 1 when its port refuses connections."""
    code, output, seconds = run_worker(APP, connect_timeout=1)
    assert code == 1, output
    assert "connection refused" in output
    assert seconds >= 1
