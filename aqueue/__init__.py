"""aqueue: an asyncio-native task queue on RabbitMQ.

Nothing is lost, nothing waits longer than it must, and you can see all of it.
"""

from aqueue._config import TaskOptions, WorkerSettings
from aqueue._context import JobContext, current_job
from aqueue._deadletters import DeadLetter, DeadLetterQueue, ReplayResult
from aqueue._jobs import BatchResult, Job
from aqueue._middleware import CallNext, Middleware
from aqueue._producer import PublishFailure
from aqueue._queue import TaskQueue
from aqueue._tasks import Task
from aqueue._worker import Worker, WorkerStatistics
from aqueue.exceptions import Retry

__version__ = "0.1.0.dev0"

__all__ = [
    "BatchResult",
    "CallNext",
    "DeadLetter",
    "DeadLetterQueue",
    "Job",
    "JobContext",
    "Middleware",
    "PublishFailure",
    "ReplayResult",
    "Retry",
    "Task",
    "TaskOptions",
    "TaskQueue",
    "Worker",
    "WorkerSettings",
    "WorkerStatistics",
    "current_job",
]
