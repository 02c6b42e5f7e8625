"""When ``aqueue worker --processes N`` restarts a child that died (pure, no clock).

The supervisor hands in what it measured (how long the child ran, when its recent deaths
were) and gets back how long to wait and whether this is a crash loop; it does the waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aqueue.exceptions import ConfigurationError


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a supervisor restarts a worker process that died unexpectedly.

    Attributes:
        first_delay: seconds before the first restart, and after a child that ran stably.
        max_delay: the longest wait between restarts; each quick death doubles the wait up
            to it.
        stable_after: a child that ran this many seconds before dying was healthy: its
            restart waits `first_delay` again.
        loop_deaths: this many deaths of one child within `loop_window` seconds is a crash
            loop, logged as an error on each further death (the restarts go on, backing off).
        loop_window: seconds over which deaths are counted.
        start_attempts: a child that dies before it consumes this many times in a row makes
            the supervisor give up (the app cannot start: a broker that never answers).
    """

    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 60.0
    loop_deaths: int = 5
    loop_window: float = 60.0
    start_attempts: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay:
            raise ConfigurationError("need 0 < first_delay <= max_delay")
        if self.loop_deaths < 1 or self.start_attempts < 1:
            raise ConfigurationError("loop_deaths and start_attempts must be at least 1")


@dataclass(frozen=True, slots=True)
class Restart:
    """What to do after a child died.

    Attributes:
        delay: seconds to wait before starting it again.
        crash_loop: its deaths within the window reached the policy's `loop_deaths`.
        deaths: the times of its deaths within the window, this one included (hand them
            back in next time).
    """

    delay: float
    crash_loop: bool
    deaths: tuple[float, ...]


def next_restart(
    policy: RestartPolicy,
    *,
    previous_delay: float | None,
    ran_for: float,
    deaths: Sequence[float],
    now: float,
) -> Restart:
    """The restart after a child died at `now` having run `ran_for` seconds.

    Args:
        policy: the rules.
        previous_delay: the delay of this child's previous restart (``None``: never restarted).
        ran_for: seconds the child ran before this death.
        deaths: the `Restart.deaths` of its previous restart (``()`` at first).
        now: the time of this death, on the clock `deaths` use.
    """
    if previous_delay is None or ran_for >= policy.stable_after:
        delay = policy.first_delay
    else:
        delay = min(previous_delay * 2, policy.max_delay)
    recent = (*(t for t in deaths if now - t < policy.loop_window), now)
    return Restart(delay=delay, crash_loop=len(recent) >= policy.loop_deaths, deaths=recent)


# -- how many processes (``--processes MIN:MAX``) ----------------------------------------------

#: What a worker logs when a queue of its autoscaler turns CPU-bound, and when it no longer is:
#: the supervisor reads its children's log lines for them (``queue NAME: <mark>``).
CPU_BOUND_MARK = "CPU-bound:"
CPU_FREE_MARK = "no longer CPU-bound"


@dataclass(frozen=True, slots=True)
class ProcessScaling:
    """``--processes MIN:MAX``: more processes when every one is CPU-bound, fewer when none is.

    In one process, more coroutines do not help a queue whose event loop is saturated (its
    autoscaler then holds concurrency and says "CPU-bound"); another process, with its own
    loop and its own core, does.

    Attributes:
        minimum: processes kept (and started with).
        maximum: processes at most.
        grow_after: seconds every running process must have been CPU-bound before one is added.
        shrink_after: seconds no process may have been CPU-bound before one is retired (the
            newest, stopped gracefully); the in-process autoscalers shrink first.
    """

    minimum: int
    maximum: int
    grow_after: float = 10.0
    shrink_after: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ConfigurationError(
                f"--processes MIN:MAX needs 1 <= MIN <= MAX, not {self.minimum}:{self.maximum}"
            )
        if not (self.grow_after > 0 and self.shrink_after > 0):
            raise ConfigurationError("grow_after and shrink_after must be positive")


def process_target(
    scaling: ProcessScaling,
    count: int,
    *,
    all_bound_since: float | None,
    none_bound_since: float | None,
    now: float,
) -> int:
    """How many worker processes there should be now.

    Args:
        scaling: the bounds and patience.
        count: processes now (running or being started).
        all_bound_since: since when every running process has reported a CPU-bound queue
            (``None``: not all of them now).
        none_bound_since: since when no running process has (``None``: some do now).
        now: the time on the clock of the two ``since`` arguments.
    """
    if count < scaling.minimum:
        return scaling.minimum
    if count > scaling.maximum:
        return scaling.maximum
    if all_bound_since is not None and now - all_bound_since >= scaling.grow_after:
        return min(count + 1, scaling.maximum)
    if none_bound_since is not None and now - none_bound_since >= scaling.shrink_after:
        return max(count - 1, scaling.minimum)
    return count
