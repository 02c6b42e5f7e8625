"""Schedules as pure data: cron and interval triggers, tick ids, and what a late tick does.

The only module that imports ``cronsim`` (cron expressions are parsed by it, never by hand)
and reads time zones (``zoneinfo``). No clock: every function takes the instant it reasons
about, as seconds since the Unix epoch, so daylight saving time is tested with plain values.

Daylight saving time follows cronsim's documented rules, which are Debian cron's: with a
time zone, a 5-field expression naming a fixed minute and hour (``30 2 * * *``) runs once
on the day the clocks go forward (at the first valid minute after the skipped one, 03:00)
and once on the day they go back (at the first of the two 02:30s); an expression with a
wildcard minute or hour (``*/30 * * * *``) follows elapsed time, so it runs in both copies
of a repeated hour and not at all in a skipped one. An interval (``every=``) is elapsed
time, aligned to the Unix epoch, and knows nothing of time zones.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from cronsim import CronSim, CronSimError

from aqueue._core.checks import is_number
from aqueue._core.types import JSONScalar, JSONValue
from aqueue.exceptions import ConfigurationError

#: What happens to ticks that were due while no scheduler ran (or the leader changed):
#: ``"once"`` runs the latest missed tick once, ``"skip"`` runs none of them.
Misfire: TypeAlias = Literal["skip", "once"]
MISFIRES: tuple[Misfire, ...] = ("skip", "once")
#: A tick started less than this many seconds after its time is on time, not missed: a
#: scheduler's loop wakes a little late, and a new leader takes over within about a second.
ON_TIME = 2.0
#: The shortest interval of ``every=``; a tick's id is made of its time in milliseconds.
MIN_EVERY = 0.001
#: A cron search gives up after this many candidates (``0 0 30 2 *`` would never match).
_MAX_CANDIDATES = 10_000
_NAME = re.compile(r"^[^\s@]+$")
MAX_NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression (5 fields, or 6 with seconds first) in a time zone.

    Raises:
        ConfigurationError: the expression does not parse, or the time zone is unknown.
    """

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        expression: object = self.expression
        if not isinstance(expression, str) or not expression.strip():
            raise ConfigurationError(f"a cron expression must be a string, not {expression!r}")
        zone = _zone(self.timezone)
        try:
            CronSim(self.expression, dt.datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as exc:
            raise ConfigurationError(
                f"bad cron expression {self.expression!r}: {str(exc) or 'cannot parse it'} "
                "(5 fields: minute hour day-of-month month day-of-week, e.g. '*/5 * * * *')"
            ) from exc

    def __str__(self) -> str:
        return f"cron {self.expression!r} ({self.timezone})"

    def next_after(self, instant: float) -> float:
        """The first tick strictly after `instant` (Unix seconds).

        Raises:
            ConfigurationError: no tick within 10,000 candidates (an impossible date).
        """
        zone = _zone(self.timezone)
        start = dt.datetime.fromtimestamp(math.floor(instant), zone)
        for count, candidate in enumerate(CronSim(self.expression, start)):
            at = candidate.timestamp()
            if at > instant:
                return at
            if count > _MAX_CANDIDATES:
                break
        raise ConfigurationError(f"{self} has no time after {instant}")  # pragma: no cover

    def latest_at_or_before(self, instant: float, *, after: float) -> float | None:
        """The latest tick in (`after`, `instant`], or None (walking forward from `after`)."""
        latest = None
        at = after
        for _ in range(_MAX_CANDIDATES):
            at = self.next_after(at)
            if at > instant:
                return latest
            latest = at
        # more missed ticks than that: take the newest by walking back from `instant`
        zone = _zone(self.timezone)
        end = dt.datetime.fromtimestamp(math.floor(instant), zone)
        for candidate in CronSim(self.expression, end, reverse=True):  # pragma: no branch
            if candidate.timestamp() <= instant:
                return candidate.timestamp()
        return latest  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Every:
    """An interval in seconds, aligned to the Unix epoch (every=60 ticks on the minute).

    Raises:
        ConfigurationError: not a positive number of seconds.
    """

    seconds: float

    def __post_init__(self) -> None:
        if not is_number(self.seconds, at_least=MIN_EVERY):
            raise ConfigurationError(
                f"every must be a positive number of seconds (at least {MIN_EVERY}) or a "
                f"timedelta, not {self.seconds!r}"
            )

    def __str__(self) -> str:
        return f"every {self.seconds:g}s"

    # in whole milliseconds: float multiples of 0.2 s do not land on the ticks they name

    @property
    def _step_ms(self) -> int:
        return max(1, round(self.seconds * 1000))

    def next_after(self, instant: float) -> float:
        """The first tick strictly after `instant`."""
        step = self._step_ms
        return (round(instant * 1000) // step + 1) * step / 1000

    def latest_at_or_before(self, instant: float, *, after: float) -> float | None:
        """The latest tick in (`after`, `instant`], or None."""
        step = self._step_ms
        latest = round(instant * 1000) // step * step
        return latest / 1000 if latest > round(after * 1000) else None


Trigger: TypeAlias = Cron | Every


def _zone(name: object) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"timezone must be an IANA name such as 'UTC', not {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"unknown timezone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from exc


def trigger(cron: str | None, every: float | dt.timedelta | None, timezone: str | None) -> Trigger:
    """The trigger `queue.schedule` describes: exactly one of `cron` and `every`.

    Raises:
        ConfigurationError: both or neither, a bad expression, interval or time zone.
    """
    if (cron is None) == (every is None):
        raise ConfigurationError("give cron=... or every=..., exactly one")
    if cron is not None:
        return Cron(cron, "UTC" if timezone is None else timezone)
    if timezone is not None:
        raise ConfigurationError("timezone= is for cron schedules; every= is elapsed time")
    seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
    return Every(seconds)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule of one task.

    Attributes:
        name: unique among the app's schedules; with the tick time, it makes the job id.
        task: the task's registered name.
        queue: the logical queue of its jobs.
        trigger: when it ticks.
        args: positional arguments of every job (JSON).
        kwargs: keyword arguments of every job (JSON).
        misfire: what to do with ticks missed while no scheduler ran: ``"once"`` (default:
            run the latest of them once) or ``"skip"``.
        overlap: False: a tick whose previous run has not finished is skipped (needs a
            result backend, which knows).
    """

    name: str
    task: str
    queue: str
    trigger: Trigger
    args: tuple[JSONValue, ...] = ()
    kwargs: Mapping[str, JSONValue] = field(default_factory=dict)
    misfire: Misfire = "once"
    overlap: bool = True
    #: the task's per-job options (`Task.with_options`), sent with every job
    options: Mapping[str, JSONScalar] = field(default_factory=dict)
    #: the task's ``store_result`` and ``result_ttl``: whether (and how long) the scheduler
    #: records each job as queued
    store_result: bool = True
    result_ttl: float | None = None

    def __post_init__(self) -> None:
        name: object = self.name
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME_CHARS:
            raise ConfigurationError(
                f"schedule name {name!r} must be 1 to {MAX_NAME_CHARS} characters, with no "
                "space and no '@' (the job ids are NAME@TIME)"
            )
        if self.misfire not in MISFIRES:
            raise ConfigurationError(f"misfire must be 'once' or 'skip', not {self.misfire!r}")
        if not isinstance(self.overlap, bool):
            raise ConfigurationError(f"overlap must be True or False, not {self.overlap!r}")

    def job_id(self, tick: float) -> str:
        """The id of this schedule's job for `tick`: the same in every scheduler."""
        return tick_job_id(self.name, tick)

    def plan(self, cursor: float, now: float) -> Plan:
        """What to do at `now`, the ticks up to `cursor` being handled already."""
        latest = self.trigger.latest_at_or_before(now, after=cursor)
        if latest is None:
            return Plan(fire=None, cursor=cursor, missed=False)
        late = now - latest > ON_TIME
        earlier = self.trigger.next_after(cursor) < latest  # ticks before the latest, unrun
        missed = late or earlier
        fire = latest if not late or self.misfire == "once" else None
        return Plan(fire=fire, cursor=latest, missed=missed)


def tick_job_id(name: str, tick: float) -> str:
    """``{name}@{tick in UTC, ISO 8601}``, e.g. ``nightly@2026-12-03T02:00:00Z``."""
    ms = round(tick * 1000)
    when = dt.datetime.fromtimestamp(ms // 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{ms % 1000:03d}" if ms % 1000 else ""
    return f"{name}@{when}{fraction}Z"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a scheduler does with one schedule now.

    Attributes:
        fire: the tick to run now (Unix seconds), or None.
        cursor: the last tick handled once this plan is carried out.
        missed: some ticks were missed (late past `ON_TIME`, or earlier ones never run).
    """

    fire: float | None
    cursor: float
    missed: bool


@dataclass(frozen=True, slots=True)
class Mark:
    """What is known of one schedule's runs (ms since the Unix epoch; 0: none).

    Attributes:
        cursor: the last tick handled (run or skipped).
        fired: the last tick run.
    """

    cursor: int = 0
    fired: int = 0

    def merge(self, other: Mark) -> Mark:
        """The later of each field: marks from several schedulers never go back in time."""
        return Mark(max(self.cursor, other.cursor), max(self.fired, other.fired))


def merge_marks(*marks: Mapping[str, Mark]) -> dict[str, Mark]:
    """Merge marks by schedule name (the later of each field wins)."""
    merged: dict[str, Mark] = {}
    for mapping in marks:
        for name, mark in mapping.items():
            merged[name] = merged[name].merge(mark) if name in merged else mark
    return merged


def marks_payload(marks: Mapping[str, Mark]) -> dict[str, dict[str, int]]:
    """The JSON form of marks (in the leader token and the scheduler's notices)."""
    return {name: {"cursor": m.cursor, "fired": m.fired} for name, m in sorted(marks.items())}


def read_marks(payload: object) -> dict[str, Mark]:
    """Marks from their JSON form; what does not parse is left out (a newer writer)."""
    if not isinstance(payload, dict):
        return {}
    marks = {}
    for name, value in payload.items():
        if not isinstance(value, dict):
            continue
        cursor, fired = value.get("cursor"), value.get("fired")
        if _is_ms(cursor) and _is_ms(fired):
            marks[str(name)] = Mark(cursor, fired)  # type: ignore[arg-type]
    return marks


def _is_ms(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ScheduleBook(Mapping[str, Schedule]):
    """The app's schedules by name (a read-only mapping, plus `add`)."""

    def __init__(self) -> None:
        self._schedules: dict[str, Schedule] = {}

    def add(self, schedule: Schedule) -> None:
        """Add a schedule.

        Raises:
            ConfigurationError: the name is taken.
        """
        if schedule.name in self._schedules:
            raise ConfigurationError(
                f"a schedule named {schedule.name!r} exists already; pass name=... to tell "
                "several schedules of one task apart"
            )
        self._schedules[schedule.name] = schedule

    def __getitem__(self, name: str) -> Schedule:
        return self._schedules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._schedules)

    def __len__(self) -> int:
        return len(self._schedules)


# -- what schedulers say about themselves ------------------------------------------------------

#: Scheduler notices are routed ``scheduler.{scheduler_id}`` on the control exchange.
STATUS_ROUTING_PREFIX = "scheduler."
STATUS_BINDING = "scheduler.#"
STATUS_VERSION = 1


@dataclass(frozen=True, slots=True)
class SchedulerStatus:
    """One scheduler's notice: who it is, whether it leads, and the marks it knows.

    Sent on the control exchange every few seconds, and by the leader after every tick it
    runs, so followers know the marks a new leader starts from, and ``aqueue schedules``
    knows which process leads.
    """

    scheduler_id: str
    host: str
    pid: int
    prefix: str
    leader: bool
    sent_at: float
    interval: float
    marks: Mapping[str, Mark] = field(default_factory=dict)
    stopping: bool = False

    @property
    def routing_key(self) -> str:
        return STATUS_ROUTING_PREFIX + self.scheduler_id

    def to_payload(self) -> dict[str, JSONValue]:
        """The JSON object that is published (schema version `STATUS_VERSION`)."""
        return {
            "version": STATUS_VERSION,
            "scheduler_id": self.scheduler_id,
            "host": self.host,
            "pid": self.pid,
            "prefix": self.prefix,
            "leader": self.leader,
            "sent_at": self.sent_at,
            "interval": self.interval,
            "marks": marks_payload(self.marks),  # type: ignore[dict-item]
            "stopping": self.stopping,
        }

    @classmethod
    def from_payload(cls, payload: object) -> SchedulerStatus:
        """Read a decoded notice.

        Raises:
            ValueError: not a version 1 scheduler notice.
        """
        if not isinstance(payload, dict) or payload.get("version") != STATUS_VERSION:
            raise ValueError("not a version 1 scheduler notice")
        try:
            return cls(
                scheduler_id=str(payload["scheduler_id"]),
                host=str(payload["host"]),
                pid=int(payload["pid"]),
                prefix=str(payload["prefix"]),
                leader=payload["leader"] is True,
                sent_at=float(payload["sent_at"]),
                interval=float(payload["interval"]),
                marks=read_marks(payload.get("marks")),
                stopping=payload.get("stopping") is True,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad scheduler notice: {exc}") from exc
