"""Flow control as data: rate limits, concurrency caps, fair share and unique jobs (pure).

What a task declares (``@queue.task(rate_limit="100/m", max_concurrency=5, ...)``) and what a
job carries through ``task.with_options(job_id=..., unique_for=..., tenant=...)``, validated
where it is given; the arithmetic of the limiter (GCRA, the deferral backoff) with the clock
passed in. The stores that keep the limiter state are in `aqueue._results.flow`, the worker's
gate in `aqueue._worker.flow`; the guarantees and bounds are on the flow-control page.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from aqueue._core.checks import is_number, is_whole
from aqueue._core.delays import MAX_DELAY_SECONDS
from aqueue._core.topology import TopologyNames
from aqueue.exceptions import ConfigurationError

#: Seconds in each unit a rate limit may be given per.
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|h)\s*$")
#: Longest job id a caller may give: it is the AMQP ``message_id`` (a short string).
MAX_JOB_ID_BYTES = 200
_JOB_ID = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces
#: Shards of a fair-share queue (see `fair_shards`): 16 sub-queues, each tenant on 2 of them.
FAIR_SHARDS = 16
FAIR_CHOICES = 2
#: Seconds before its reserved start that a rate-deferred copy is due back from the delay
#: levels: it waits the rest in the worker that receives it (`aqueue._worker.parking`), so
#: that the delay levels' lateness under load (up to a second measured on a busy 2-core
#: machine) does not move its start.
RATE_LANDING_LEAD = 2.0
#: The deferral of a job over a concurrency cap: from the first delay, doubling per deferral
#: of the same job, up to the longest (jittered by the caller).
CONCURRENCY_DEFER_MIN = 0.1
CONCURRENCY_DEFER_MAX = 2.0


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: `count` job starts per `period` seconds, `burst` of them at once.

    Attributes:
        count: starts allowed per period.
        period: the period in seconds.
        burst: starts allowed back to back before the limit spaces them (at least 1).
        text: the limit as it was written (``"100/m"``).
    """

    count: int
    period: float
    burst: int = 1
    text: str = ""

    @property
    def interval(self) -> float:
        """Seconds between two starts at the steady rate (GCRA's emission interval)."""
        return self.period / self.count


def parse_rate(text: object, burst: object = None) -> Rate:
    """Read ``"N/s"``, ``"N/m"``, ``"N/h"`` (or ``"N/10s"``: per ten seconds).

    Raises:
        ConfigurationError: not such a string, a count of 0, or a bad burst.
    """
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or not isinstance(text, str):
        raise ConfigurationError(
            f"rate_limit must be a string like '100/m' (per s, m or h; '10/5s' per five "
            f"seconds), not {text!r}"
        )
    count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
    if count < 1 or multiple < 1:
        raise ConfigurationError(f"rate_limit {text!r} must allow at least 1 per period")
    period = multiple * _PERIODS[unit]
    if period / count > MAX_DELAY_SECONDS:
        raise ConfigurationError(f"rate_limit {text!r} is slower than one per ~31 days")
    chosen: object = 1 if burst is None else burst
    if not is_whole(chosen, at_least=1, at_most=1_000_000):
        raise ConfigurationError(
            f"rate_limit_burst must be an integer from 1 to 1000000, not {burst!r}"
        )
    return Rate(count, period, chosen, text.strip())


def gcra(tat: float, now: float, interval: float, burst: int) -> tuple[float, float]:
    """One start under GCRA: the wait before it may start, and the new theoretical arrival time.

    Every call reserves a start: a job told to wait is *scheduled* at ``now + wait`` (it goes
    round the broker's delay levels and runs then without asking again), so a backlog drains
    at the steady rate with each job deferred once, never in a requeue loop.
    """
    tat = max(tat, now)
    start = tat - (burst - 1) * interval
    return max(0.0, start - now), float(tat + interval)


def concurrency_defer(deferrals: int) -> float:
    """Seconds a job over a concurrency cap waits before it asks again (before jitter)."""
    doubled: float = CONCURRENCY_DEFER_MIN * 2.0 ** min(deferrals, 16)
    return min(doubled, CONCURRENCY_DEFER_MAX)


class FlowOptionsDict(TypedDict, total=False):
    """The flow-control options of ``@queue.task(...)`` (see `FlowLimits`)."""

    rate_limit: str | None
    rate_limit_burst: int | None
    rate_limit_key: str | None
    max_concurrency: int | None
    concurrency_key: str | None
    fair_key: str | None


FLOW_OPTION_NAMES = frozenset(FlowOptionsDict.__annotations__)


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """A task's flow control: at most so many starts per period, so many running, fair share.

    Attributes:
        rate: starts per period across every worker (with a Redis result backend; per worker
            otherwise); None for no limit.
        rate_key: the name of a parameter whose value gets its own rate limit (one per
            tenant); None: one limit for the task.
        max_concurrency: jobs of the task running at once across every worker (per key with
            `concurrency_key`); None for no cap. Needs a result backend.
        concurrency_key: the parameter whose value gets its own cap.
        fair_key: the parameter whose value is the job's tenant for fair share: its jobs are
            spread over sub-queues so that one tenant's flood does not delay the others.
    """

    rate: Rate | None = None
    rate_key: str | None = None
    max_concurrency: int | None = None
    concurrency_key: str | None = None
    fair_key: str | None = None

    @property
    def active(self) -> bool:
        """Whether the worker must look at the task's jobs before running them."""
        return self.rate is not None or self.max_concurrency is not None

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> FlowLimits:
        """Read the decorator's flow options (names in `FLOW_OPTION_NAMES`).

        Raises:
            ConfigurationError: a bad limit string, count or key name; a key without its limit.
        """
        rate_text = options.get("rate_limit")
        burst = options.get("rate_limit_burst")
        rate = None if rate_text is None else parse_rate(rate_text, burst)
        if rate is None and burst is not None:
            raise ConfigurationError("rate_limit_burst needs a rate_limit")
        cap = options.get("max_concurrency")
        if cap is not None and not is_whole(cap, at_least=1, at_most=1_000_000):
            raise ConfigurationError(
                f"max_concurrency must be an integer from 1 to 1000000, not {cap!r}"
            )
        keys = {
            name: _key_name(options.get(name), name)
            for name in ("rate_limit_key", "concurrency_key", "fair_key")
        }
        if keys["rate_limit_key"] is not None and rate is None:
            raise ConfigurationError("rate_limit_key needs a rate_limit")
        if keys["concurrency_key"] is not None and cap is None:
            raise ConfigurationError("concurrency_key needs a max_concurrency")
        return cls(
            rate=rate,
            rate_key=keys["rate_limit_key"],
            max_concurrency=cap,
            concurrency_key=keys["concurrency_key"],
            fair_key=keys["fair_key"],
        )

    def key_names(self) -> dict[str, str]:
        """The option name of each key parameter given (to check them against the function)."""
        given = {
            "rate_limit_key": self.rate_key,
            "concurrency_key": self.concurrency_key,
            "fair_key": self.fair_key,
        }
        return {option: name for option, name in given.items() if name is not None}


#: No flow control: the default of every task.
NO_FLOW_LIMITS = FlowLimits()


def _key_name(value: object, option: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isidentifier():
        raise ConfigurationError(f"{option} must name a parameter of the task, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """What ``task.with_options`` sets for the enqueue itself (not for the run).

    Attributes:
        job_id: the id of the job (its idempotency key); None: a fresh one per enqueue.
        unique_for: seconds during which enqueueing the same job again returns the first
            one's handle and publishes nothing; None: no deduplication.
        unique_key: what "the same job" means; None: the task name and the arguments.
        tenant: the job's tenant for fair share, instead of the task's `fair_key` argument.
    """

    job_id: str | None = None
    unique_for: float | None = None
    unique_key: str | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        if self.unique_for is not None and not is_number(
            self.unique_for, above=0, at_most=MAX_DELAY_SECONDS
        ):
            raise ConfigurationError(
                f"unique_for must be a positive number of seconds (at most ~31 days), not "
                f"{self.unique_for!r}"
            )
        for name in ("unique_key", "tenant"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"{name} must be a non-empty string, not {value!r}")
        if self.unique_key is not None and self.unique_for is None:
            raise ConfigurationError("unique_key needs unique_for (the window, in seconds)")


class EnqueueOptionsDict(TypedDict, total=False):
    """The enqueue options of ``task.with_options(...)`` (see `EnqueueOptions`)."""

    job_id: str | None
    unique_for: float | None
    unique_key: str | None
    tenant: str | None


ENQUEUE_OPTION_NAMES = frozenset(EnqueueOptionsDict.__annotations__)


def check_job_id(job_id: object) -> None:
    """Check a caller's job id: printable ASCII without spaces, at most 200 bytes.

    Raises:
        ConfigurationError: anything else.
    """
    if job_id is None:
        return
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id) or len(job_id) > MAX_JOB_ID_BYTES:
        raise ConfigurationError(
            f"job_id must be printable ASCII without spaces, 1 to {MAX_JOB_ID_BYTES} "
            f"characters, not {job_id!r}"
        )


def key_value(value: object) -> str:
    """The text of a key argument's value (``tenant_id=42`` and ``"42"`` share a key)."""
    if value is None or isinstance(value, bool | int | float | str):
        return str(value)
    return repr(value)


def limiter_key(task: str, key: str | None) -> str:
    """The name a limit is kept under: the task, and the key's value if the limit is keyed."""
    return task if key is None else f"{task}|{key}"


def fair_shards(tenant: str, digest: int, *, shards: int = FAIR_SHARDS) -> tuple[int, int]:
    """The two shards (of `shards`) of a tenant, from a stable hash of it (`digest`).

    Shuffle sharding: two tenants share both shards with probability 1 / C(shards, 2)
    (1 in 120 with 16 shards); the producer sends each job to the less full of the two.
    """
    first = digest % shards
    second = (first + 1 + (digest // shards) % (shards - 1)) % shards
    return first, second


@functools.lru_cache(maxsize=4096)  # a batch of one tenant hashes it once
def tenant_shards(tenant: str, *, shards: int = FAIR_SHARDS) -> tuple[int, int]:
    """The two shards of `tenant`: the same in every process and every Python version.

    A stable hash (BLAKE2b of the tenant's UTF-8 text), not `hash`, which is salted per
    process: every producer must send one tenant to the same two shards.
    """
    digest = int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big")
    return fair_shards(tenant, digest, shards=shards)


def pick_shards(
    tenants: Sequence[str], ready: MutableMapping[int, int], *, shards: int = FAIR_SHARDS
) -> list[int]:
    """The shard of each job, in order: the emptier of its tenant's two (ties: the first).

    `ready` holds the ready count of each shard as last read; each job picked is counted in
    it, so one batch of a tenant's jobs fills its two shards evenly rather than one.
    """
    picked = []
    for tenant in tenants:
        first, second = tenant_shards(tenant, shards=shards)
        shard = second if ready.get(second, 0) < ready.get(first, 0) else first
        ready[shard] = ready.get(shard, 0) + 1
        picked.append(shard)
    return picked


def fair_queue(names: TopologyNames, queue: str, shard: int) -> str:
    """The broker name of shard `shard` of a logical queue's fair share."""
    return f"{names.work_queue(queue)}.fair.{shard}"


def fair_destination(queue: str, shard: int) -> str:
    """The routing destination of a fair shard (what the delay levels spell after the bits)."""
    return f"{queue}.fair.{shard}"


def shard_of(names: TopologyNames, queue: str, broker_queue: str) -> str | None:
    """The fair destination a delivery from `broker_queue` came through; None if no shard."""
    head = f"{names.work_queue(queue)}.fair."
    shard = broker_queue.removeprefix(head)
    if shard == broker_queue or not shard.isdigit() or int(shard) >= FAIR_SHARDS:
        return None
    return fair_destination(queue, int(shard))


def fair_prefetch(prefetch: int) -> int:
    """The prefetch of each fair shard's consumer: half the queue's, at least 1.

    A tenant's jobs are on two shards, so one tenant alone can still fill the queue's
    runners, while every other shard keeps room for its own deliveries.
    """
    return max(1, math.ceil(prefetch / FAIR_CHOICES))
