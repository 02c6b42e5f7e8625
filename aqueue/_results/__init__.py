"""Result backends: job states, results and chord barriers kept outside RabbitMQ."""

from aqueue._results.base import JobState, JobStatus, RemoteError, ResultBackend
from aqueue._results.memory import MemoryResultBackend

__all__ = ["JobState", "JobStatus", "MemoryResultBackend", "RemoteError", "ResultBackend"]
