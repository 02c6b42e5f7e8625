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
one that died starting, and, with ``--processes MIN:MAX``, the lines in which a child's
autoscaler says a queue turned CPU-bound or no longer is (`CPU_BOUND_MARK`): when every child
has been CPU-bound for a while it adds one, when none has for longer it retires the newest.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteReceiveStream, Process

from aqueue._core.supervision import (
    CPU_BOUND_MARK,
    CPU_FREE_MARK,
    ProcessScaling,
    RestartPolicy,
    next_restart,
    process_target,
)

logger = logging.getLogger("aqueue.supervisor")

STARTED_MARK = b"worker consuming from"
"""What a worker logs once it consumes (see `Worker.run`): the child started."""
_BOUND = re.compile(rb"queue (\S+): " + re.escape(CPU_BOUND_MARK.encode()))
_FREE = re.compile(rb"queue (\S+): " + re.escape(CPU_FREE_MARK.encode()))
#: Seconds between two looks at the children's CPU-bound reports (``--processes MIN:MAX``).
SCALE_TICK = 1.0


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
    #: its queues whose autoscaler said "CPU-bound" last
    bound: set[bytes] = field(default_factory=set)
    #: being stopped because there are more processes than needed: not restarted
    retiring: bool = False


class Supervisor:
    """Keeps `count` worker processes running until a signal stops them all.

    Args:
        argv_for: the command line of child `index` (its metrics port may differ).
        count: how many children (with `scaling`: its minimum is used instead).
        policy: when to restart one that died, and when to give up.
        scaling: ``--processes MIN:MAX``: add and retire children on their CPU-bound reports.
    """

    def __init__(
        self,
        argv_for: Callable[[int], Sequence[str]],
        count: int,
        policy: RestartPolicy | None = None,
        scaling: ProcessScaling | None = None,
    ) -> None:
        self._argv_for = argv_for
        self._policy = policy or RestartPolicy()
        self._scaling = scaling
        if scaling is not None:
            count = scaling.minimum
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
                if self._scaling is not None:
                    tg.start_soon(self._scale, self._scaling, children)
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
            if _retiring(child):  # retired while it waited for a restart
                self._children.remove(child)
                return
            began = anyio.current_time()
            pid, code = await self._run_once(child)
            ran_for = anyio.current_time() - began
            if _retiring(child) and not self._stop_event.is_set():
                logger.info(
                    "worker process %d (pid %d) retired: %s", child.index, pid, describe_exit(code)
                )
                self._children.remove(child)
                return
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

    # -- how many children (--processes MIN:MAX) -----------------------------------------

    async def _scale(self, scaling: ProcessScaling, children: anyio.abc.TaskGroup) -> None:
        """Add a child when every one has been CPU-bound a while; retire one when none has."""
        all_since: float | None = None
        none_since: float | None = None
        while not self._stop_event.is_set():
            with anyio.move_on_after(SCALE_TICK):
                await self._stop_event.wait()
            if self._stop_event.is_set():
                return
            now = anyio.current_time()
            active = [c for c in self._children if not c.retiring]
            serving = [c for c in active if c.process is not None and c.consuming]
            all_bound = len(serving) == len(active) > 0 and all(c.bound for c in serving)
            none_bound = not any(c.bound for c in serving)
            all_since = (all_since or now) if all_bound else None
            none_since = (none_since or now) if none_bound else None
            target = process_target(
                scaling,
                len(active),
                all_bound_since=all_since,
                none_bound_since=none_since,
                now=now,
            )
            if target > len(active):
                child = _Child(max((c.index for c in self._children), default=-1) + 1)
                logger.info(
                    "adding worker process %d: every one of %d process(es) has been CPU-bound "
                    "for %gs (--processes %d:%d)",
                    child.index,
                    len(active),
                    now - (all_since or now),
                    scaling.minimum,
                    scaling.maximum,
                )
                self._children.append(child)
                children.start_soon(self._keep, child)
                all_since = None  # judge the new number of processes afresh
            elif target < len(active):
                child = max(active, key=lambda c: c.index)
                logger.info(
                    "retiring worker process %d: no process has been CPU-bound for %gs "
                    "(--processes %d:%d)",
                    child.index,
                    now - (none_since or now),
                    scaling.minimum,
                    scaling.maximum,
                )
                child.retiring = True
                if child.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGTERM)
                none_since = None

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
            if self._scaling is not None:
                child.bound.update(_BOUND.findall(lines))
                child.bound.difference_update(_FREE.findall(lines))
            sys.stderr.flush()  # the supervisor's own log lines first, in order
            out.write(lines)
            out.flush()
        if pending:
            out.write(pending + b"\n")
            out.flush()


def _retiring(child: _Child) -> bool:
    # a function, not the attribute: the scaler sets it while `_keep` awaits its child, which
    # mypy's narrowing of the attribute cannot see
    return child.retiring
