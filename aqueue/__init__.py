"""aqueue: an asyncio-native task queue on RabbitMQ.

Nothing is lost, nothing waits longer than it must, and you can see all of it.
"""

from typing import TYPE_CHECKING

from aqueue._client.deadletters import DeadLetter, DeadLetterQueue, ReplayResult
from aqueue._client.producer import BatchResult, PublishFailure
from aqueue._client.queue import TaskQueue
from aqueue._core.config import Autoscale, QueueLimits, TaskOptions, WorkerSettings
from aqueue._core.schedules import Cron, Every, Schedule
from aqueue._core.wire import Failure
from aqueue._observability.hooks import Instrumentation, JobObserver
from aqueue._observability.logs import JobLogFilter, JsonLogFormatter, TextLogFormatter
from aqueue._observability.metrics import JobMetrics, MetricSink
from aqueue._results import (
    FailedAttempt,
    JobState,
    JobStatus,
    MemoryResultBackend,
    RemoteError,
    ResultBackend,
)
from aqueue._results.handles import GroupJob, Job
from aqueue._scheduler.scheduler import Scheduler
from aqueue._tasks.context import JobContext, current_job
from aqueue._tasks.middleware import CallNext, Middleware
from aqueue._tasks.task import Call, Task
from aqueue._worker.threads import AbandonedJob
from aqueue._worker.worker import Worker, WorkerStatistics
from aqueue._workflows import Chain, Chord, Group, Signature, chain, chord, group
from aqueue.exceptions import Retry

if TYPE_CHECKING:  # imported on first use at run time: redis is an optional dependency
    from aqueue._results.redis_backend import RedisResultBackend

__version__ = "0.1.0.dev0"

__all__ = [
    "AbandonedJob",
    "Autoscale",
    "BatchResult",
    "Call",
    "CallNext",
    "Chain",
    "Chord",
    "Cron",
    "DeadLetter",
    "DeadLetterQueue",
    "Every",
    "FailedAttempt",
    "Failure",
    "Group",
    "GroupJob",
    "Instrumentation",
    "Job",
    "JobContext",
    "JobLogFilter",
    "JobMetrics",
    "JobObserver",
    "JobState",
    "JobStatus",
    "JsonLogFormatter",
    "MemoryResultBackend",
    "MetricSink",
    "Middleware",
    "PublishFailure",
    "QueueLimits",
    "RedisResultBackend",
    "RemoteError",
    "ReplayResult",
    "ResultBackend",
    "Retry",
    "Schedule",
    "Scheduler",
    "Signature",
    "Task",
    "TaskOptions",
    "TaskQueue",
    "TextLogFormatter",
    "Worker",
    "WorkerSettings",
    "WorkerStatistics",
    "chain",
    "chord",
    "current_job",
    "group",
]


def __getattr__(name: str) -> object:
    # the Redis backend imports redis, an optional dependency (pip install "aqueue-rabbitmq[redis]")
    if name == "RedisResultBackend":
        from aqueue._results.redis_backend import RedisResultBackend

        return RedisResultBackend
    raise AttributeError(f"module 'aqueue' has no attribute {name!r}")
