"""The retry decision: which failures are retried, and after how long.

Pure: no clock, no randomness. The whole rule lives here, `Retry(delay=)` included; the
worker passes in the attempt number and a random number in ``[0, 1)``, so backoff with jitter
is tested with plain values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aqueue._core.checks import is_number, is_whole
from aqueue._core.delays import MAX_DELAY_SECONDS as LONGEST
from aqueue.exceptions import ConfigurationError, Retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing task is retried.

    The delay before attempt ``n + 1`` (after ``n`` failed attempts) is
    ``min(max_backoff, backoff * factor ** (n - 1))``, of which a share ``jitter`` is random:
    with ``jitter=0.2`` the delay lies between 80 % and 100 % of that value, so many jobs that
    failed together do not come back together.

    Attributes:
        max_attempts: runs in all, the first included; 1 means never retry.
        signal_attempts: runs in all when the task asks for a retry (``raise Retry()``);
            None: `max_attempts`.
        backoff: seconds before the first retry.
        factor: growth of the delay per retry.
        max_backoff: cap on one delay, in seconds.
        jitter: share of the delay that is random, in ``[0, 1]``.
        retry_on: exception types that are retried; other failures go straight to the
            dead-letter queue. ``raise aqueue.Retry(...)`` is always retried while attempts
            remain.
    """

    max_attempts: int = 1
    signal_attempts: int | None = None
    backoff: float = 1.0
    factor: float = 2.0
    max_backoff: float = 3600.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        checks: list[tuple[str, object, bool]] = [
            ("max_attempts", self.max_attempts, is_whole(self.max_attempts, at_least=1)),
            (
                "signal_attempts",
                self.signal_attempts,
                self.signal_attempts is None or is_whole(self.signal_attempts, at_least=1),
            ),
            ("backoff", self.backoff, is_number(self.backoff, at_least=0, at_most=LONGEST)),
            ("factor", self.factor, is_number(self.factor, at_least=1)),
            (
                "max_backoff",
                self.max_backoff,
                is_number(self.max_backoff, at_least=0, at_most=LONGEST),
            ),
            ("jitter", self.jitter, is_number(self.jitter, at_least=0, at_most=1)),
        ]
        for name, value, ok in checks:
            if not ok:
                raise ConfigurationError(f"retry option {name} has a bad value: {value!r}")
        retry_on: object = self.retry_on
        if not isinstance(retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_on
        ):
            raise ConfigurationError(
                f"retry_on must be a tuple of exception types, not {self.retry_on!r}"
            )

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a failure of attempt number `attempt` (1-based) is retried."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)

    def delay(self, attempt: int, random_value: float) -> float:
        """Seconds to wait after attempt number `attempt` failed, given a random ``[0, 1)``."""
        exponent = max(attempt - 1, 0)
        try:
            full = self.backoff * self.factor**exponent
        except OverflowError:  # the growth is past any float: capped below, unless no backoff
            full = math.inf if self.backoff > 0 else 0.0
        capped = min(self.max_backoff, full, LONGEST)
        return capped * (1 - self.jitter * random_value)

    def next_delay(self, error: BaseException, attempt: int, random_value: float) -> float | None:
        """Seconds until the next attempt after attempt number `attempt` failed with `error`.

        Returns:
            None when the job is not retried: its attempts are used up, or `error` is not one
            of `retry_on`. ``raise Retry(delay=...)`` is retried whatever `retry_on` says, up
            to `signal_attempts`, after its own delay (capped at the longest delay) when it
            gives one.
        """
        if isinstance(error, Retry):
            limit = self.signal_attempts or self.max_attempts
            if attempt >= limit:
                return None
            if error.delay is not None:
                return min(error.delay, LONGEST)
        elif attempt >= self.max_attempts or not isinstance(error, self.retry_on):
            return None
        return self.delay(attempt, random_value)
