"""Django's test runner against the real broker, Redis and PostgreSQL (issue 15).

`TransactionTestCase`: the worker is another process, so what a test writes must be
committed to be seen. One ``aqueue worker aqueue.contrib.django:queue`` subprocess runs for
the class, on the test database the runner made; ``aqueue outbox-relay`` runs once per
outbox test. Both are started and stopped by their PIDs only.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import anyio
from django.db import connection, transaction
from django.test import AsyncClient, TransactionTestCase
from django.utils import timezone

from aqueue.contrib.django import enqueue_on_commit, outbox
from aqueue.contrib.django._compat import FRAMEWORK, InvalidTask, TaskResult, TaskResultStatus
from aqueue.contrib.django.models import OutboxEntry
from tests.helpers.polling import POLL_INTERVAL, wait_for
from tests.helpers.worker_process import ROOT, WorkerProcess, aqueue_command, subprocess_env
from tests.integration.apps.django_project.shop import tasks
from tests.integration.apps.django_project.shop.models import Order

#: Seconds to wait for a job to be run and its result stored.
WAIT = 30.0


def _wait(condition: Callable[[], bool], what: str, details: Callable[[], str]) -> None:
    """Poll `condition` in this thread (the ORM refuses an event loop's) until `WAIT` passes.

    Raises:
        TimeoutError: it still did not hold; the message names `what` and shows `details()`.
    """
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {WAIT:g} s for {what}\n{details()}")
        pause.wait(POLL_INTERVAL)  # a poll interval, not a synchronisation


class WorkerTestCase(TransactionTestCase):
    """Starts the worker subprocess on this run's test database, for the whole class."""

    worker: ClassVar[WorkerProcess]
    app_name: ClassVar[str]
    #: start the worker with ``python -m django aqueue_worker`` instead of ``aqueue worker``
    use_management_command: ClassVar[bool] = False

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.app_name = f"aqueue-worker-{uuid.uuid4().hex[:8]}"
        env = {
            "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
            "AQUEUE_TEST_DJANGO_DB": connection.settings_dict["NAME"],
            "AQUEUE_TEST_DJANGO_APP": cls.app_name,
        }
        log = Path(os.environ["AQUEUE_TEST_LOG_DIR"]) / f"{cls.__name__}-worker.log"
        args = ["-Q", "default,emails", "--concurrency", "4"]
        cls.worker = WorkerProcess("aqueue.contrib.django:queue", args, env=env, log=log)
        if cls.use_management_command:  # the same worker, as `manage.py aqueue_worker`
            cls.worker.argv = [sys.executable, "-m", "django", "aqueue_worker", *args]
        cls.worker.start()
        anyio.run(partial(cls.worker.wait_started, timeout=60))

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            cls.worker.send_signal(signal.SIGTERM)
            code = anyio.run(partial(cls.worker.wait, timeout=30))
            assert code == 0, cls.worker.output_tail()
        finally:
            cls.worker.cleanup()
            super().tearDownClass()

    def finished(self, result: TaskResult[Any, Any]) -> TaskResult[Any, Any]:
        """`result` once the worker finished its job (refreshed from the result backend)."""

        def done() -> bool:
            result.refresh()
            return result.is_finished

        _wait(done, f"job {result.id} to finish", self.worker.output_tail)
        return result

    def worker_connections(self) -> int:
        """Database connections the worker holds open now."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                [self.app_name],
            )
            row = cursor.fetchone()
        return int(row[0]) if row else 0


class BackendTests(WorkerTestCase):
    """`AqueueBackend` through Django's own API: ``@task``, ``.enqueue()``, results."""

    def test_enqueue_then_read_the_result(self) -> None:
        """A task enqueued with ``.enqueue()`` runs in the worker; its result is read back."""
        result = tasks.add.enqueue(2, 3)
        self.assertEqual(result.status, TaskResultStatus.READY)
        finished = self.finished(result)
        self.assertEqual(finished.status, TaskResultStatus.SUCCESSFUL)
        self.assertEqual(finished.return_value, 5)
        again = tasks.add.get_result(result.id)
        self.assertEqual((again.status, again.return_value), (TaskResultStatus.SUCCESSFUL, 5))
        self.assertIsNotNone(again.finished_at)

    async def test_aenqueue_from_an_async_view(self) -> None:
        """An async view enqueues with ``aenqueue``; the result is read with ``aget_result``."""
        response = await AsyncClient().post("/sums/20/22")
        self.assertEqual(response.status_code, 202)
        job_id = response.json()["id"]

        async def done() -> bool:
            result = await tasks.add.aget_result(job_id)
            return result.is_finished

        await wait_for(done, timeout=WAIT, what="the view's job", details=self.worker.output_tail)
        result = await tasks.add.aget_result(job_id)
        self.assertEqual(result.return_value, 42)

    def test_a_task_that_touches_the_orm(self) -> None:
        """The worker's task updates a row the test committed; its connection is closed after
        the job (CONN_MAX_AGE=0), as Django closes a request's."""
        Order.objects.create(number=7)
        result = self.finished(tasks.mark_paid.enqueue(7))
        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL, result.errors)
        self.assertEqual(result.return_value["status"], "paid")
        self.assertEqual(Order.objects.get(number=7).status, "paid")
        # the server ends a closed connection's backend a moment after the client left; an
        # open one (no close per job) would stay listed, and this wait would time out
        _wait(lambda: self.worker_connections() == 0, "the job's connection to close", str)

    def test_async_task_other_queue_and_context(self) -> None:
        """An async task, a task of another queue, and one that takes its context."""
        self.assertEqual(self.finished(tasks.shout.enqueue("hi")).return_value, "HI")
        self.assertEqual(self.finished(tasks.email.enqueue("ada")).return_value, "sent to ada")
        result = self.finished(tasks.attempt.enqueue())
        self.assertEqual(result.return_value, [result.id, 1])

    def test_a_failure_is_failed_with_its_error(self) -> None:
        """A task that raises is FAILED, with the exception's type and traceback."""
        result = self.finished(tasks.fail.enqueue("no"))
        self.assertEqual(result.status, TaskResultStatus.FAILED)
        self.assertEqual(len(result.errors), 1)
        self.assertIn("ValueError", result.errors[0].exception_class_path)
        self.assertIn("raise ValueError", result.errors[0].traceback)

    def test_run_after_is_a_delay(self) -> None:
        """``run_after`` (supports_defer): the job does not run before it."""
        run_after = timezone.now() + dt.timedelta(seconds=1)
        result = self.finished(tasks.add.using(run_after=run_after).enqueue(1, 1))
        self.assertEqual(result.return_value, 2)
        self.assertIsNotNone(result.finished_at)
        assert result.finished_at is not None
        self.assertGreaterEqual(result.finished_at, run_after - dt.timedelta(milliseconds=10))

    def test_bad_input_is_refused_at_enqueue(self) -> None:
        """A priority, a queue not in QUEUES, and a non-JSON argument fail at enqueue."""
        from aqueue.exceptions import EncodeError

        with self.assertRaisesMessage(InvalidTask, "priority"):
            tasks.add.using(priority=10)
        with self.assertRaisesMessage(InvalidTask, "nowhere"):
            tasks.add.using(queue_name="nowhere")
        with self.assertRaises(EncodeError):
            tasks.add.enqueue(object(), 1)  # type: ignore[arg-type]

    def test_framework_is_named(self) -> None:
        """The tasks framework in use is Django's or the backport's."""
        self.assertIn(FRAMEWORK, ("django.tasks", "django_tasks"))


class OutboxTests(WorkerTestCase):
    """The Django outbox (`outbox().enqueue`) and `enqueue_on_commit`, with the worker run by
    the management command (``python -m django aqueue_worker``)."""

    use_management_command = True

    def relay_once(self) -> str:
        """Run ``aqueue outbox-relay aqueue.contrib.django:queue --once`` on the test DB."""
        settings = connection.settings_dict
        url = (
            f"postgresql+asyncpg://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/"
            f"{settings['NAME']}"
        )
        env = subprocess_env({"DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"]})
        done = subprocess.run(
            aqueue_command(
                "outbox-relay", "aqueue.contrib.django:queue", "--database", url, "--once"
            ),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stderr

    def test_committed_rows_run_and_rolled_back_ones_do_not(self) -> None:
        """A job written in a transaction that rolls back leaves no row and never runs; the
        committed one is relayed, runs, and its row is deleted."""
        Order.objects.create(number=1)
        Order.objects.create(number=2)
        with self.assertRaises(RuntimeError), transaction.atomic():
            outbox().enqueue(tasks.mark_paid, 1)
            raise RuntimeError("roll back")
        with transaction.atomic():
            result = outbox().enqueue(tasks.mark_paid, 2)
        self.assertEqual(OutboxEntry.objects.count(), 1)
        self.assertIn("published 1 jobs", self.relay_once())
        self.assertEqual(OutboxEntry.objects.count(), 0)
        finished = self.finished(result)
        self.assertEqual(finished.return_value["status"], "paid")
        self.assertEqual(Order.objects.get(number=1).status, "new")

    def test_enqueue_on_commit(self) -> None:
        """``enqueue_on_commit`` publishes when the transaction commits, not if it rolls back
        (the worker runs jobs of one queue in order: the committed one ran, the other never
        was published)."""
        Order.objects.create(number=3)
        Order.objects.create(number=4)
        with self.assertRaises(RuntimeError), transaction.atomic():
            enqueue_on_commit(tasks.mark_paid, 3)
            raise RuntimeError("roll back")
        with transaction.atomic():
            enqueue_on_commit(tasks.mark_paid, 4)
            self.assertEqual(Order.objects.get(number=4).status, "new")  # not yet sent

        def paid() -> bool:
            return Order.objects.get(number=4).status == "paid"

        _wait(paid, "order 4 to be paid", self.worker.output_tail)
        self.assertEqual(Order.objects.get(number=3).status, "new")
