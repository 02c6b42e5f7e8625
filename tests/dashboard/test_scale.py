"""A big app on the dashboard: 50 queues, 20 workers, 10,000 dead letters in one queue.

It REPORTS how long the screens take (printed at the end of the run under "figures measured
by tests", and recorded as junit properties); it asserts
only what they show: every queue and worker on the overview, and one page (50) of dead
letters out of 10,000. The workers are heartbeats published as 20 workers would.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

import aqueue.dashboard
from aqueue import TaskQueue
from aqueue._core import wire as t
from aqueue._core.heartbeats import Heartbeat, QueueFigures, control_exchange
from aqueue._serialization import dumps
from aqueue._transport import OutgoingMessage
from tests.helpers.dashboard import serving
from tests.helpers.polling import wait_for
from tests.helpers.workers import delete_topology

pytestmark = pytest.mark.integration

QUEUES = [f"q{index:02d}" for index in range(50)]
WORKERS = 20
DEAD = 10_000
ROUNDS = 5


@pytest.fixture
async def big(amqp_url: str, prefix: str) -> AsyncIterator[TaskQueue]:
    """An app with one task on each of 50 queues (classic: kinder to the shared broker)."""
    queue = TaskQueue(amqp_url, prefix=prefix, name=f"{prefix}-big", queue_type="classic")
    for name in QUEUES:

        @queue.task(queue=name, name=f"task-{name}")
        async def task() -> None: ...

    yield queue
    await delete_topology(amqp_url, prefix, QUEUES)


def heartbeat(prefix: str, index: int) -> bytes:
    figures = QueueFigures(concurrency=10, in_flight=index % 10, wait_p95=0.5, oldest_wait=1.0)
    beat = Heartbeat(
        worker_id=f"worker-{index:02d}",
        host="bench-host",
        pid=10_000 + index,
        prefix=prefix,
        concurrency=10,
        started_at=time.time(),
        sent_at=time.time(),
        interval=60.0,  # alive for 3 minutes: longer than the test
        queues=dict.fromkeys(QUEUES, figures),
    )
    return dumps(beat.to_payload())


async def timed(http: httpx.AsyncClient, path: str) -> tuple[float, httpx.Response]:
    """GET `path`: the seconds until the whole answer is in, and the answer."""
    began = time.perf_counter()
    answer = await http.get(path)
    return time.perf_counter() - began, answer


@pytest.mark.timeout(600)
async def test_fifty_queues_twenty_workers_ten_thousand_dead_letters(
    big: TaskQueue,
    prefix: str,
    record_property: Callable[[str, object], None],
) -> None:
    """Report the render times of the overview and of a dead-letter page at this size."""
    figures: dict[str, float] = {}
    async with big, big.session() as session:
        letters = [
            OutgoingMessage(
                session.names.dead_letter_exchange,
                "q00",
                b'{"args": [1, "x"], "kwargs": {}}',
                f"dead-{index:05d}",
                {
                    t.HEADER_TASK: "task-q00",
                    t.HEADER_DEAD_REASON: "failed",
                    t.HEADER_DEAD_QUEUE: "q00",
                    t.HEADER_DEAD_ATTEMPTS: 3,
                    t.HEADER_DEAD_EXC_TYPE: "ValueError",
                    t.HEADER_DEAD_EXC_MESSAGE: f"failure {index}",
                },
            )
            for index in range(DEAD)
        ]
        assert await session.producer.publish_many(letters) == []
        web = aqueue.dashboard.app(big)
        async with serving(web) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            assert (await http.get("/")).status_code == 200  # opens and starts listening
            for index in range(WORKERS):
                await session.transport.notify(
                    control_exchange(prefix),
                    f"heartbeat.worker-{index:02d}",
                    heartbeat(prefix, index),
                    timeout=5,
                )

            async def all_workers() -> bool:
                return len((await http.get("/api/overview")).json()["workers"]) == WORKERS

            await wait_for(all_workers, timeout=20, what="20 workers on the dashboard")
            overview_times = []
            for _ in range(ROUNDS):
                took, page = await timed(http, "/")
                overview_times.append(took)
                assert page.text.count("<tr data-queue=") == len(QUEUES)
                assert "20 live worker(s)" in page.text
            figures["overview_median_s"] = statistics.median(overview_times)
            figures["overview_max_s"] = max(overview_times)

            took, first = await timed(http, "/queues/q00/dead-letters")
            figures["dead_letters_first_visit_s"] = took  # answers at once, reads after
            assert first.status_code == 200
            began = time.perf_counter()

            async def read() -> bool:
                answer = await http.get("/api/queues/q00/dead-letters")
                return answer.json()["reading"] is False

            await wait_for(read, timeout=400, interval=0.5, what="the dead-letter summary")
            figures["dead_letters_summary_pass_s"] = time.perf_counter() - began
            page_times = []
            for offset in (0, 50, 5000, 9950) * 2:
                took, page = await timed(http, f"/queues/q00/dead-letters?offset={offset}")
                page_times.append(took)
                assert page.text.count("<tr data-job=") == 50
                assert "10000 dead letter(s)" in page.text
            figures["dead_letters_page_median_s"] = statistics.median(page_times)
            figures["dead_letters_page_max_s"] = max(page_times)
            newest = (await http.get("/api/queues/q00/dead-letters")).json()
            assert newest["dead_letters"][0]["job_id"] == f"dead-{DEAD - 1:05d}"
        await big.dead_letters("q00").purge()
    for name, value in figures.items():  # printed at the end of the run (tests/conftest.py)
        record_property(f"figure:{name}", f"{value:.3f}")
