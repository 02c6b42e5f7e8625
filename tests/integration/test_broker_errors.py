"""Issue 12: a broker that cannot be used is reported in one line, quickly, with what to check.

A closed port, a wrong password and an unknown vhost, each through the CLI (``aqueue dlq list
--url``: one line, exit 1, within 3 s) and through the library (`ConnectionFailed` naming the
cause; the wrong password and the vhost are not retried).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable

import anyio
import pytest
from yarl import URL

from aqueue import TaskQueue
from aqueue.exceptions import ConnectionFailed
from tests.helpers.rabbit_node import free_ports
from tests.helpers.worker_process import ROOT, aqueue_command, subprocess_env

pytestmark = pytest.mark.integration


def _closed_port(amqp_url: str) -> str:
    [port] = free_ports(1)
    return str(URL(amqp_url).with_port(port))


def _wrong_password(amqp_url: str) -> str:
    return str(URL(amqp_url).with_password(f"not-{uuid.uuid4().hex[:6]}"))


def _unknown_vhost(amqp_url: str) -> str:
    return str(URL(amqp_url).with_path(f"/no-such-vhost-{uuid.uuid4().hex[:6]}"))


CASES = [
    pytest.param(_closed_port, "connection refused", id="closed-port"),
    pytest.param(_wrong_password, "authentication failed for user", id="wrong-password"),
    pytest.param(_unknown_vhost, "refused to open vhost 'no-such-vhost-", id="unknown-vhost"),
]


@pytest.mark.parametrize(("broken", "cause"), CASES)
def test_cli_reports_a_broker_failure_in_one_line_within_3_s(
    amqp_url: str, broken: Callable[[str], str], cause: str
) -> None:
    """At most three lines, exit 1, within 3 s (the interpreter's start included, unless a
    loaded machine slows that), naming the cause; no aio-pika retry chatter, no traceback,
    no password."""
    url = broken(amqp_url)
    env = subprocess_env({"COLUMNS": "80"})

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
        began = time.monotonic()
        done = subprocess.run(
            aqueue_command("dlq", *args),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done, time.monotonic() - began

    # the interpreter's start and aqueue's imports, which a loaded machine slows: measured
    # with `dlq list --help` (the same imports, no connection) and allowed for on top
    _, start_up = run("list", "--help")
    done, seconds = run("list", "default", "--url", url)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert len(output.strip().splitlines()) <= 3, output
    assert output.startswith("error: could not connect to "), output
    assert cause in output
    assert "Reconnecting" not in output
    assert "Traceback" not in output
    assert f":{URL(url).password}@" not in output
    assert seconds < 3 or seconds - start_up < 2, (seconds, start_up, output)


@pytest.mark.parametrize(
    ("broken", "cause", "within"),
    [
        pytest.param(_wrong_password, "authentication failed for user 'guest'", 0.9, id="pw"),
        pytest.param(_unknown_vhost, "rabbitmqctl list_permissions -p no-such", 0.9, id="vhost"),
        pytest.param(_closed_port, "is RabbitMQ running", 2.5, id="closed-port"),
    ],
)
async def test_connection_failed_names_the_cause_without_retrying_a_verdict(
    amqp_url: str, broken: Callable[[str], str], cause: str, within: float
) -> None:
    """`ConnectionFailed` says what failed; a refused login or vhost fails on the first
    attempt (a retry would come after the 1 s reconnect interval), well before the 10 s
    connect timeout; a port that refuses connections fails after about a second of that."""
    queue = TaskQueue(broken(amqp_url), name="broker-errors", telemetry=False)
    began = anyio.current_time()
    with pytest.raises(ConnectionFailed, match="could not connect to") as caught:
        await queue.open()
    assert anyio.current_time() - began < within
    assert cause in str(caught.value)
