"""The intake: deliveries handed to a queue's idle runners, in arrival order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from aqueue._transport import Delivery


class _Idle:
    """A runner waiting in `_Intake.get`, and what it was handed.

    A bare asyncio future rather than an `anyio.Event` (which wraps an `asyncio.Event`,
    which makes a future on each wait): one wait per job, on the worker's hot path. The
    worker runs on asyncio only (aio-pika); an anyio cancel scope cancels the wait as usual.
    """

    __slots__ = ("delivery", "woken")

    def __init__(self) -> None:
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.delivery: Delivery | None = None

    def wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)


class Intake:
    """Deliveries handed to idle runners, in arrival order (the consumers' prefetch bounds it).

    What an anyio memory stream does, minus what a worker does not need: its ``receive()``
    costs a checkpoint, an event and a generic-alias call per item, about a tenth of the CPU
    of a no-op job (see docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._ready: deque[Delivery] = deque()
        self._idle: deque[_Idle] = deque()
        self._closed = False

    def put(self, delivery: Delivery) -> None:
        """Hand a delivery to the longest-idle runner, or queue it (transport callback)."""
        if self._closed:  # stopping: kept for `unstarted`, never handed to a runner
            self._ready.append(delivery)
            return
        if self._idle:
            idle = self._idle.popleft()
            idle.delivery = delivery
            idle.wake()
        else:
            self._ready.append(delivery)

    def put_first(self, delivery: Delivery) -> None:
        """`put`, but ahead of every queued delivery: a deferred job whose time has come.

        A job deferred by its rate limit holds a reserved start; behind a flood of deliveries
        not yet looked at, it would start late and the next ones would bunch up.
        """
        if self._closed:  # stopping: kept for `unstarted`, like `put`
            self._ready.appendleft(delivery)
            return
        if self._idle:
            self.put(delivery)
        else:
            self._ready.appendleft(delivery)

    async def get(self) -> Delivery | None:
        """The next delivery; None once closed (queued deliveries are then left unstarted)."""
        if self._closed:
            return None
        if self._ready:
            return self._ready.popleft()
        idle = _Idle()
        self._idle.append(idle)
        try:
            await idle.woken
        except BaseException:
            if idle.delivery is not None:  # handed over, never taken: the next runner's
                self._ready.appendleft(idle.delivery)
            elif idle in self._idle:
                self._idle.remove(idle)
            raise
        # closed while this runner was being woken: the delivery is left unstarted too; a
        # shed runner was woken without one
        return None if self.closed() else idle.delivery

    def waiting(self) -> int:
        """Deliveries handed over and not yet taken by a runner."""
        return len(self._ready)

    def held(self) -> Iterable[Delivery]:
        """The deliveries handed over and not yet taken by a runner, oldest first."""
        return tuple(self._ready)

    def idle(self) -> int:
        """Runners waiting in `get`."""
        return len(self._idle)

    def shed(self, count: int) -> int:
        """Wake up to `count` idle runners with None, so they leave; returns how many.

        The longest-idle ones go first. A runner told None checks `closed` to tell a shed
        from a stop.
        """
        woken = 0
        while woken < count and self._idle:
            self._idle.popleft().wake()
            woken += 1
        return woken

    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def unstarted(self) -> list[Delivery]:
        """Take the deliveries no runner took (once closed, no runner will), oldest first."""
        taken = list(self._ready)
        self._ready.clear()
        return taken

    def close(self) -> None:
        """Wake every idle runner with None; later deliveries are kept for `unstarted`."""
        self._closed = True
        for idle in self._idle:
            idle.wake()
        self._idle.clear()
