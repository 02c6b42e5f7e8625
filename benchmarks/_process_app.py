"""The app ``aqueue worker benchmarks._process_app:queue`` runs in the processes scenario.

A `TaskQueue` like the in-process drain's (same task name, logical queue and defaults), on the
prefix the benchmark parent puts in the environment, with the one no-op task it enqueued.
"""

from __future__ import annotations

import os

from aqueue import TaskQueue
from benchmarks import _tally
from benchmarks._common import QUEUE

queue = TaskQueue(
    os.environ[_tally.URL_ENV], prefix=os.environ[_tally.PREFIX_ENV], name="bench-aqueue"
)


@queue.task(queue=QUEUE, name="noop")
async def noop(index: int) -> None:
    """Nothing, but counted, so that the parent sees when the queue is drained."""
    _tally.bump()
