"""Unique jobs: an enqueue of a job already enqueued within its window returns its handle.

``task.with_options(unique_for=seconds, unique_key=...)``: the first enqueue of a key
reserves it in the result backend's `FlowStore` (one atomic step, so of 50 concurrent
enqueues exactly one wins) for the job id it is about to publish; every other enqueue of the
key within the window gets that job id back and publishes nothing. If the winner's publish
fails, it frees the key, so a retry of the enqueue can publish. The guarantees and limits are
on the flow-control page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from aqueue._core.flow import EnqueueOptions
from aqueue._results.flow import FlowStore
from aqueue._results.states import JobStates
from aqueue._serialization import canonical_arguments
from aqueue.exceptions import ConfigurationError


def unique_key(
    task: str, options: EnqueueOptions, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str:
    """The key that says which enqueues are "the same job": the given one, or a digest.

    The default is a SHA-256 of the task name and the arguments (keys sorted), so the same
    call with its keywords in another order is the same job.

    Raises:
        EncodeError: an argument is not JSON.
    """
    if options.unique_key is not None:
        return f"{task}|key|{options.unique_key}"
    digest = hashlib.sha256(task.encode() + b"\0" + canonical_arguments(args, kwargs))
    return f"{task}|args|{digest.hexdigest()}"


def unique_store(states: JobStates) -> FlowStore:
    """The store unique jobs are reserved in.

    Raises:
        ConfigurationError: no result backend, or one that keeps no flow-control state.
    """
    backend = states.require_backend("a unique job (with_options(unique_for=...))")
    store = backend.flow_store()
    if store is None:
        raise ConfigurationError(
            f"a unique job needs a result backend that keeps flow-control state; "
            f"{type(backend).__name__} keeps none (use RedisResultBackend)"
        )
    return store
