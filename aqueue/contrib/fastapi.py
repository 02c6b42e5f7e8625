"""FastAPI: the TaskQueue opened in the app's lifespan, and handed to endpoints by ``Depends``.

The five lines::

    from aqueue.contrib.fastapi import AqueueDependency, lifespan

    app = FastAPI(lifespan=lifespan(queue))

    @app.post("/signup")
    async def signup(queue: AqueueDependency) -> None:
        await queue.enqueue(send_welcome, 42)

`lifespan` opens the queue (one broker connection, one result-backend client for the
process) before the first request and closes it after the last; `aqueue_dependency` reads
it from the app's state, so tests can swap it (``app.dependency_overrides``). With the
OpenTelemetry instrumentation of FastAPI, the request's trace continues into the job: the
publish runs inside the request's span, and the job's span is its child.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from aqueue._client.queue import TaskQueue
from aqueue.exceptions import ConfigurationError

#: The attribute of ``app.state`` that holds the open TaskQueue.
STATE_ATTRIBUTE = "aqueue"


def lifespan(
    queue: TaskQueue,
    *,
    then: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: `queue` is open while the app serves.

    Args:
        queue: the application's TaskQueue.
        then: the app's own lifespan, run inside (with the queue open).

    Raises:
        ConfigurationError: `queue` is not a TaskQueue.
    """
    given: object = queue  # run-time input: not every caller runs mypy
    if not isinstance(given, TaskQueue):
        raise ConfigurationError(f"lifespan() needs an aqueue.TaskQueue, not {queue!r}")

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        async with queue:
            setattr(app.state, STATE_ATTRIBUTE, queue)
            try:
                if then is None:
                    yield
                else:
                    async with then(app):
                        yield
            finally:
                delattr(app.state, STATE_ATTRIBUTE)

    return run


def aqueue_dependency(request: Request) -> TaskQueue:
    """The open TaskQueue of the app (``queue: TaskQueue = Depends(aqueue_dependency)``).

    Raises:
        ConfigurationError: the app was not built with ``lifespan=lifespan(queue)``.
    """
    queue = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if not isinstance(queue, TaskQueue):
        raise ConfigurationError(
            "no TaskQueue on the app: build it with FastAPI(lifespan=aqueue.contrib.fastapi."
            "lifespan(queue))"
        )
    return queue


#: ``queue: AqueueDependency`` in an endpoint's signature: the open TaskQueue.
AqueueDependency = Annotated[TaskQueue, Depends(aqueue_dependency)]
