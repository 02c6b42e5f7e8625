"""The test ledger (tests/helpers/ledger.py) tells lost, duplicated and unconfirmed runs apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aqueue import TaskQueue, current_job
from aqueue._core.topology import BindingSpec, QueueSpec, Topology
from aqueue.exceptions import PublishNacked
from aqueue.testing import running_worker
from tests.helpers.ledger import LEDGER_ENV, Ledger, record_run
from tests.helpers.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_report_names_lost_duplicated_and_ran_unconfirmed_jobs(tmp_path: Path) -> None:
    """Runs recorded here and in another process are read back and compared with the enqueues."""
    ledger = Ledger(tmp_path / "ledger")
    for job_id in ("a", "b", "c"):
        ledger.confirmed(job_id)
    ledger.raised("d", PublishNacked("nacked"))
    ledger.raised(None, PublishNacked("failed before its first publish"))
    ledger.ran("a", tag="here")
    ledger.ran("a", tag="here")
    subprocess.run(
        [sys.executable, "-c", "from tests.helpers.ledger import record_run; record_run('b')"],
        cwd=ROOT,
        env={**ledger.env, "PATH": ""},
        check=True,
        timeout=60,
    )
    record_run("d", ledger.path, tag="worker 2")

    report = ledger.report()
    assert (report.confirmed, report.raised, report.runs) == (3, 2, 4)
    assert report.lost == ["c"]
    assert report.duplicated == {"a": 2}
    assert report.ran_unconfirmed == ["d"]
    assert [(run.job_id, run.tag) for run in ledger.runs()] == [
        ("a", "here"),
        ("a", "here"),
        ("b", ""),
        ("d", "worker 2"),
    ]
    assert not ledger.all_confirmed_ran()
    with pytest.raises(AssertionError, match=r"1 lost.*\['c'\]"):
        ledger.assert_no_loss()

    ledger.ran("c")
    assert ledger.all_confirmed_ran()
    assert ledger.assert_no_loss().lost == []


def test_record_run_needs_a_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a path or $AQUEUE_TEST_LEDGER a run is not silently dropped."""
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    with pytest.raises(RuntimeError, match=LEDGER_ENV):
        record_run("a")


async def test_enqueue_learns_the_job_id_of_a_failed_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nacked enqueue whose copies were stored anyway shows up as ran-unconfirmed.

    The in-memory broker, as RabbitMQ, keeps the copy a second queue took when one queue on
    the route refuses the message: the enqueue raises, and the job runs all the same.
    """
    ledger = Ledger(tmp_path / "ledger")
    monkeypatch.setenv(LEDGER_ENV, str(ledger.path))
    queue = TaskQueue(
        "memory://", prefix="t", publish_deadline=0.3, instrumentation=[ledger.instrumentation()]
    )

    @queue.task(name="note")
    async def note(index: int) -> None:
        record_run(current_job().job_id)

    async with queue.session() as session:
        ok = await ledger.enqueue(lambda: queue.enqueue(note, 1))
        full = QueueSpec("t.full", {"x-max-length": 0, "x-overflow": "reject-publish"})
        binding = BindingSpec("t.full", session.names.exchange, "default")
        await session.transport.declare(Topology(queues=(full,), bindings=(binding,)))
        failed = await ledger.enqueue(lambda: queue.enqueue(note, 2))
        async with running_worker(queue):
            await wait_for(
                lambda: {ok.job_id, failed.job_id} <= set(ledger.run_counts()),
                timeout=10,
                what="both jobs to run",
            )

    assert ok.confirmed
    assert ok.job_id is not None
    assert isinstance(failed.error, PublishNacked)
    assert failed.job_id is not None
    assert failed.job_id != ok.job_id
    assert 0.3 - 0.25 <= failed.seconds <= 0.3 + 0.2  # retried until its deadline
    report = ledger.report()
    assert report.lost == []
    assert report.ran_unconfirmed == [failed.job_id]
    # each nacked attempt left a copy in the work queue: every copy ran
    assert ledger.run_counts()[failed.job_id] >= 2
    assert failed.job_id in report.duplicated
