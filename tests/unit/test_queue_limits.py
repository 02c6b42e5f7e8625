"""Per-queue limits (issue 9, SLA queues): ``-Q`` parsing, how each limit is resolved, and a
worker that gives every queue its own runners, prefetch and threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

import aqueue._cli.worker as cli_worker
from aqueue import QueueLimits, TaskQueue, WorkerSettings
from aqueue._cli import app
from aqueue._core.config import Autoscale, QueueBudget, parse_queues
from aqueue._worker.worker import Worker
from aqueue.exceptions import ConfigurationError
from aqueue.testing import running_worker
from tests.helpers.polling import wait_for
from tests.helpers.workers import WAIT, wait_until

#: rich draws errors in a box as wide as the terminal: wide enough not to wrap the message
WIDE_PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("emails", ("emails",), id="bare"),
        pytest.param(
            "emails:50,reports:4",
            (QueueLimits("emails", concurrency=50), QueueLimits("reports", concurrency=4)),
            id="concurrency",
        ),
        pytest.param("reports:4:threads=2", (QueueLimits("reports", 4, threads=2),), id="threads"),
        pytest.param(
            "reports:4:prefetch=1:threads=2",
            (QueueLimits("reports", 4, threads=2, prefetch=1),),
            id="options-any-order",
        ),
        pytest.param(
            "reports:threads=2", (QueueLimits("reports", threads=2),), id="no-concurrency"
        ),
        pytest.param(
            " emails : 50 , reports ,", (QueueLimits("emails", 50), "reports"), id="spaces-commas"
        ),
        pytest.param("tenant:emails", ("tenant:emails",), id="colon-in-name"),
        pytest.param("tenant:emails:5", (QueueLimits("tenant:emails", 5),), id="colon-and-limit"),
    ],
)
def test_queue_specs_are_read_from_the_right(
    text: str, expected: tuple[str | QueueLimits, ...]
) -> None:
    """Trailing ``key=value`` parts are options and a trailing number the concurrency; the rest,
    colons included, is the queue name."""
    assert parse_queues(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("emails:0", "the concurrency in 'emails:0' must be an integer >= 1", id="0"),
        pytest.param(
            "emails:-3", "the concurrency in 'emails:-3' must be an integer >= 1", id="neg"
        ),
        pytest.param("emails:4x", "the concurrency in 'emails:4x' must be", id="not-a-number"),
        pytest.param("emails:1.5", "the concurrency in 'emails:1.5' must be", id="float"),
        pytest.param(
            "r:4:threads=0", "threads in 'r:4:threads=0' must be an integer >= 1", id="t0"
        ),
        pytest.param("r:4:threads=", "threads in 'r:4:threads=' must be", id="t-empty"),
        pytest.param("r:4:thread=2", "unknown option 'thread'", id="unknown-option"),
        pytest.param("r:4:thread=2", "did you mean 'threads'?", id="suggestion"),
        pytest.param("r:threads=1:threads=2", "threads is given twice", id="option-twice"),
        pytest.param("emails,emails:4", "queue 'emails' is given twice", id="queue-twice"),
        pytest.param(":4", "queue name '' must be non-empty", id="no-name"),
        pytest.param("bad queue:4", "queue name 'bad queue'", id="bad-name"),
        pytest.param("x.dlq", "would collide with aqueue's own queues", id="reserved"),
    ],
)
def test_bad_queue_specs_are_refused_with_the_reason(text: str, message: str) -> None:
    """Each malformed item raises a ConfigurationError that quotes it and says what is wrong."""
    with pytest.raises(ConfigurationError) as caught:
        parse_queues(text)
    assert message in str(caught.value)


def test_a_queue_without_limits_takes_the_workers() -> None:
    """Concurrency and prefetch are the worker's; threads are min(concurrency, threads)."""
    settings = WorkerSettings(queues=("a", "b"), concurrency=8, threads=3)
    assert settings.queue_names == ("a", "b")
    assert settings.limits("a") == QueueBudget("a", concurrency=8, threads=3, prefetch=8)
    few = WorkerSettings(concurrency=2, threads=40)
    assert few.limits("default") == QueueBudget("default", concurrency=2, threads=2, prefetch=2)


def test_a_queues_own_limits_win_and_the_rest_follow_its_concurrency() -> None:
    """A queue's own concurrency sets its prefetch and caps its threads; its own threads and
    prefetch win over both rules; a worker-wide prefetch applies to queues without their own."""
    settings = WorkerSettings(
        queues=(
            "emails",
            QueueLimits("reports", concurrency=4),
            QueueLimits("exports", concurrency=2, threads=6, prefetch=1),
        ),
        concurrency=50,
        threads=10,
    )
    assert settings.queue_names == ("emails", "reports", "exports")
    assert settings.limits("emails") == QueueBudget("emails", 50, threads=10, prefetch=50)
    assert settings.limits("reports") == QueueBudget("reports", 4, threads=4, prefetch=4)
    assert settings.limits("exports") == QueueBudget(
        "exports", 2, threads=6, prefetch=1, prefetch_fixed=True
    )
    capped = WorkerSettings(queues=(QueueLimits("reports", concurrency=4),), prefetch=20)
    assert capped.limits("reports").prefetch == 20
    assert capped.limits("elsewhere") == QueueBudget(
        "elsewhere", 100, threads=40, prefetch=20, prefetch_fixed=True
    )


def test_autoscale_bounds_apply_per_queue() -> None:
    """Under autoscale a bare queue takes the worker's bounds, a queue with min/max its own
    (a missing one from the worker's), and a queue with a fixed concurrency is not scaled;
    threads follow the most runners a queue may have; the prefetch moves unless it is set."""
    scaling = Autoscale(2, 100, target_wait=1.0)
    settings = WorkerSettings(
        queues=(
            "emails",
            QueueLimits("reports", min_concurrency=1, max_concurrency=8),
            QueueLimits("exports", max_concurrency=30, prefetch=5),
            QueueLimits("fixed", concurrency=4),
        ),
        threads=20,
        autoscale=scaling,
    )
    assert settings.limits("emails") == QueueBudget(
        "emails", 2, threads=20, prefetch=2, autoscale=scaling
    )
    assert settings.limits("reports") == QueueBudget(
        "reports", 1, threads=8, prefetch=1, autoscale=Autoscale(1, 8, 1.0)
    )
    assert settings.limits("exports") == QueueBudget(
        "exports", 2, threads=20, prefetch=5, autoscale=Autoscale(2, 30, 1.0), prefetch_fixed=True
    )
    assert settings.limits("fixed") == QueueBudget("fixed", 4, threads=4, prefetch=4)


def test_per_queue_bounds_are_checked() -> None:
    """Bounds without autoscale, out of order against the worker's, or beside a fixed
    concurrency are refused with the queue's name."""
    with pytest.raises(ConfigurationError, match="'reports' sets autoscale bounds"):
        WorkerSettings(queues=(QueueLimits("reports", max_concurrency=8),))
    with pytest.raises(ConfigurationError, match="queue 'reports': autoscale maximum"):
        WorkerSettings(
            queues=(QueueLimits("reports", min_concurrency=200),),
            autoscale=Autoscale(2, 100, 1.0),
        )
    with pytest.raises(ConfigurationError, match="not both"):
        QueueLimits("reports", concurrency=4, max_concurrency=8)
    assert parse_queues("emails:min=5:max=50,reports:4") == (
        QueueLimits("emails", min_concurrency=5, max_concurrency=50),
        QueueLimits("reports", concurrency=4),
    )
    with pytest.raises(ConfigurationError, match="not both"):
        parse_queues("emails:4:max=50")


@pytest.mark.parametrize(
    "field", ["concurrency", "threads", "prefetch", "min_concurrency", "max_concurrency"]
)
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_queue_limits_refuse_values_that_are_not_positive_integers(
    field: str, value: object
) -> None:
    """Each limit is an integer >= 1 (or unset); the error names the queue and the field."""
    with pytest.raises(ConfigurationError, match=f"{field} of queue 'q' must be an integer >= 1"):
        QueueLimits("q", **{field: value})  # type: ignore[arg-type]


def test_settings_refuse_a_queue_given_twice_and_bad_names() -> None:
    """A name and a QueueLimits of the same queue clash; a bad name fails as before."""
    with pytest.raises(ConfigurationError, match="queue 'a' is given twice"):
        WorkerSettings(queues=("a", QueueLimits("a", concurrency=2)))
    with pytest.raises(ConfigurationError, match="queue name 'a b'"):
        WorkerSettings(queues=("a b",))


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set when the test ends: the blocked sync functions return, so no thread outlives it."""
    event = threading.Event()
    yield event
    event.set()


async def test_each_queue_gets_its_own_runners_prefetch_and_threads(
    memory_queue: TaskQueue, release: threading.Event
) -> None:
    """Sync jobs filling the slow queue's runners and threads leave the fast queue's sync jobs
    running: with one shared pool of 2 threads, the fast jobs would wait for the slow ones."""
    started: list[None] = []

    @memory_queue.task(name="slow", queue="slow")
    def slow() -> None:
        started.append(None)
        release.wait(WAIT * 3)

    @memory_queue.task(name="fast", queue="fast")
    def fast() -> None:
        pass

    settings = WorkerSettings(
        queues=(QueueLimits("slow", concurrency=2), "fast"), concurrency=5, threads=2
    )
    async with memory_queue.session(), running_worker(memory_queue, settings) as worker:
        assert worker._consumers["slow"].prefetch == 2  # type: ignore[attr-defined]
        assert worker._consumers["fast"].prefetch == 5  # type: ignore[attr-defined]
        for _ in range(4):
            await memory_queue.enqueue(slow)
        # both slow runners, and both of the slow queue's threads, taken
        await wait_for(lambda: len(started) == 2, timeout=WAIT, what="two slow jobs to start")
        assert worker._threads.for_queue("slow").busy() == 2
        assert worker.statistics().in_flight == 2
        assert worker._threads.for_queue("fast").limit == 2
        for _ in range(10):
            await memory_queue.enqueue(fast)
        await wait_until(worker, lambda s: s.succeeded == 10)
        assert worker.statistics().in_flight == 2  # the slow ones still run
        release.set()
        await wait_until(worker, lambda s: s.succeeded == 14)


def test_the_cli_builds_per_queue_settings_from_dash_q(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-Q emails:50,reports:4:threads=4`` reaches the worker as per-queue limits."""
    ran: list[Worker] = []
    monkeypatch.setattr(cli_worker, "_observed_run", lambda worker, **_: ran.append(worker))
    monkeypatch.setattr(cli_worker, "configure_logging", lambda *_: None)  # the test's own
    result = CliRunner().invoke(
        app,
        [
            "worker",
            "tests.integration.apps.jobs:queue",
            "--declare",  # the app's tasks use "default" only
            "-Q",
            "emails:50,reports:4:threads=4,x",
        ],
        env=WIDE_PLAIN,
    )
    assert result.exit_code == 0, result.output
    [worker] = ran
    assert worker.settings.queues == (
        QueueLimits("emails", concurrency=50),
        QueueLimits("reports", concurrency=4, threads=4),
        "x",
    )
    assert worker.settings.limits("x").concurrency == WorkerSettings().concurrency


def test_the_cli_refuses_a_bad_dash_q_before_loading_the_app() -> None:
    """A bad ``-Q`` exits 2 naming the option, even for an app that cannot be imported."""
    result = CliRunner().invoke(
        app, ["worker", "no.such.module:queue", "-Q", "emails:0"], env=WIDE_PLAIN
    )
    assert result.exit_code == 2
    assert "'--queues' / '-Q'" in result.output
    assert "the concurrency in 'emails:0' must be an integer >= 1" in result.output
