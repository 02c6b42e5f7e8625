"""A per-process count of handled jobs in a memory-mapped file, read by the benchmark parent.

The processes scenario needs to know when the last job of the queue has been handled, across
worker processes it did not write. The queue's ready count is not enough (it reaches 0 while up
to prefetch x processes deliveries are still unacked), and the broker's unacked count is only in
the management API's sampled stats. So each job bumps an 8-byte counter in a file named after
its process: a store to shared memory, no syscall, no broker traffic; the parent sums the files.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

#: The directory the counters go in; set by the parent in each child's environment.
ENV = "AQUEUE_BENCH_TALLY"
#: The broker URL and name prefix of ``benchmarks._process_app`` (here, not there: the parent
#: must not import the app, which needs them at import).
URL_ENV = "AQUEUE_BENCH_URL"
PREFIX_ENV = "AQUEUE_BENCH_PREFIX"
_SIZE = 8

_counter: mmap.mmap | None = None
_count = 0


def _open() -> mmap.mmap:
    path = Path(os.environ[ENV]) / f"{os.getpid()}.count"
    with path.open("wb+") as file:
        file.write(bytes(_SIZE))
        file.flush()
        return mmap.mmap(file.fileno(), _SIZE)  # the mapping outlives the file object


def bump() -> None:
    """Count one handled job of this process (opened lazily: the supervisor never counts)."""
    global _counter, _count  # one counter per process: module state on purpose
    if _counter is None:
        _counter = _open()
    _count += 1
    _counter[:_SIZE] = _count.to_bytes(_SIZE, "little")


def total(directory: Path) -> int:
    """The jobs every process counting in `directory` has handled so far."""
    return sum(
        int.from_bytes(path.read_bytes()[:_SIZE] or bytes(_SIZE), "little")
        for path in directory.glob("*.count")
    )
