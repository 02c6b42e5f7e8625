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
