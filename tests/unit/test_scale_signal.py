"""The ``/scale`` document: a pure function of each queue's `QueueStats`, and its route."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry

from aqueue._observability.hooks import QueueStats
from aqueue._observability.prometheus import PrometheusMetrics, metrics_app
from aqueue._observability.scale import (
    MAX_FACTOR,
    ScaleSignal,
    parse_target,
    scale_document,
    suggested_workers,
)

IDLE = QueueStats(
    queue="emails",
    ready=0,
    oldest_wait=0.0,
    oldest_wait_exact=False,
    wait_p50=0.01,
    wait_p95=0.02,
    started=100,
    concurrency=10,
    running=5,
    busy_ratio=0.5,
    prefetch=10,
    loop_lag=0.001,
    cpu_saturated=False,
    consumers=4,
)


def stats(**changes: object) -> QueueStats:
    return dataclasses.replace(IDLE, **changes)  # type: ignore[arg-type]


def test_a_queue_behind_its_target_asks_for_workers_in_proportion_to_its_wait() -> None:
    """Saturated with a backlog, 4 workers at a 6 s wait for a 2 s target: 4 x 3 = 12."""
    behind = stats(ready=500, busy_ratio=1.0, running=10, oldest_wait=6.0, wait_p95=3.0)
    assert suggested_workers(behind, 2.0) == 12


def test_the_larger_of_the_p95_and_the_oldest_wait_drives_it() -> None:
    """A p95 of 5 s above an oldest wait of 1 s: the p95 counts (4 x 5 / 2 = 10)."""
    behind = stats(ready=50, busy_ratio=1.0, oldest_wait=1.0, wait_p95=5.0)
    assert suggested_workers(behind, 2.0) == 10


def test_one_answer_multiplies_the_workers_by_at_most_max_factor() -> None:
    """A queue stalled for an hour asks for MAX_FACTOR times its workers, not 1,800 times."""
    stalled = stats(ready=10_000, busy_ratio=1.0, oldest_wait=3600.0)
    assert suggested_workers(stalled, 2.0) == 4 * MAX_FACTOR


def test_a_queue_that_meets_its_target_gives_back_its_idle_workers() -> None:
    """Half busy on 4 workers, jobs starting at once: 2 workers are enough."""
    assert suggested_workers(IDLE, 2.0) == 2


def test_a_fully_busy_queue_that_meets_its_target_holds() -> None:
    """Every runner busy, waits under target: the same 4 workers."""
    assert suggested_workers(stats(busy_ratio=1.0, running=10), 2.0) == 4


def test_a_high_p95_after_the_backlog_is_served_does_not_ask_for_more() -> None:
    """The minute's p95 still shows a past burst, but nothing waits and runners are free:
    the busy ratio decides (4 x 0.5 = 2), not the stale p95."""
    served = stats(wait_p95=30.0, oldest_wait=0.0, ready=0, busy_ratio=0.5)
    assert suggested_workers(served, 2.0) == 2


def test_an_idle_queue_keeps_one_worker() -> None:
    """Nothing running, nothing ready: one worker, never zero (scale to zero is the broker
    trigger's job, since a worker that is gone reports nothing)."""
    assert suggested_workers(stats(busy_ratio=0.0, running=0, wait_p95=None), 2.0) == 1


def test_without_a_consumer_count_the_worker_counts_itself_alone() -> None:
    """Before the first passive declare answers: workers = 1 (1 x 6 / 2 = 3)."""
    behind = stats(consumers=None, ready=None, busy_ratio=1.0, oldest_wait=6.0)
    assert suggested_workers(behind, 2.0) == 3


def test_an_exact_multiple_is_not_rounded_up() -> None:
    """3 workers at a 0.3 s wait for a 0.1 s target is 9 workers, not 10 (float error)."""
    behind = stats(consumers=3, ready=5, busy_ratio=1.0, oldest_wait=0.3, wait_p95=None)
    assert suggested_workers(behind, 0.1) == 9


def test_the_document_has_each_queue_the_target_and_the_worker() -> None:
    """Every field KEDA's valueLocation can name, per queue, beside the worker's identity."""
    reports = stats(queue="reports", ready=7, busy_ratio=1.0, oldest_wait=9.0, wait_p95=4.0)
    document = scale_document(
        [IDLE, reports],
        target_wait=3.0,
        worker={"id": "h:1:ab", "host": "h", "pid": 1},
        sampled_at=1000.0,
    )
    assert document == {
        "worker": {"id": "h:1:ab", "host": "h", "pid": 1},
        "target_wait": 3.0,
        "sampled_at": 1000.0,
        "queues": {
            "emails": {
                "wait_p95": 0.02,
                "oldest_wait": 0.0,
                "ready": 0,
                "busy_ratio": 0.5,
                "concurrency": 10,
                "running": 5,
                "workers": 4,
                "suggested_workers": 2,
            },
            "reports": {
                "wait_p95": 4.0,
                "oldest_wait": 9.0,
                "ready": 7,
                "busy_ratio": 1.0,
                "concurrency": 10,
                "running": 5,
                "workers": 4,
                "suggested_workers": 12,
            },
        },
    }


def test_without_a_target_the_figures_come_without_a_suggestion() -> None:
    """No ?target_wait= and no --target-wait: suggested_workers is null, the rest is there."""
    document = scale_document([IDLE], target_wait=None, worker={}, sampled_at=None)
    emails = document["queues"]["emails"]  # type: ignore[index]
    assert (emails["suggested_workers"], emails["concurrency"], emails["ready"]) == (None, 10, 0)


@pytest.mark.parametrize(
    ("query", "default", "expected"),
    [
        ("", None, None),
        ("", 2.0, 2.0),
        ("target_wait=0.5", 2.0, 0.5),
        ("other=1&target_wait=10", None, 10.0),
    ],
)
def test_the_query_names_the_target_else_the_worker_does(
    query: str, default: float | None, expected: float | None
) -> None:
    """?target_wait= wins over --target-wait; neither leaves no target."""
    assert parse_target(query, default) == expected


@pytest.mark.parametrize(
    "bad", ["target_wait=soon", "target_wait=0", "target_wait=-1", "target_wait=nan"]
)
def test_a_target_that_is_not_a_positive_number_is_refused(bad: str) -> None:
    """A bad target is a 400 with a JSON error naming it, not a guess."""
    status, body = ScaleSignal(dict).answer(bad)
    assert status == 400
    assert "target_wait" in json.loads(body)["error"]


def test_the_signal_answers_from_the_last_sample() -> None:
    """`sample` replaces what `/scale` reports; before any sample, no queues."""
    signal = ScaleSignal(lambda: {"pid": 7}, target_wait=2.0)
    status, body = signal.answer("")
    assert (status, json.loads(body)["queues"]) == (200, {})
    signal.sample([IDLE])
    signal.sample([stats(concurrency=20)])
    document = json.loads(signal.answer("")[1])
    assert document["worker"] == {"pid": 7}
    assert document["queues"]["emails"]["concurrency"] == 20
    assert document["sampled_at"] is not None


def call(app: object, path: str, query: str = "") -> tuple[str, dict[str, str], bytes]:
    """Call a WSGI app once: its status, headers and body."""
    answer: dict[str, object] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    body: Iterable[bytes] = app(environ, start_response)  # type: ignore[operator]
    return str(answer["status"]), answer["headers"], b"".join(body)  # type: ignore[return-value]


def test_the_port_serves_the_metrics_and_the_scale_document() -> None:
    """``/metrics`` is still the Prometheus text; ``/scale`` is JSON; a bad target is a 400."""
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    signal = ScaleSignal(dict, target_wait=1.0)
    for instrument in (metrics, signal):
        instrument.sample([IDLE])
    app = metrics_app(registry, signal)
    status, _, body = call(app, "/metrics")
    assert status.startswith("200")
    assert 'aqueue_worker_concurrency{queue="emails"} 10.0' in body.decode()
    status, headers, body = call(app, "/scale", "target_wait=2")
    assert (status, headers["Content-Type"]) == ("200 OK", "application/json")
    assert json.loads(body)["queues"]["emails"]["suggested_workers"] == 2
    status, _, body = call(app, "/scale", "target_wait=x")
    assert status == "400 Bad Request"
