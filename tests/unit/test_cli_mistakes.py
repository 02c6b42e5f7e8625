"""Issue 12: mistakes that used to pass silently fail at the edge, with a clear message, exit 2.

None of these needs a broker: each is refused before anything connects (the app's queue is
``memory://``, which a worker that went on would happily consume from for ever).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

import aqueue._cli.worker as cli_worker
from aqueue._cli import app
from aqueue._worker.worker import Worker

WIDE_PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

APP_SOURCE = """
import aqueue

queue = aqueue.TaskQueue("memory://")


@queue.task(queue="emails")
async def send() -> None: ...


@queue.task
async def other() -> None: ...
"""

TYPO_SOURCE = """
import aqueue

queue = aqueue.TaskQueue("memory://")


@queue.task(retrys=3)
async def send() -> None: ...
"""


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two app modules, importable: ``mistakes_app`` and ``mistakes_typo``."""
    (tmp_path / "mistakes_app.py").write_text(APP_SOURCE)
    (tmp_path / "mistakes_typo.py").write_text(TYPO_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=WIDE_PLAIN)
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


@pytest.mark.usefixtures("apps")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["worker", "mistakes_app:queue", "-Q", "emials"],
            "no task of the app uses queue 'emials' (did you mean 'emails'?); its tasks use "
            "'default', 'emails'. Give --declare to consume from it anyway",
            id="unknown-queue",
        ),
        pytest.param(
            ["worker", "mistakes_app:queue", "-Q", ""], "'' names no queue", id="empty-queue"
        ),
        pytest.param(
            ["worker", "mistakes_app:queue", "-Q", " , "], "' , ' names no queue", id="commas"
        ),
        pytest.param(
            ["worker", "mistakes_app:app"],
            "module 'mistakes_app' has no attribute 'app'; it has 'queue'",
            id="missing-attribute",
        ),
        pytest.param(
            ["worker", "mistakes_app:queu"],
            "module 'mistakes_app' has no attribute 'queu'; did you mean mistakes_app:queue?",
            id="misspelt-attribute",
        ),
        pytest.param(
            ["worker", "mistakes_app:send"],
            "'mistakes_app:send' is Task, not an aqueue.TaskQueue; it has 'queue'",
            id="not-a-queue",
        ),
        pytest.param(
            ["worker", "mistakes_app:queue", "--loop", "trio"],
            "unknown event loop 'trio': asyncio or uvloop",
            id="unknown-loop",
        ),
        pytest.param(
            ["queues", "mistakes_app:nothing"],
            "module 'mistakes_app' has no attribute 'nothing'",
            id="queues-missing-attribute",
        ),
    ],
)
def test_a_silent_mistake_now_exits_2_naming_it(args: list[str], message: str) -> None:
    """Each mistake is refused before connecting, with exit 2 and a message that names it."""
    code, output = invoke(*args)
    assert code == 2, output
    assert message in output


def test_a_misspelt_task_option_points_at_the_apps_line(apps: Path) -> None:
    """``@queue.task(retrys=3)``: the error names the app's file and line, not aqueue's."""
    code, output = invoke("worker", "mistakes_typo:queue")
    assert code == 2, output
    assert "unknown option 'retrys' for @queue.task(); did you mean 'retries'?" in output
    assert f"(at {apps / 'mistakes_typo.py'}:7)" in output
    assert "aqueue/_core" not in output


def test_declare_consumes_from_a_queue_no_task_names(
    apps: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--declare`` is the explicit way to consume from a queue only with_options names."""
    ran: list[Worker] = []
    monkeypatch.setattr(cli_worker, "_observed_run", lambda worker, **_: ran.append(worker))
    monkeypatch.setattr(cli_worker, "configure_logging", lambda *_: None)  # the test's own
    code, output = invoke("worker", "mistakes_app:queue", "-Q", "emails-bulk", "--declare")
    assert code == 0, output
    [worker] = ran
    assert worker.settings.queues == ("emails-bulk",)


def test_loop_uvloop_runs_the_worker_on_uvloop(apps: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--loop uvloop`` hands anyio ``use_uvloop``; the default asyncio loop, nothing."""
    options: list[object] = []
    monkeypatch.setattr(
        cli_worker, "_observed_run", lambda worker, **kw: options.append(kw["backend_options"])
    )
    monkeypatch.setattr(cli_worker, "configure_logging", lambda *_: None)
    assert invoke("worker", "mistakes_app:queue", "--loop", "uvloop")[0] == 0
    assert invoke("worker", "mistakes_app:queue")[0] == 0
    assert options == [{"use_uvloop": True}, {}]


def test_loop_uvloop_without_uvloop_says_how_to_install_it(
    apps: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    code, output = invoke("worker", "mistakes_app:queue", "--loop", "uvloop")
    assert code == 2, output
    assert "uvloop is not installed: pip install 'aqueue-rabbitmq[speed]'" in output
