"""Tier 3, results kept outside RabbitMQ: backends, job states and job handles."""

from aqueue._results.base import (
    FailedAttempt,
    JobState,
    JobStatus,
    Lease,
    RemoteError,
    ResultBackend,
)
from aqueue._results.memory import MemoryResultBackend

__all__ = [
    "FailedAttempt",
    "JobState",
    "JobStatus",
    "Lease",
    "MemoryResultBackend",
    "RemoteError",
    "ResultBackend",
]
