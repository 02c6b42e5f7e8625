"""Tier 3, results kept outside RabbitMQ: backends, job states and job handles."""

from aqueue._results.base import JobState, JobStatus, RemoteError, ResultBackend
from aqueue._results.memory import MemoryResultBackend

__all__ = ["JobState", "JobStatus", "MemoryResultBackend", "RemoteError", "ResultBackend"]
