"""Schedules as pure data: triggers, DST days, tick ids, misfire plans, declaration errors."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from aqueue import TaskQueue
from aqueue._core.schedules import (
    Cron,
    Every,
    Mark,
    Schedule,
    SchedulerStatus,
    merge_marks,
    read_marks,
    tick_job_id,
)
from aqueue._results import MemoryResultBackend
from aqueue.exceptions import ConfigurationError

BERLIN = ZoneInfo("Europe/Berlin")


def _at(*fields: int, tz: dt.tzinfo = dt.UTC) -> float:
    return dt.datetime(*fields, tzinfo=tz).timestamp()  # type: ignore[misc, arg-type]


def _utc(instant: float) -> str:
    return dt.datetime.fromtimestamp(instant, dt.UTC).strftime("%m-%d %H:%M")


def _ticks(cron: Cron, start: float, count: int) -> list[str]:
    out, at = [], start
    for _ in range(count):
        at = cron.next_after(at)
        out.append(_utc(at))
    return out


def test_cron_next_after_is_strictly_later_and_in_the_time_zone() -> None:
    """A Berlin 03:00 job runs at 02:00 UTC in winter, strictly after the instant given."""
    cron = Cron("0 3 * * *", "Europe/Berlin")
    at_three = _at(2026, 12, 3, 3, 0, tz=BERLIN)
    assert cron.next_after(at_three - 1) == at_three
    assert cron.next_after(at_three) == at_three + 86400


def test_spring_forward_fixed_time_runs_once_at_the_first_valid_minute() -> None:
    """On 2026-03-29 Berlin skips 02:00-03:00: '30 2 * * *' runs once, at 03:00 CEST."""
    ticks = _ticks(Cron("30 2 * * *", "Europe/Berlin"), _at(2026, 3, 28, 12, 0), 3)
    assert ticks == ["03-29 01:00", "03-30 00:30", "03-31 00:30"]


def test_spring_forward_wildcard_hours_follow_elapsed_time() -> None:
    """'0 * * * *' ticks every real hour through the skipped one (no 02:00 CET exists)."""
    ticks = _ticks(Cron("0 * * * *", "Europe/Berlin"), _at(2026, 3, 28, 23, 30), 4)
    assert ticks == ["03-29 00:00", "03-29 01:00", "03-29 02:00", "03-29 03:00"]


def test_fall_back_fixed_time_runs_once_at_the_first_of_the_two() -> None:
    """On 2026-10-25 02:00-03:00 happens twice in Berlin: '30 2 * * *' runs once (CEST)."""
    ticks = _ticks(Cron("30 2 * * *", "Europe/Berlin"), _at(2026, 10, 24, 12, 0), 2)
    assert ticks == ["10-25 00:30", "10-26 01:30"]


def test_fall_back_wildcard_minutes_run_in_both_copies_of_the_hour() -> None:
    """'*/30 * * * *' ticks every real half hour, in both copies of 02:xx, never backwards."""
    ticks = _ticks(Cron("*/30 * * * *", "Europe/Berlin"), _at(2026, 10, 24, 23, 50), 5)
    assert ticks == ["10-25 00:00", "10-25 00:30", "10-25 01:00", "10-25 01:30", "10-25 02:00"]


def test_every_is_aligned_to_the_epoch() -> None:
    """every=60 ticks on the minute; the latest tick at or before an instant is found."""
    every = Every(60)
    assert every.next_after(_at(2026, 1, 1, 0, 0) + 1) == _at(2026, 1, 1, 0, 1)
    assert every.latest_at_or_before(_at(2026, 1, 1, 0, 5) + 30, after=0) == _at(2026, 1, 1, 0, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 \\* \\* \\* \\*': Bad minute"),
        ({"cron": "* * *"}, "Wrong number of fields"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"every": 0}, "every must be a positive number"),
        ({"every": dt.timedelta(seconds=-5)}, "every must be a positive number"),
        ({}, "give cron=... or every=..., exactly one"),
        ({"cron": "* * * * *", "every": 5}, "exactly one"),
        ({"every": 5, "timezone": "UTC"}, "timezone= is for cron schedules"),
        ({"every": 5, "misfire": "twice"}, "misfire must be 'once' or 'skip'"),
        ({"every": 5, "name": "bad name"}, "schedule name 'bad name'"),
        ({"every": 5, "args": (object(),)}, "not JSON"),
        ({"every": 5, "args": (1, 2)}, "the arguments do not fit"),
    ],
)
def test_bad_schedules_fail_at_declaration(kwargs: dict[str, object], message: str) -> None:
    """Every bad part of a schedule raises ConfigurationError where it is written."""
    queue = TaskQueue("memory://", telemetry=False)

    @queue.task()
    async def job(x: int = 0) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        queue.schedule(job, **kwargs)  # type: ignore[arg-type]


def test_periodic_needs_a_task_without_required_arguments() -> None:
    """@queue.periodic on a task with a required argument fails at declaration."""
    queue = TaskQueue("memory://", telemetry=False)
    with pytest.raises(ConfigurationError, match="the arguments do not fit"):

        @queue.periodic("*/5 * * * *", timezone="Europe/Berlin")
        @queue.task()
        async def needs(user_id: int) -> None: ...


def test_periodic_and_schedule_register_named_schedules() -> None:
    """Two schedules of one task need two names; overlap=False needs a result backend."""
    queue = TaskQueue("memory://", telemetry=False)

    @queue.periodic("*/5 * * * *", timezone="Europe/Berlin")
    @queue.task()
    async def report(kind: str = "short") -> None: ...

    queue.schedule(report, every=dt.timedelta(hours=1), kwargs={"kind": "long"}, name="hourly")
    assert sorted(queue.schedules) == ["hourly", report.name]
    assert queue.schedules["hourly"].trigger == Every(3600.0)
    with pytest.raises(ConfigurationError, match="exists already"):
        queue.schedule(report, every=60)
    with pytest.raises(ConfigurationError, match="overlap=False needs a result backend"):
        queue.schedule(report, every=60, name="x", overlap=False)
    with_backend = TaskQueue("memory://", telemetry=False, results=MemoryResultBackend())
    other = with_backend.task(name="other")(report.fn)
    assert with_backend.schedule(other, every=60, overlap=False).overlap is False


def test_tick_job_ids_are_deterministic() -> None:
    """A tick's job id is the schedule name and the tick in UTC (ms only when not whole)."""
    assert tick_job_id("nightly", _at(2026, 12, 3, 2, 0)) == "nightly@2026-12-03T02:00:00Z"
    assert tick_job_id("fast", _at(2026, 12, 3, 2, 0) + 0.25) == "fast@2026-12-03T02:00:00.250Z"


def _schedule(misfire: str = "once") -> Schedule:
    return Schedule("s", "t", "default", Every(10), misfire=misfire)  # type: ignore[arg-type]


def test_plan_fires_a_tick_on_time() -> None:
    """The tick just due fires, and is not counted as missed."""
    plan = _schedule().plan(cursor=100, now=110.5)
    assert (plan.fire, plan.cursor, plan.missed) == (110, 110, False)
    assert _schedule().plan(cursor=110, now=115).fire is None


def test_plan_once_runs_the_latest_missed_tick_once() -> None:
    """misfire='once': after a gap only the latest tick fires; the earlier ones are missed."""
    plan = _schedule("once").plan(cursor=100, now=165)
    assert (plan.fire, plan.cursor, plan.missed) == (160, 160, True)


def test_plan_skip_runs_no_late_tick() -> None:
    """misfire='skip': a tick later than ON_TIME is not run; an on-time one still is."""
    late = _schedule("skip").plan(cursor=100, now=165)
    assert (late.fire, late.cursor, late.missed) == (None, 160, True)
    on_time = _schedule("skip").plan(cursor=100, now=130.5)
    assert on_time.fire == 130
    assert on_time.missed  # 110 and 120 were never run


def test_marks_merge_to_the_latest_and_round_trip() -> None:
    """Marks from several schedulers merge field by field; the JSON form reads back."""
    merged = merge_marks({"a": Mark(5, 3)}, {"a": Mark(4, 4), "b": Mark(1, 1)})
    assert merged == {"a": Mark(5, 4), "b": Mark(1, 1)}
    status = SchedulerStatus("id", "h", 1, "p", True, 2.0, 5.0, merged)
    assert SchedulerStatus.from_payload(status.to_payload()) == status
    assert read_marks({"a": {"cursor": -1, "fired": 0}, "b": "x"}) == {}


def test_sub_second_intervals_land_on_whole_milliseconds() -> None:
    """every=0.2: the latest tick after a tick is never that tick again (no float drift)."""
    every = Every(0.2)
    tick = 1796306748.6
    assert every.latest_at_or_before(tick + 0.1, after=tick) is None
    assert every.next_after(tick) == 1796306748.8
    assert _schedule_every(0.2).plan(cursor=tick, now=tick + 0.1).fire is None


def _schedule_every(seconds: float) -> Schedule:
    return Schedule("s", "t", "default", Every(seconds))
