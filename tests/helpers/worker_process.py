"""``aqueue worker`` as a real subprocess, for tests that kill or signal it.

The process runs ``sys.executable -m aqueue worker APP ...`` from the repository root (so
``tests.integration.apps`` imports), with its output in a log file. Only the process this
helper started is ever signalled, by its PID; `cleanup` (call it in ``finally``) SIGKILLs it if
it still runs and reaps it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

from tests.helpers.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the subprocess's working directory."""
STARTED_LINE = "worker consuming from"
"""What the worker logs (INFO) once it consumes from all its queues."""


def aqueue_command(*args: str) -> list[str]:
    """The argv of ``python -m aqueue ARGS`` with this interpreter."""
    return [sys.executable, "-m", "aqueue", *args]


def subprocess_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, with wide, plain terminal output."""
    return {
        **os.environ,
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def apps_env(url: str, prefix: str, out: Path | None = None) -> dict[str, str]:
    """What the apps of ``tests/integration/apps`` read: the broker, the prefix, the record file."""
    env = {"AQUEUE_TEST_URL": url, "AQUEUE_TEST_PREFIX": prefix}
    if out is not None:
        env["AQUEUE_TEST_OUT"] = str(out)
    return env


class WorkerProcess:
    """One ``aqueue worker`` subprocess.

    Args:
        app: ``module:attribute`` of the TaskQueue.
        args: more command-line arguments (``--concurrency 4``, ...).
        env: environment variables added to this process's.
        log: the file its stdout and stderr are appended to.
    """

    def __init__(self, app: str, args: Sequence[str], *, env: Mapping[str, str], log: Path) -> None:
        self.argv = aqueue_command("worker", app, *args)
        self.env = subprocess_env(env)
        self.log = log
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch the process (it still has to connect: see `wait_started`)."""
        if self._popen is not None:
            raise RuntimeError("this WorkerProcess was started already; make a new one")
        with self.log.open("ab") as out:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The started process."""
        if self._popen is None:
            raise RuntimeError("the WorkerProcess was not started")
        return self._popen

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.popen.pid

    def output(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output_tail(self, lines: int = 30) -> str:
        """The end of the output, for assertion messages."""
        return "--- worker output:\n" + "\n".join(self.output().splitlines()[-lines:])

    async def wait_output(self, text: str, *, timeout: float = 20.0) -> None:
        """Wait until the output contains `text`.

        Raises:
            TimeoutError: it did not appear in time, or the process exited first.
        """

        def seen() -> bool:
            if text in self.output():
                return True
            if self.popen.poll() is not None:
                raise TimeoutError(
                    f"the worker exited ({self.popen.returncode}) before writing {text!r}\n"
                    + self.output_tail()
                )
            return False

        await wait_for(seen, timeout=timeout, what=repr(text), details=self.output_tail)

    async def wait_started(self, *, timeout: float = 20.0) -> None:
        """Wait until the worker consumes from its queues."""
        await self.wait_output(STARTED_LINE, timeout=timeout)

    def send_signal(self, signum: signal.Signals) -> None:
        """Send `signum` to this process (by its PID), unless it has been reaped."""
        if self.popen.returncode is None:
            self.popen.send_signal(signum)

    async def wait(self, *, timeout: float) -> int:
        """Wait for the process to exit; return its exit code.

        Raises:
            TimeoutError: it still ran after `timeout` seconds.
        """
        try:
            return await anyio.to_thread.run_sync(partial(self.popen.wait, timeout))
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(
                f"the worker did not exit within {timeout:g} s\n{self.output_tail()}"
            ) from exc

    async def terminate(self, *, timeout: float = 30.0) -> None:
        """SIGTERM the process and check that it stops cleanly (exit code 0) within `timeout`."""
        self.send_signal(signal.SIGTERM)
        assert await self.wait(timeout=timeout) == 0, self.output_tail()

    def cleanup(self) -> None:
        """SIGKILL the process if it still runs, and reap it. Idempotent."""
        if self._popen is None or self._popen.returncode is not None:
            return
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGKILL)
        self._popen.wait()
