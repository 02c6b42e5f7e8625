"""``aqueue worker --processes N``: N worker processes under one supervisor.

Each child is a fresh interpreter running ``python -m aqueue worker APP <the same options>``
(not a `multiprocessing` fork): it shares no event loop, socket, thread or import state with
the supervisor, and it is exactly the single-process worker, with its own signals, grace,
``os._exit`` after abandoned threads and exit codes, so nothing about a worker differs under
a supervisor. The supervisor itself never connects to the broker.

Children run in sessions of their own, so a Ctrl-C at a terminal (SIGINT to the whole
foreground process group) reaches them once, forwarded by the supervisor, and is not taken
for a second signal ("stop now"). Their stderr comes through the supervisor, line by line,
which is how it sees the ``worker consuming from`` line that tells a child that started from
one that died starting.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream, Process

from aqueue._core.supervision import RestartPolicy, next_restart

logger = logging.getLogger("aqueue.supervisor")

STARTED_MARK = b"worker consuming from"
"""What a worker logs once it consumes (see `Worker.run`): the child started."""


def describe_exit(code: int) -> str:
    """``exit status 1`` or ``killed by SIGKILL``, from a `Popen.returncode`-style code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass(slots=True)
class _Child:
    index: int
    process: Process | None = None
    consuming: bool = False
    #: the exit code it had when it stopped after a stop began (None: not run, or no stop)
    stopped_with: int | None = None


class Supervisor:
    """Keeps `count` worker processes running until a signal stops them all.

    Args:
        argv_for: the command line of child `index` (its metrics port may differ).
        count: how many children.
        policy: when to restart one that died, and when to give up.
    """

    def __init__(
        self,
        argv_for: Callable[[int], Sequence[str]],
        count: int,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._argv_for = argv_for
        self._policy = policy or RestartPolicy()
        self._children = [_Child(index) for index in range(count)]
        self._stop_event = anyio.Event()
        self._failure: int | None = None  # the exit code when a child could not start

    async def run(self) -> int:
        """Run the children until they all stopped; return the supervisor's exit code.

        0: every child stopped with status 0 after a signal. 1: a child could not start
        (it died before consuming `RestartPolicy.start_attempts` times in a row) or exited
        non-zero during the stop. 2: a child rejected its input (status 2 before consuming).
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._forward_signals)
            async with anyio.create_task_group() as children:
                for child in self._children:
                    children.start_soon(self._keep, child)
            tg.cancel_scope.cancel()
        if self._failure is not None:
            return self._failure
        failed = [c for c in self._children if c.stopped_with not in (None, 0)]
        return 1 if failed else 0

    # -- signals -----------------------------------------------------------------------

    async def _forward_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                running = [c for c in self._children if c.process is not None]
                logger.warning(
                    "received %s: %s %d worker process(es)",
                    name,
                    "stopping now" if self._stop_event.is_set() else "stopping gracefully",
                    len(running),
                )
                self._begin_stop(signal.Signals(signum))

    def _begin_stop(self, signum: signal.Signals) -> None:
        """Send `signum` to every running child; restart none from now on."""
        self._stop_event.set()
        for child in self._children:
            if child.process is not None:
                with contextlib.suppress(ProcessLookupError):  # it died in the meantime
                    child.process.send_signal(signum)

    # -- one child -----------------------------------------------------------------------

    async def _keep(self, child: _Child) -> None:
        """Run `child`, and start it again each time it dies, until the stop."""
        policy = self._policy
        previous_delay: float | None = None
        deaths: tuple[float, ...] = ()
        failed_starts = 0
        while not self._stop_event.is_set():
            began = anyio.current_time()
            pid, code = await self._run_once(child)
            ran_for = anyio.current_time() - began
            if self._stop_event.is_set():
                child.stopped_with = code
                log = logger.info if code == 0 else logger.error
                log(
                    "worker process %d (pid %d) stopped: %s",
                    child.index,
                    pid,
                    describe_exit(code),
                )
                return
            if not child.consuming:
                failed_starts += 1
                if code == 2 or failed_starts >= policy.start_attempts:
                    logger.error(
                        "worker process %d (pid %d) could not start: %s before consuming "
                        "(%d time(s) in a row); stopping every worker process",
                        child.index,
                        pid,
                        describe_exit(code),
                        failed_starts,
                    )
                    self._failure = 2 if code == 2 else 1
                    self._begin_stop(signal.SIGTERM)
                    return
            else:
                failed_starts = 0
            restart = next_restart(
                policy,
                previous_delay=previous_delay,
                ran_for=ran_for,
                deaths=deaths,
                now=anyio.current_time(),
            )
            previous_delay, deaths = restart.delay, restart.deaths
            logger.error(
                "worker process %d (pid %d) died unexpectedly: %s after %.1fs; restarting "
                "it in %gs",
                child.index,
                pid,
                describe_exit(code),
                ran_for,
                restart.delay,
            )
            if restart.crash_loop:
                logger.error(
                    "worker process %d is in a crash loop: %d deaths within %gs, the last %s; "
                    "restarts go on, backing off up to %gs",
                    child.index,
                    len(restart.deaths),
                    policy.loop_window,
                    describe_exit(code),
                    policy.max_delay,
                )
            with anyio.move_on_after(restart.delay):
                await self._stop_event.wait()

    async def _run_once(self, child: _Child) -> tuple[int, int]:
        """Start `child`, relay its stderr until it exits; return its PID and exit code."""
        process = await anyio.open_process(
            list(self._argv_for(child.index)),
            stdin=subprocess.DEVNULL,
            stdout=None,  # the supervisor's own stdout
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        child.process, child.consuming = process, False
        logger.info("worker process %d started (pid %d)", child.index, process.pid)
        if self._stop_event.is_set():  # the stop came while it was being spawned
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            assert process.stderr is not None  # noqa: S101 - asked for above
            await self._relay(child, process.stderr)
            code = await process.wait()
        finally:
            child.process = None
        return process.pid, code

    async def _relay(self, child: _Child, stream: ByteReceiveStream) -> None:
        """Copy the child's stderr to ours, whole lines at a time, until it closes."""
        pending = b""
        out = sys.stderr.buffer
        async for chunk in stream:
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if not cut:
                continue
            lines, pending = pending[:cut], pending[cut:]
            if not child.consuming and STARTED_MARK in lines:
                child.consuming = True
            sys.stderr.flush()  # the supervisor's own log lines first, in order
            out.write(lines)
            out.flush()
        if pending:
            out.write(pending + b"\n")
            out.flush()
