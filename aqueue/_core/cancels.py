"""Cancellations as pure data: the notice workers receive, and what a worker remembers.

`TaskQueue.cancel` publishes a notice on the control exchange (routing key ``cancel``); every
worker binds a queue of its own to it. With a result backend the cancellation is also stored
(the job's state becomes ``cancelled``), so a worker that starts later still honours it.
Without one, a worker only knows the cancellations it heard, and keeps them in a
`CancelMemory`: the last `REMEMBERED` of them, for `REMEMBER_FOR` seconds each.

No I/O and no clock: times are passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: Cancellation notices are routed ``cancel`` on the control exchange.
CANCEL_ROUTING_KEY = "cancel"
CANCEL_VERSION = 1
#: Without a result backend a worker remembers this many cancellations ...
REMEMBERED = 10_000
#: ... each for this many seconds (a cancelled delayed job due later than this runs).
REMEMBER_FOR = 86_400.0


@dataclass(frozen=True, slots=True)
class CancelNotice:
    """A request to cancel a job by its id, or a workflow by its root id (all unfinished steps)."""

    job_id: str

    def to_payload(self) -> dict[str, object]:
        """The JSON object that is published."""
        return {"version": CANCEL_VERSION, "job_id": self.job_id}

    @classmethod
    def from_payload(cls, payload: object) -> CancelNotice:
        """Read a decoded notice.

        Raises:
            ValueError: not a version 1 cancellation notice.
        """
        if not isinstance(payload, dict) or payload.get("version") != CANCEL_VERSION:
            raise ValueError("not a version 1 cancellation notice")
        job_id = payload.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"a cancellation names a job id, not {job_id!r}")
        return cls(job_id)


class CancelMemory:
    """The cancelled job ids a worker heard: bounded in number and in time.

    Args:
        size: how many it keeps (the oldest go first).
        ttl: seconds each one is kept.
    """

    def __init__(self, size: int = REMEMBERED, ttl: float = REMEMBER_FOR) -> None:
        self._size, self._ttl = size, ttl
        self._heard: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._heard)

    def add(self, job_id: str, now: float) -> None:
        """Remember that `job_id` was cancelled at `now`."""
        self._heard.pop(job_id, None)
        self._heard[job_id] = now
        self._forget(now)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._heard

    def holds(self, job_id: str, now: float) -> bool:
        """Whether `job_id` was cancelled within the last `ttl` seconds."""
        self._forget(now)
        return job_id in self._heard

    def _forget(self, now: float) -> None:
        while len(self._heard) > self._size:
            self._heard.popitem(last=False)
        while self._heard:
            job_id, at = next(iter(self._heard.items()))
            if now - at <= self._ttl:
                break
            del self._heard[job_id]
