"""Job handles: what `enqueue` returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aqueue._producer import PublishFailure
from aqueue.exceptions import ConfigurationError

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Job(Generic[R]):
    """A handle on one enqueued job.

    Attributes:
        job_id: the job id (AMQP ``message_id``), stable across attempts.
        task: the task name.
        queue: the logical queue it was sent to.
    """

    job_id: str
    task: str
    queue: str

    async def result(self, *, timeout: float | None = None) -> R:
        """Wait for the job's result.

        Raises:
            ConfigurationError: no result backend is configured: jobs are fire-and-forget.
        """
        raise ConfigurationError(
            "no result backend is configured for this TaskQueue, so jobs are fire-and-forget "
            "and their results are not kept"
        )


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[R]):
    """What `enqueue_many` returns.

    Attributes:
        jobs: a handle for every job, in input order (failed ones included).
        failures: the jobs that were not confirmed, with their error, in input order.
    """

    jobs: Sequence[Job[R]]
    failures: Sequence[PublishFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every job was confirmed."""
        return not self.failures

    @property
    def confirmed(self) -> int:
        """How many jobs the broker confirmed."""
        return len(self.jobs) - len(self.failures)
