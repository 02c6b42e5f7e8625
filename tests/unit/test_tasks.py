from __future__ import annotations

import pytest

from aqueue import TaskQueue
from aqueue._core.config import WorkerSettings
from aqueue._tasks.task import TaskRegistry
from aqueue.exceptions import ConfigurationError


def make_queue() -> TaskQueue:
    return TaskQueue("memory://")


def test_decorator_registers_async_and_sync_functions() -> None:
    """Both decorator forms register the function under module.qualname."""
    queue = make_queue()

    @queue.task
    async def fetch(url: str) -> str:
        return url

    @queue.task(queue="images", timeout=5)
    def resize(image_id: int) -> None:
        return None

    assert fetch.is_async
    assert not resize.is_async
    assert fetch.name.endswith("test_decorator_registers_async_and_sync_functions.<locals>.fetch")
    assert resize.options.queue == "images"
    assert resize.options.timeout == 5
    assert queue.tasks[resize.name] is resize
    assert list(queue.tasks) == [fetch.name, resize.name]
    registry = queue.tasks
    assert isinstance(registry, TaskRegistry)
    assert registry.queues() == {"default", "images"}


def test_unknown_option_fails_at_decoration_with_suggestion() -> None:
    """A misspelt option fails where the decorator is written, naming the closest option."""
    queue = make_queue()
    with pytest.raises(
        ConfigurationError, match=r"unknown option 'timout'.*did you mean 'timeout'"
    ):
        queue.task(timout=3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.5}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": 10**400}, "timeout"),  # beyond any float: not an OverflowError
        ({"backoff": 10**400}, "backoff"),
        ({"backoff": 1e306}, "backoff"),
        ({"queue": "bad name"}, "queue name"),
        ({"queue": ""}, "queue name"),
        ({"name": 7}, "task name"),
    ],
)
def test_bad_option_values_fail_at_decoration(options: dict[str, object], message: str) -> None:
    """Bad option values are configuration errors raised by the decorator call."""
    with pytest.raises(ConfigurationError, match=message):
        make_queue().task(**options)  # type: ignore[call-overload]


def test_non_functions_and_generators_are_refused() -> None:
    """Only functions that return a value can be tasks."""
    queue = make_queue()

    def gen() -> object:
        yield 1

    with pytest.raises(ConfigurationError, match="generator"):
        queue.task(gen)
    with pytest.raises(ConfigurationError, match="needs a function"):
        queue.task(int)


def test_two_functions_cannot_share_a_name() -> None:
    """Registering a second function under a taken name is refused."""
    queue = make_queue()

    @queue.task(name="same")
    def one() -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):

        @queue.task(name="same")
        def two() -> None: ...


def test_with_options_keeps_the_name() -> None:
    """with_options returns a copy with other options and the same name and function."""
    queue = make_queue()

    @queue.task
    def job() -> None: ...

    moved = job.with_options(queue="other", timeout=2)
    assert (moved.name, moved.fn, moved.options.queue, moved.options.timeout) == (
        job.name,
        job.fn,
        "other",
        2,
    )
    assert job.options.queue == "default"
    with pytest.raises(ConfigurationError, match="unknown option"):
        job.with_options(name="x")  # type: ignore[call-arg]


def test_unknown_task_lookup() -> None:
    """Looking up an unregistered name finds nothing (the worker raises UnknownTaskError for it)."""
    tasks = make_queue().tasks
    assert "nope" not in tasks
    assert tasks.get("nope") is None
    with pytest.raises(KeyError, match="nope"):
        tasks["nope"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"threads": 1.5}, "threads"),
        ({"prefetch": 0}, "prefetch"),
        ({"grace": -1}, "grace"),
        ({"queues": ("ok", "not ok")}, "queue name"),
    ],
)
def test_bad_worker_settings(kwargs: dict[str, object], message: str) -> None:
    """Worker settings are validated when built."""
    with pytest.raises(ConfigurationError, match=message):
        WorkerSettings(**kwargs)  # type: ignore[arg-type]


def test_prefetch_defaults_to_concurrency() -> None:
    """Without an explicit prefetch each consumer prefetches `concurrency` messages."""
    assert WorkerSettings(concurrency=7).effective_prefetch == 7
    assert WorkerSettings(concurrency=7, prefetch=3).effective_prefetch == 3


@pytest.mark.parametrize("url", ["", [], ["localhost"], 5])
def test_bad_urls_are_refused(url: object) -> None:
    """A TaskQueue needs at least one URL with a scheme."""
    with pytest.raises(ConfigurationError, match="url"):
        TaskQueue(url)  # type: ignore[arg-type]


async def test_named_memory_brokers_are_shared_and_bare_ones_private() -> None:
    """TaskQueue("memory://name") queues share one broker; "memory://" ones each get their own."""
    one, two = TaskQueue("memory://shared"), TaskQueue("memory://shared")
    alone, other = TaskQueue("memory://"), TaskQueue("memory://")
    queues = [one, two, alone, other]
    for queue in queues:

        @queue.task(name="job")
        def job() -> None: ...

    async with one, two, alone, other:
        await one.enqueue(one.tasks["job"])
        await alone.enqueue(alone.tasks["job"])
        counts = []
        for queue in queues:
            async with queue.session() as session:
                counts.append(await session.transport.message_count("aqueue.default"))
    assert counts == [1, 1, 1, 0]
