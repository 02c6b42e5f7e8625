"""Settings and options as frozen dataclasses, validated where they are given (pure, no I/O).

Every default is written once, here; the `TaskQueue` constructor and the CLI take theirs from
these classes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict

from aqueue._core.checks import is_number, is_whole
from aqueue._core.delays import MAX_DELAY_SECONDS
from aqueue._core.flow import (
    ENQUEUE_OPTION_NAMES,
    FLOW_OPTION_NAMES,
    NO_FLOW_LIMITS,
    EnqueueOptionsDict,
    FlowLimits,
    FlowOptionsDict,
)
from aqueue._core.heartbeats import HEARTBEAT_INTERVAL
from aqueue._core.retry import RetryPolicy
from aqueue._core.topology import QueueType, validate_name
from aqueue._core.types import JSONScalar
from aqueue.exceptions import ConfigurationError

DEFAULT_URL = "amqp://guest:guest@localhost/"
DEFAULT_PREFIX = "aqueue"
DEFAULT_QUEUE = "default"
#: Retries a ``raise Retry()`` gets when the task sets no ``retries`` (Celery's default too).
RETRY_SIGNAL_RETRIES = 3
#: Bounds of run-time numbers, so no value can overflow a header or a delay on the way.
MAX_RETRIES = 10_000
MAX_TIMEOUT = 1e9


#: What a worker does with a job delivered after its deadline (``expires``).
OnExpire = Literal["dead-letter", "drop"]
ON_EXPIRE: tuple[OnExpire, ...] = ("dead-letter", "drop")

#: Where a plain (sync) task function runs: a thread of the worker, or a process of its pool.
Executor = Literal["thread", "process"]
EXECUTORS: tuple[Executor, ...] = ("thread", "process")


class TaskOverridesDict(TypedDict, total=False):
    """The run-time options `task.with_options(...)` accepts (see `TaskOptions`)."""

    queue: str
    timeout: float | None
    retries: int | None
    backoff: float
    max_backoff: float
    jitter: float
    expires: float | dt.datetime | None
    on_expire: OnExpire


class TaskOptionsDict(TaskOverridesDict, FlowOptionsDict, total=False):
    """The keyword options `@queue.task(...)` accepts: the overrides, a name, `retry_on`, flow."""

    name: str
    retry_on: tuple[type[BaseException], ...]
    store_result: bool
    result_ttl: float | None
    executor: Executor
    redact: bool | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task runs.

    Attributes:
        queue: the logical queue its jobs are sent to.
        timeout: seconds a run may take before it is cancelled and counted as a failure;
            ``None`` for no limit. A plain (sync) function cannot be interrupted: on timeout
            the worker stops waiting for its thread, which runs on to its end.
        retries: how many times a failed run is retried (0: never, not even on
            ``raise Retry()``); then the job is dead-lettered with its history. Unset
            (``None``): failures are not retried, but ``raise Retry()`` is, up to
            `RETRY_SIGNAL_RETRIES` times.
        backoff: seconds before the first retry; each later one waits twice as long (at most
            the longest delay, about 31 days).
        max_backoff: cap on one retry delay, in seconds (at most the longest delay).
        jitter: share of each retry delay that is random (0 to 1), so jobs that failed
            together do not all come back together.
        retry_on: exception types that are retried; others are dead-lettered at once.
        store_result: keep this task's job states and results in the result backend (when
            the queue has one); False for jobs nobody awaits, to save the writes.
        executor: where a plain function runs: ``"thread"`` (a thread of the worker's
            per-queue budget) or ``"process"`` (a separate process, for CPU-bound work that
            would hold the GIL; at most one per CPU at a time). A process job that times out
            or is cancelled has its process killed. Not per job: `with_options` cannot
            change it.
        flow: rate limit, concurrency cap and fair share (given to ``@queue.task`` as
            ``rate_limit=``, ``max_concurrency=``, ``fair_key=``, ...; see the flow-control
            page). Not per job.
        expires: a deadline for every job: seconds after it is enqueued, or an aware
            datetime. A job delivered after it is not run (see `on_expire`), and a retry that
            would be due after it is not sent. ``None``: never.
        on_expire: ``"dead-letter"`` (the job goes to the dead-letter queue with reason
            ``expired``) or ``"drop"`` (acked and counted in the ``expired`` metric).
        result_ttl: seconds this task's states and results are kept; ``None``: the
            `TaskQueue`'s ``result_ttl``.
        redact: what the dashboard hides of this task's arguments: the names of parameters
            whose values it shows as ``[redacted]`` (positional arguments are matched to
            parameter names), or ``True`` to hide every argument. Applied before the
            arguments are kept in the job's state (a redacted value is never stored in the
            result backend); the job's message still carries them to the worker.
    """

    queue: str = DEFAULT_QUEUE
    timeout: float | None = None
    retries: int | None = None
    backoff: float = 1.0
    max_backoff: float = 3600.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    store_result: bool = True
    executor: Executor = "thread"
    flow: FlowLimits = NO_FLOW_LIMITS
    expires: float | dt.datetime | None = None
    on_expire: OnExpire = "dead-letter"
    result_ttl: float | None = None
    redact: bool | tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_name(self.queue)
        _check_redact(self.redact)
        given: object = self.redact  # run-time input: a list is taken too
        if isinstance(given, list):
            object.__setattr__(self, "redact", tuple(given))
        _check_expiry(self.expires, self.on_expire)
        if self.result_ttl is not None and not is_number(self.result_ttl, above=0):
            raise ConfigurationError(
                f"result_ttl must be a positive number of seconds or None, not {self.result_ttl!r}"
            )
        if self.executor not in EXECUTORS:
            raise ConfigurationError(
                f"executor must be 'thread' or 'process', not {self.executor!r}"
            )
        if self.timeout is not None and not is_number(self.timeout, above=0, at_most=MAX_TIMEOUT):
            raise ConfigurationError(
                f"timeout must be a positive number of seconds up to {MAX_TIMEOUT:g} or None, "
                f"not {self.timeout!r}"
            )
        retries: object = self.retries
        if retries is not None and not is_whole(retries, at_least=0, at_most=MAX_RETRIES):
            raise ConfigurationError(
                f"retries must be an integer from 0 to {MAX_RETRIES}, or None, not {retries!r}"
            )
        self.retry_policy()  # validates the backoff options

    def retry_policy(self) -> RetryPolicy:
        """The retry policy these options describe.

        Raises:
            ConfigurationError: a backoff option has a bad value.
        """
        return RetryPolicy(
            max_attempts=(self.retries or 0) + 1,
            signal_attempts=(RETRY_SIGNAL_RETRIES if self.retries is None else self.retries) + 1,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            jitter=self.jitter,
            retry_on=self.retry_on,
        )

    def overrides(self, changed: Mapping[str, object]) -> dict[str, JSONScalar]:
        """The per-job options among `changed` names, with these options' values.

        What `task.with_options(...)` changed and the worker must see: they travel with each
        job in the ``aqueue-options`` header.
        """
        return {key: getattr(self, key) for key in PER_JOB_OPTIONS if key in changed}

    def with_overrides(self, overrides: Mapping[str, JSONScalar]) -> TaskOptions:
        """These options with the per-job overrides a job carries.

        Raises:
            ConfigurationError: an override has a bad value (unknown names are ignored: a
                newer producer may send options this worker does not know).
        """
        changes = {key: value for key, value in overrides.items() if key in PER_JOB_OPTIONS}
        if not changes:
            return self
        try:
            return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigurationError(f"bad per-job options {changes!r}: {exc}") from exc


#: Options the worker needs to see per job when `with_options` changed them at enqueue; they
#: travel in the ``aqueue-options`` header (the worker otherwise uses the registered task's).
#: (``expires`` travels as a deadline of its own, the ``aqueue-expires`` header.)
PER_JOB_OPTIONS = ("timeout", "retries", "backoff", "max_backoff", "jitter", "on_expire")


def _check_redact(redact: object) -> None:
    """Check `redact`: a bool, or a tuple or list of parameter names (never a bare string).

    Raises:
        ConfigurationError: another value.
    """
    if isinstance(redact, bool):
        return
    if isinstance(redact, tuple | list) and all(
        isinstance(name, str) and name.isidentifier() for name in redact
    ):
        return
    raise ConfigurationError(
        "redact must be True or a tuple of parameter names, e.g. redact=('password', 'token'), "
        f"not {redact!r}"
    )


def _check_expiry(expires: object, on_expire: object) -> None:
    """Check `expires` (a number of seconds or an aware datetime) and `on_expire`; no clock.

    Raises:
        ConfigurationError: a bad value (a deadline in the past is caught where the clock is
            read: `with_options` and enqueue).
    """
    if isinstance(expires, dt.datetime):
        if expires.tzinfo is None or expires.utcoffset() is None:
            raise ConfigurationError(
                f"expires must be a timezone-aware datetime, not the naive {expires!r}"
            )
    elif expires is not None and not is_number(expires, above=0, at_most=MAX_DELAY_SECONDS):
        raise ConfigurationError(
            f"expires must be a positive number of seconds (at most {MAX_DELAY_SECONDS:g}), "
            f"an aware datetime or None, not {expires!r}"
        )
    if on_expire not in ON_EXPIRE:
        raise ConfigurationError(f"on_expire must be 'dead-letter' or 'drop', not {on_expire!r}")


def expiry_ms(expires: float | dt.datetime | None, now_ms: int) -> int | None:
    """The deadline in ms since the Unix epoch of a job enqueued at `now_ms`; None: none.

    Raises:
        ConfigurationError: the deadline is not after `now_ms` (in the past).
    """
    if expires is None:
        return None
    if isinstance(expires, dt.datetime):
        deadline = math.floor(expires.timestamp() * 1000)
        if deadline <= now_ms:
            raise ConfigurationError(
                f"expires={expires.isoformat()} is in the past: the job could never run"
            )
        return deadline
    return now_ms + math.ceil(expires * 1000)


def check_option_names(given: Mapping[str, object], allowed: frozenset[str], *, where: str) -> None:
    """Raise a clear error naming unknown options, with a suggestion when one is close.

    Raises:
        ConfigurationError: an option name is not in `allowed`.
    """
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"unknown option {key!r} for {where}{hint} (known: {', '.join(sorted(allowed))})"
            )


class WithOptionsDict(TaskOverridesDict, EnqueueOptionsDict, total=False):
    """Everything `task.with_options(...)` accepts: run-time options and enqueue options."""


TASK_OPTION_NAMES = (
    frozenset({"name"} | {f.name for f in dataclasses.fields(TaskOptions)}) - {"flow"}
) | FLOW_OPTION_NAMES
OVERRIDE_OPTION_NAMES = frozenset(TaskOverridesDict.__annotations__)
#: Everything `with_options` accepts: the run-time overrides and the `EnqueueOptions`.
WITH_OPTION_NAMES = OVERRIDE_OPTION_NAMES | ENQUEUE_OPTION_NAMES


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How work queues are declared.

    Attributes:
        queue_type: ``"quorum"`` (replicated, delivery limit, at-least-once dead-lettering) or
            ``"classic"``.
        delivery_limit: quorum only: after this many deliveries that ended without an ack
            (a worker crashed or lost its connection each time) the broker dead-letters the
            message with reason ``delivery_limit``.
    """

    queue_type: QueueType = "quorum"
    delivery_limit: int = 10

    def __post_init__(self) -> None:
        if self.queue_type not in ("quorum", "classic"):
            raise ConfigurationError(
                f"queue_type must be 'quorum' or 'classic', not {self.queue_type!r}"
            )
        if not is_whole(self.delivery_limit, at_least=1):
            raise ConfigurationError(f"delivery_limit must be >= 1, not {self.delivery_limit!r}")


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How every connection of a `TaskQueue` reaches the broker (publisher, workers, tools).

    Attributes:
        connect_timeout: seconds to wait for the broker when a connection opens.
    """

    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        _check_positive(self)


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """How jobs are published.

    Attributes:
        publish_timeout: seconds to wait for one publisher confirm.
        publish_deadline: seconds a publish keeps retrying across reconnects before it raises.
        max_message_bytes: encoded bodies larger than this are refused at enqueue.
        max_in_flight: unconfirmed publishes `enqueue_many` keeps in flight at once.
        publish_batch: messages `enqueue_many` writes to the broker at once (one frame
            batch, one socket write), ``max_in_flight // publish_batch`` batches in flight;
            1: one message at a time (docs/benchmarks.md has the measurements).
    """

    publish_timeout: float = 10.0
    publish_deadline: float = 30.0
    max_message_bytes: int = 1024 * 1024
    max_in_flight: int = 1000
    publish_batch: int = 50

    def __post_init__(self) -> None:
        _check_positive(self)


def _check_positive(settings: object) -> None:
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, field.name)
        if not is_number(value, above=0):
            raise ConfigurationError(f"{field.name} must be a positive number, not {value!r}")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """One queue's own limits in a worker (``-Q reports:4:threads=4`` on the command line).

    Unset fields take the worker's: see `WorkerSettings.limits` for how each is resolved.

    Attributes:
        name: the logical queue.
        concurrency: jobs of this queue run at once by the worker (its runners); ``None``:
            the worker's `WorkerSettings.concurrency`.
        threads: threads of this queue's own for its plain (sync) task functions; ``None``:
            ``min(concurrency, WorkerSettings.threads)``.
        prefetch: unacked deliveries of this queue's consumer; ``None``: the worker's
            `WorkerSettings.prefetch` if set, else this queue's concurrency.
        min_concurrency: with `WorkerSettings.autoscale`, this queue's own lower bound
            (``-Q emails:min=5:max=50``); ``None``: the worker's.
        max_concurrency: with `WorkerSettings.autoscale`, this queue's own upper bound;
            ``None``: the worker's.

    Under `WorkerSettings.autoscale`, a queue with its own `concurrency` keeps it fixed (it is
    not autoscaled); the others scale between their bounds.
    """

    name: str
    concurrency: int | None = None
    threads: int | None = None
    prefetch: int | None = None
    min_concurrency: int | None = None
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        validate_name(self.name)
        for field in QUEUE_LIMIT_FIELDS:
            value = getattr(self, field)
            if value is not None and not is_whole(value, at_least=1):
                raise ConfigurationError(
                    f"{field} of queue {self.name!r} must be an integer >= 1 or None, not {value!r}"
                )
        bounds = self.min_concurrency is not None or self.max_concurrency is not None
        if bounds and self.concurrency is not None:
            raise ConfigurationError(
                f"queue {self.name!r}: give a fixed concurrency or autoscale bounds "
                "(min/max), not both"
            )

    @property
    def has_bounds(self) -> bool:
        """True if the queue sets an autoscale bound of its own."""
        return self.min_concurrency is not None or self.max_concurrency is not None


#: The integer fields of `QueueLimits`.
QUEUE_LIMIT_FIELDS = ("concurrency", "threads", "prefetch", "min_concurrency", "max_concurrency")


@dataclass(frozen=True, slots=True)
class Autoscale:
    """In-process autoscaling of each queue's concurrency on the wait signal.

    Attributes:
        minimum: the fewest runners a queue keeps (and its concurrency at start).
        maximum: the most runners a queue may grow to.
        target_wait: seconds; the p95 wait from due to start to hold each queue under.
        interval: seconds between two decisions (each one reads the figures of the last).
        lag_limit: seconds of mean event-loop lag from which the loop counts as CPU-bound:
            more coroutines would not run sooner, so the queue does not grow.
    """

    minimum: int
    maximum: int
    target_wait: float
    interval: float = 1.0
    lag_limit: float = 0.05

    def __post_init__(self) -> None:
        if not is_whole(self.minimum, at_least=1):
            raise ConfigurationError(
                f"autoscale minimum must be an integer >= 1, not {self.minimum!r}"
            )
        if not is_whole(self.maximum, at_least=self.minimum):
            raise ConfigurationError(
                f"autoscale maximum must be an integer >= the minimum ({self.minimum}), "
                f"not {self.maximum!r}"
            )
        for name in ("target_wait", "interval", "lag_limit"):
            value = getattr(self, name)
            if not is_number(value, above=0):
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, not {value!r}"
                )


@dataclass(frozen=True, slots=True)
class QueueBudget:
    """A queue's limits as a worker applies them: every field resolved (see `limits`).

    ``autoscale`` is the queue's own bounds when it is autoscaled (``concurrency`` is then
    where it starts), else None; ``prefetch_fixed`` says the prefetch was set, so the
    autoscaler leaves it alone.
    """

    name: str
    concurrency: int
    threads: int
    prefetch: int
    autoscale: Autoscale | None = None
    prefetch_fixed: bool = False


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker consumes.

    Attributes:
        queues: logical queues to consume, each a name or a `QueueLimits` with its own
            concurrency, threads or prefetch; empty means every queue a registered task uses.
        concurrency: jobs run at once per queue by this process, for a queue without its own:
            each queue has its own runners, so a slow queue never holds back another.
        prefetch: unacked deliveries per queue consumer; ``None`` means the queue's concurrency.
        grace: seconds a graceful stop waits for running jobs before cancelling them.
        threads: the most threads a queue gets for its plain (sync) task functions, unless it
            sets its own: each queue has ``min(its concurrency, threads)`` threads of its own,
            so a queue of slow sync jobs never makes another queue's sync jobs wait for a
            thread. The worker's total is the sum over its queues.
        crash_limit: a job whose deliveries came back unacked this many times (its worker
            died or lost its connection each time) is dead-lettered with reason ``crashed``.
        lease_after: with a result backend, a job still running after this many seconds is
            acked early under a lease (see the guarantees page), so it may outlive RabbitMQ's
            ``consumer_timeout``; keep it well below that timeout. ``None``: never.
        lease_ttl: seconds a lease lasts unless renewed (every third of it); a job whose
            worker died runs again after about twice this.
        heartbeat_interval: seconds between the worker's heartbeats on the control exchange
            (see the observability page); readers drop a worker silent for 3 of them.
        autoscale: grow and shrink each queue's concurrency (and its prefetch, unless
            `prefetch` is set) between the bounds to hold the wait under a target; ``None``:
            a fixed `concurrency`.
        ready_interval: seconds between two reads of each queue's ready count (a passive
            declare on the worker's own connection); with `autoscale`, at most its interval,
            so each decision sees a fresh backlog.
    """

    queues: tuple[str | QueueLimits, ...] = ()
    concurrency: int = 100
    prefetch: int | None = None
    grace: float = 30.0
    threads: int = 40
    crash_limit: int = 3
    lease_after: float | None = 600.0
    lease_ttl: float = 60.0
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    autoscale: Autoscale | None = None
    ready_interval: float = 5.0

    def __post_init__(self) -> None:
        if not is_number(self.ready_interval, above=0):
            raise ConfigurationError(
                f"ready_interval must be a positive number of seconds, not {self.ready_interval!r}"
            )
        self._check_queues()
        for name in ("concurrency", "threads", "crash_limit"):
            value = getattr(self, name)
            if not is_whole(value, at_least=1):
                raise ConfigurationError(f"{name} must be an integer >= 1, not {value!r}")
        if self.prefetch is not None and not is_whole(self.prefetch, at_least=1):
            raise ConfigurationError(f"prefetch must be an integer >= 1, not {self.prefetch!r}")
        if not is_number(self.grace, at_least=0):
            raise ConfigurationError(f"grace must be >= 0 seconds, not {self.grace!r}")
        if self.lease_after is not None and not is_number(self.lease_after, above=0):
            raise ConfigurationError(
                f"lease_after must be a positive number of seconds or None, not "
                f"{self.lease_after!r}"
            )
        if not is_number(self.lease_ttl, at_least=1, at_most=MAX_DELAY_SECONDS):
            raise ConfigurationError(
                f"lease_ttl must be 1 to {MAX_DELAY_SECONDS:g} seconds, not {self.lease_ttl!r}"
            )
        if not is_number(self.heartbeat_interval, at_least=0.05, at_most=3600):
            raise ConfigurationError(
                f"heartbeat_interval must be 0.05 to 3600 seconds, not {self.heartbeat_interval!r}"
            )

    def _check_queues(self) -> None:
        check_queue_names(self.queues)
        for queue in self.queues:
            if isinstance(queue, QueueLimits):
                self.limits(queue.name)  # bounds need autoscale, and must be in order

    @property
    def effective_prefetch(self) -> int:
        """The prefetch of a queue consumer whose queue sets no limits of its own, at start."""
        return self.prefetch if self.prefetch is not None else self.initial_concurrency

    @property
    def initial_concurrency(self) -> int:
        """Each queue's runners at start: the autoscale minimum, else `concurrency`."""
        return self.autoscale.minimum if self.autoscale is not None else self.concurrency

    @property
    def queue_names(self) -> tuple[str, ...]:
        """The names in `queues`, in order."""
        return tuple(q.name if isinstance(q, QueueLimits) else q for q in self.queues)

    def limits(self, queue: str) -> QueueBudget:
        """The concurrency, threads, prefetch and autoscale bounds the worker gives `queue`.

        Each is the queue's own (`QueueLimits`) when set, else:

        - autoscale: with `autoscale`, the worker's bounds, or the queue's own
          ``min_concurrency``/``max_concurrency`` where given; a queue with its own fixed
          ``concurrency`` is not autoscaled;
        - concurrency: the queue's fixed one, or where it starts under autoscale (its
          minimum), else `concurrency`;
        - threads: ``min(the most runners the queue may have, threads)``: a queue never runs
          more sync functions at once than it has runners (a function abandoned at its
          timeout keeps its thread until it returns, and then holds up only its own queue),
          and `threads` caps each queue so that a worker of many queues does not start
          hundreds;
        - prefetch: `prefetch` if set, else the queue's concurrency (moving with it under
          autoscale): one delivery waiting per idle runner and none beyond, so what this
          worker cannot start yet stays in the broker for the other workers of the queue.

        Raises:
            ConfigurationError: the queue sets autoscale bounds without `autoscale`, or its
                bounds are out of order.
        """
        own = next(
            (q for q in self.queues if isinstance(q, QueueLimits) and q.name == queue),
            QueueLimits(queue),
        )
        scaling = self._scaling(own)
        if scaling is not None:
            concurrency, ceiling = scaling.minimum, scaling.maximum
        else:
            concurrency = ceiling = own.concurrency or self.concurrency
        fixed_prefetch = own.prefetch or self.prefetch
        return QueueBudget(
            name=queue,
            concurrency=concurrency,
            threads=own.threads or min(ceiling, self.threads),
            prefetch=fixed_prefetch or concurrency,
            autoscale=scaling,
            prefetch_fixed=fixed_prefetch is not None,
        )

    def _scaling(self, own: QueueLimits) -> Autoscale | None:
        if self.autoscale is None:
            if own.has_bounds:
                raise ConfigurationError(
                    f"queue {own.name!r} sets autoscale bounds (min/max) but the worker does "
                    "not autoscale: give --autoscale MIN:MAX --target-wait SECONDS"
                )
            return None
        if own.concurrency is not None:
            return None
        if not own.has_bounds:
            return self.autoscale
        try:
            return dataclasses.replace(
                self.autoscale,
                minimum=own.min_concurrency or self.autoscale.minimum,
                maximum=own.max_concurrency or self.autoscale.maximum,
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"queue {own.name!r}: {exc}") from None


def check_queue_names(queues: tuple[str | QueueLimits, ...]) -> None:
    """Every name in `queues` valid, none twice.

    Raises:
        ConfigurationError: a name is invalid or given twice.
    """
    seen: set[str] = set()
    for queue in queues:
        name = queue.name if isinstance(queue, QueueLimits) else validate_name(queue)
        if name in seen:
            raise ConfigurationError(f"queue {name!r} is given twice")
        seen.add(name)


#: The per-queue options ``-Q name:concurrency:option=value`` accepts.
QUEUE_OPTION_NAMES = frozenset({"threads", "prefetch", "min", "max"})
#: ``-Q`` option names that are not `QueueLimits` field names.
_QUEUE_OPTION_FIELDS = {"min": "min_concurrency", "max": "max_concurrency"}


def parse_queues(text: str) -> tuple[str | QueueLimits, ...]:
    """Read ``-Q``: comma-separated ``name[:concurrency][:threads=N][:prefetch=N]`` items.

    ``name[:min=N][:max=N]`` sets a queue's own autoscale bounds. A bare name takes the
    worker's limits. Queue names may contain ``:``, so the limits are read from the right: a
    trailing part with ``=`` is an option, then a trailing part that starts with a digit (or
    a sign) is the concurrency; the rest is the name. (A queue whose name itself ends in such
    a part is given in code, with `QueueLimits`.)

    Raises:
        ConfigurationError: an item is malformed, names an unknown option, gives an option
            twice or a value that is not an integer >= 1, or a queue is named twice.
    """
    items = tuple(_parse_queue_item(item) for item in map(str.strip, text.split(",")) if item)
    check_queue_names(items)
    return items


def _parse_queue_item(item: str) -> str | QueueLimits:
    parts = [part.strip() for part in item.split(":")]
    options: dict[str, int] = {}
    while len(parts) > 1 and "=" in parts[-1]:
        key, _, value = parts.pop().partition("=")
        key = key.strip()
        check_option_names({key: value}, QUEUE_OPTION_NAMES, where=f"queue {item!r}")
        if key in options:
            raise ConfigurationError(f"{key} is given twice in {item!r}")
        options[key] = _positive_int(value, f"{key} in {item!r}")
    concurrency = None
    if len(parts) > 1 and parts[-1][:1] in "0123456789+-":
        concurrency = _positive_int(parts.pop(), f"the concurrency in {item!r}")
    name = ":".join(parts)
    if concurrency is None and not options:
        return validate_name(name)
    fields = {_QUEUE_OPTION_FIELDS.get(key, key): value for key, value in options.items()}
    return QueueLimits(name, concurrency=concurrency, **fields)


def _positive_int(text: str, what: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ConfigurationError(f"{what} must be an integer >= 1, not {text!r}")
    return int(text)
