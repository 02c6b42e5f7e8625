"""The dashboard's pure parts: the admin credential and CSRF, redaction, history, pages;
the ``redact=`` task option; ``replay(job_ids=)`` and ``scan`` on the memory transport."""

from __future__ import annotations

import base64

import pytest

import aqueue.dashboard
from aqueue import TaskQueue
from aqueue._core import wire as t
from aqueue._core.config import TaskOptions
from aqueue._core.heartbeats import Heartbeat, QueueFigures, QueueRow, Seen, StatsView
from aqueue._dashboard.auth import Admin, parse_auth
from aqueue._dashboard.history import History, sparkline
from aqueue._dashboard.monitor import Letter, Monitor, Snapshot
from aqueue._dashboard.present import REDACTED, arguments_text, trace_id
from aqueue._transport import OutgoingMessage
from aqueue.exceptions import ConfigurationError


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_parse_auth_needs_user_and_password() -> None:
    """``user:password`` splits at the first colon; anything else is refused clearly."""
    assert parse_auth("admin:pa:ss") == ("admin", "pa:ss")
    for bad in ("admin", ":pw", "admin:", ""):
        with pytest.raises(ConfigurationError, match="user:password"):
            parse_auth(bad)


def test_verdicts_of_the_admin_credential() -> None:
    """Read-only without a credential; 401 without or with a wrong one; Basic needs CSRF."""
    assert Admin().verdict(basic("a", "b"), None) == "read-only"
    admin = Admin(basic=("admin", "pw"), token="t" * 16)
    csrf = admin.csrf_token
    assert admin.verdict(None, csrf) == "unauthenticated"
    assert admin.verdict(basic("admin", "nope"), csrf) == "unauthenticated"
    assert admin.verdict("Basic !!!notbase64", csrf) == "unauthenticated"
    assert admin.verdict("Bearer " + "x" * 16, None) == "unauthenticated"
    assert admin.verdict(basic("admin", "pw"), None) == "csrf"
    assert admin.verdict(basic("admin", "pw"), "0" * 64) == "csrf"
    assert admin.verdict(basic("admin", "pw"), csrf) == "ok"
    assert admin.verdict("Bearer " + "t" * 16, None) == "ok"
    assert Admin(basic=("admin", "pw")).csrf_token != csrf  # a secret of its own


def test_a_short_token_is_refused() -> None:
    """A token under 8 characters is too easy to guess."""
    with pytest.raises(ConfigurationError, match="8 characters"):
        Admin(token="short")  # noqa: S106


def test_app_checks_its_arguments_before_connecting() -> None:
    """A bad queue, credential, trace URL or refresh fails at once, naming the fix."""
    queue = TaskQueue("memory://")
    cases: list[tuple[dict[str, object], str]] = [
        ({"auth": "nocolon"}, "user:password"),
        ({"trace_url": "http://jaeger/trace"}, "trace_id"),
        ({"trace_url": "ftp://x/{trace_id}"}, "http"),
        ({"refresh": 0}, "refresh"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            aqueue.dashboard.app(queue, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="TaskQueue"):
        aqueue.dashboard.app("amqp://")  # type: ignore[arg-type]


def test_redact_is_validated_at_decoration() -> None:
    """``redact=`` takes True or parameter names of the task; a bare string is refused."""
    queue = TaskQueue("memory://")

    @queue.task(redact=("password",))
    def login(user: str, password: str) -> None: ...

    assert login.options.redact == ("password",)
    assert TaskOptions(redact=["token"]).redact == ("token",)  # type: ignore[arg-type]
    for bad, message in (("password", "tuple of parameter names"), (("nope",), "no parameter")):
        with pytest.raises(ConfigurationError, match=message):

            @queue.task(name=f"bad-{bad}", redact=bad)  # type: ignore[arg-type]
            def other(user: str, password: str) -> None: ...

    @queue.task(name="kw", redact=("anything",))
    def loose(**kwargs: object) -> None: ...  # **kwargs: any name may come

    assert loose.options.redact == ("anything",)


def test_arguments_are_redacted_by_name_and_position() -> None:
    """A redacted parameter is hidden whether passed by position or by keyword."""
    queue = TaskQueue("memory://")

    @queue.task(redact=("password",))
    def login(user: str, password: str, note: str = "") -> None: ...

    @queue.task(redact=True)
    def secret(value: str) -> None: ...

    by_position = arguments_text(login, b'{"args": ["ann", "pw1"], "kwargs": {"note": "<b>"}}')
    assert "pw1" not in by_position
    assert REDACTED in by_position
    assert "<b>" in by_position  # text: the template escapes it
    by_keyword = arguments_text(login, b'{"args": ["ann"], "kwargs": {"password": "pw2"}}')
    assert "pw2" not in by_keyword
    assert arguments_text(secret, b'{"args": ["x"], "kwargs": {}}') == f'"{REDACTED}"'
    assert '"x"' in arguments_text(None, b'{"args": ["x"], "kwargs": {}}')
    assert arguments_text(None, b"not json") == "(not JSON arguments)"
    assert arguments_text(None, b"[1]") == "(not JSON arguments)"


def test_trace_id_of_a_traceparent() -> None:
    """A valid W3C traceparent gives its trace id; anything else gives None."""
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id({"traceparent": good}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in ("garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", 3):
        assert trace_id({"traceparent": bad}) is None
    assert trace_id({}) is None


def row(name: str, ready: int) -> QueueRow:
    return QueueRow(name, ready, 0, 1, 1, None, 2.0, None, 0.5, None)


def test_history_keeps_one_point_per_step_for_the_span() -> None:
    """Points are due every step; the oldest beyond the span are dropped."""
    history = History(span=30, step=10)
    assert history.due(0.0)
    for at in (0.0, 10.0, 20.0, 30.0, 40.0):
        assert history.due(at)
        history.record(StatsView((row("emails", int(at)),), ()), at)
        assert not history.due(at + 5)
    assert [p.ready for p in history.points("emails", 40.0)] == [10, 20, 30, 40]
    assert history.points("other", 40.0) == []


def test_sparkline_scales_to_the_box() -> None:
    """Fewer than two known values draw nothing; the highest one touches the top."""
    assert sparkline([]) == ""
    assert sparkline([None, 3]) == ""
    line = sparkline([0, None, 4], width=100, height=10)
    assert line == "0.0,9.0 100.0,1.0"


def letter(index: int) -> Letter:
    return Letter(f"job-{index}", "t", "failed", "worker", None, None, 1, None, None)


def test_snapshot_pages_newest_first() -> None:
    """Page 0 holds the newest; an offset past the end is empty."""
    snapshot = Snapshot(5, [letter(i) for i in range(5)], reading=False)
    assert [x.job_id for x in snapshot.page(0, 2)] == ["job-4", "job-3"]
    assert [x.job_id for x in snapshot.page(4, 2)] == ["job-0"]
    assert snapshot.page(5, 2) == []


async def test_replay_takes_only_the_named_jobs_and_scan_reads_all(
    memory_queue: TaskQueue,
) -> None:
    """``replay(job_ids=...)`` replays those, in place for the others; ``scan`` sees all."""
    async with memory_queue.session() as session:
        await session.producer.declare_queue("default")
        for index in range(4):
            await session.transport.publish(
                OutgoingMessage(
                    session.names.dead_letter_exchange,
                    "default",
                    b'{"args": [], "kwargs": {}}',
                    f"job-{index}",
                    {t.HEADER_DEAD_REASON: "failed", t.HEADER_TASK: "x"},
                ),
                timeout=5,
            )
        dlq = memory_queue.dead_letters()
        result = await dlq.replay(job_ids={"job-1", "job-3"})
        assert (result.replayed, result.skipped) == (2, 2)
        seen: list[str] = []
        await dlq.scan(lambda dead: seen.append(dead.job_id))
        assert seen == ["job-0", "job-2"]
        assert (await dlq.replay(job_ids=[])).replayed == 0
        for bad in ("job-0", [""], 3):
            with pytest.raises(ConfigurationError, match="job_ids"):
                await dlq.replay(job_ids=bad)  # type: ignore[arg-type]


def test_heartbeats_feed_the_history_one_point_per_step() -> None:
    """Each heartbeat due a point records every queue's ready, out/s and wait p95."""
    queue = TaskQueue("memory://")
    monitor = Monitor(queue, History(span=60, step=5))
    monitor.collector.prefix = "aqueue"

    def seen(at: float, ready: int) -> Seen:
        figures = QueueFigures(concurrency=4, ready=ready, settled_per_s=2.0, wait_p95=0.25)
        beat = Heartbeat("w1", "host", 1, "aqueue", 4, 0.0, at, 1.0, {"emails": figures})
        return Seen(beat, at)

    for at, ready in ((100.0, 7), (102.0, 6), (105.0, 3), (110.0, 0)):
        item = seen(at, ready)
        monitor.collector.seen.append(item)
        monitor._heard(item)
    points = monitor.history.points("emails", 110.0)
    assert [(p.at, p.ready, p.out_per_s, p.wait_p95) for p in points] == [
        (100.0, 7, 2.0, 0.25),
        (105.0, 3, 2.0, 0.25),
        (110.0, 0, 2.0, 0.25),
    ]
