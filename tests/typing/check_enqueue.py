"""Checked by mypy (``scripts/check``), never run: enqueue is typed by the task's signature.

Each deliberate error is pinned with ``type: ignore[code]``; ``warn_unused_ignores`` makes mypy
fail if one of them stops being an error.
"""

from __future__ import annotations

from typing import Any, assert_type

from aqueue import GroupJob, Job, TaskQueue, chain, chord, group

queue = TaskQueue("memory://")


@queue.task
async def send_welcome(user_id: int, *, lang: str = "en") -> str:
    return f"{user_id}:{lang}"


@queue.task(queue="images")
def resize(image_id: int) -> None:
    return None


@queue.task
def parse(html: str, *, strict: bool = False) -> list[str]:
    return [html] if strict else []


@queue.task
def tokenize(text: str) -> int:
    return len(text.split())


async def correct_calls() -> None:
    assert_type(await queue.enqueue(send_welcome, 42), Job[str])
    assert_type(await queue.enqueue(send_welcome, 42, lang="fr"), Job[str])
    assert_type(await queue.enqueue(resize, 7), Job[None])
    assert_type(await queue.enqueue(resize.with_options(timeout=3), 7), Job[None])


async def wrong_calls() -> None:
    await queue.enqueue(send_welcome, "42")  # type: ignore[call-overload]
    await queue.enqueue(send_welcome)  # type: ignore[call-overload]
    await queue.enqueue(send_welcome, 42, langue="fr")  # type: ignore[call-arg]
    await queue.enqueue(resize, 7, 8)  # type: ignore[call-overload]
    resize.with_options(retrys=3)  # type: ignore[call-arg]


async def fan_out() -> None:
    batch = await queue.enqueue_many(resize, [resize.call(i) for i in range(3)])
    assert_type(batch.jobs[0], Job[None])
    await queue.enqueue_many(resize, [(1,), {"image_id": 2}])  # untyped forms still work
    await queue.enqueue_many(resize, [tokenize.call("a b")])  # type: ignore[misc]
    resize.call("7")  # type: ignore[arg-type]


async def workflows() -> None:
    parse.s()  # the previous step's result is the html
    parse.s("<p>", strict=True)  # or every argument, as a first step
    parse.s(1)  # type: ignore[call-overload]
    resize.s(1, 2)  # type: ignore[call-overload]
    resize.si("1")  # type: ignore[arg-type]
    assert_type(await queue.enqueue(chain(send_welcome.s(1), resize.s())), Job[Any])
    assert_type(await queue.enqueue(group(resize.s(1), resize.s(2))), GroupJob)
    assert_type(await queue.enqueue(chord([resize.s(1)], resize.s())), Job[Any])
