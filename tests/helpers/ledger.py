"""A ledger of what a test enqueued and what ran: lost, duplicated and unconfirmed jobs.

The producer side records each enqueue as it returns (confirmed) or raises; tasks record each
run with `record_run`, in this process or in worker subprocesses, by appending one line to
the file named by ``AQUEUE_TEST_LEDGER`` (`Ledger.env` gives that variable). `Ledger.report`
then tells:

- **lost**: confirmed, never ran: the promise broken;
- **duplicated**: ran more than once (at-least-once allows it; tests report it);
- **ran_unconfirmed**: ran though its enqueue raised (a nacked or unconfirmed copy was stored
  after all: why ``PublishNacked`` means "probably not stored").

A failed ``enqueue`` returns no job, so the ledger learns the job id of a failing call from
the publish hook of `Ledger.instrumentation`, which sees every message before it is sent.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aqueue import Instrumentation
from aqueue._transport import OutgoingMessage
from aqueue.exceptions import ConnectionLost, PublishError

LEDGER_ENV = "AQUEUE_TEST_LEDGER"

T = TypeVar("T")

#: The job id of the latest publish in this task: set by the publish hook, read by `enqueue`.
_PUBLISHING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aqueue_test_ledger_publishing", default=None
)


def record_run(job_id: str, path: Path | str | None = None, *, tag: str = "") -> None:
    """Append one run of `job_id` (and who ran it, `tag`) to the ledger file.

    One ``write`` on an ``O_APPEND`` descriptor: lines of concurrent writers (other worker
    processes) never interleave. No fsync: a test reads it after the writers are done.

    Raises:
        RuntimeError: no `path` and ``AQUEUE_TEST_LEDGER`` is not set.
    """
    if path is None:
        path = os.environ.get(LEDGER_ENV)
        if not path:
            raise RuntimeError(f"record_run needs a path or ${LEDGER_ENV}")
    line = f"{time.time():.6f} {job_id} {tag}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Attempt:
    """One enqueue call: its job id (None if it failed before publishing), outcome, timing."""

    job_id: str | None
    began: float
    seconds: float
    error: BaseException | None = None

    @property
    def confirmed(self) -> bool:
        """Whether the enqueue returned."""
        return self.error is None


@dataclass(frozen=True)
class Run:
    """One line of the ledger file: a run of `job_id` at wall time `at`, by `tag`."""

    at: float
    job_id: str
    tag: str


@dataclass(frozen=True)
class LedgerReport:
    """What the ledger found; `ok` when nothing confirmed was lost."""

    confirmed: int
    raised: int
    runs: int
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    ran_unconfirmed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No confirmed job was lost."""
        return not self.lost

    def __str__(self) -> str:
        return (
            f"{self.confirmed} confirmed, {self.raised} raised, {self.runs} runs: "
            f"{len(self.lost)} lost, {len(self.duplicated)} duplicated, "
            f"{len(self.ran_unconfirmed)} ran though their enqueue raised"
        )


class _Hook(Instrumentation):
    def publish(self, message: OutgoingMessage) -> AbstractContextManager[OutgoingMessage]:
        return _noting(message)


@contextmanager
def _noting(message: OutgoingMessage) -> Iterator[OutgoingMessage]:
    # A hook runs in the task that publishes: the enqueue wrapper reads it there afterwards.
    _PUBLISHING.set(message.message_id)
    yield message


class Ledger:
    """The confirmed and failed enqueues of a test, and the runs its tasks recorded.

    Args:
        path: the file tasks append their runs to (created empty here).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")
        self.attempts: list[Attempt] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment variable that points tasks (and worker processes) at the file."""
        return {LEDGER_ENV: str(self.path)}

    @staticmethod
    def instrumentation() -> Instrumentation:
        """Pass to ``TaskQueue(instrumentation=[...])`` so `enqueue` learns failed jobs' ids."""
        return _Hook()

    # -- recording --------------------------------------------------------------------------

    def confirmed(self, job_id: str, *, began: float = 0.0, seconds: float = 0.0) -> None:
        """Record an enqueue of `job_id` that returned."""
        self.attempts.append(Attempt(job_id, began, seconds))

    def raised(
        self, job_id: str | None, error: BaseException, *, began: float = 0.0, seconds: float = 0.0
    ) -> None:
        """Record an enqueue of `job_id` that raised `error`."""
        self.attempts.append(Attempt(job_id, began, seconds, error))

    def ran(self, job_id: str, *, tag: str = "") -> None:
        """Record a run in this process (tasks elsewhere call `record_run`)."""
        record_run(job_id, self.path, tag=tag)

    async def enqueue(self, call: Callable[[], Awaitable[Any]]) -> Attempt:
        """Run one enqueue (``lambda: queue.enqueue(task, ...)``), time it and record it.

        Only what the producer raises for a publish that failed is recorded (``PublishError``,
        ``ConnectionLost``); anything else is a bug in the test and propagates.
        """
        token = _PUBLISHING.set(None)
        began = time.monotonic()
        try:
            job = await call()
        except (PublishError, ConnectionLost) as exc:
            attempt = Attempt(_PUBLISHING.get(), began, time.monotonic() - began, exc)
        else:
            attempt = Attempt(job.job_id, began, time.monotonic() - began)
        finally:
            _PUBLISHING.reset(token)
        self.attempts.append(attempt)
        return attempt

    # -- reading ----------------------------------------------------------------------------

    def runs(self) -> list[Run]:
        """Every complete line of the file, in the order written."""
        text = self.path.read_text()
        runs = []
        for line in text.split("\n")[:-1]:  # after the last newline: empty or incomplete
            at, job_id, *tag = line.split(" ")
            runs.append(Run(float(at), job_id, " ".join(tag)))
        return runs

    def run_counts(self) -> Counter[str]:
        """How many times each job id ran."""
        return Counter(run.job_id for run in self.runs())

    def confirmed_ids(self) -> set[str]:
        """The job ids whose enqueue returned."""
        return {a.job_id for a in self.attempts if a.confirmed and a.job_id is not None}

    def raised_ids(self) -> set[str]:
        """The job ids whose enqueue raised (after publishing at least once)."""
        return {a.job_id for a in self.attempts if not a.confirmed and a.job_id is not None}

    def all_confirmed_ran(self) -> bool:
        """Whether every confirmed job ran at least once (for waiting on a drain)."""
        return self.confirmed_ids() <= set(self.run_counts())

    def report(self) -> LedgerReport:
        """Lost, duplicated and ran-unconfirmed jobs, as of now."""
        counts = self.run_counts()
        confirmed, raised = self.confirmed_ids(), self.raised_ids()
        return LedgerReport(
            confirmed=len(confirmed),
            raised=sum(not a.confirmed for a in self.attempts),
            runs=sum(counts.values()),
            lost=sorted(confirmed - set(counts)),
            duplicated={job_id: n for job_id, n in sorted(counts.items()) if n > 1},
            ran_unconfirmed=sorted(raised & set(counts)),
        )

    def assert_no_loss(self) -> LedgerReport:
        """Fail (AssertionError) if a confirmed job never ran; return the report."""
        report = self.report()
        assert report.ok, f"{report}; lost: {report.lost[:20]}"
        return report
