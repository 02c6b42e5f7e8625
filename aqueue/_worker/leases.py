"""Leases: jobs that run longer than RabbitMQ lets a delivery stay unacked.

RabbitMQ closes a consumer's channel when a delivery stays unacked past its
``consumer_timeout`` (30 minutes by default), and delivers the job again while the first run
may still go on. A job that runs longer than ``lease_after`` seconds is therefore moved under a
lease, kept in the result backend:

1. the worker publishes a *lease copy* of the job (same id, body and headers, plus this run's
   token) through the delay levels, due back in the work queue after ``lease_ttl``, and waits
   for its confirm;
2. it takes the lease (``hold_lease``: owner = this run, expiring after ``lease_ttl``);
3. only then it acks the original delivery: the broker's timer stops, and the job is safe in
   the copy;
4. while the job runs, the worker renews the lease every third of ``lease_ttl``; once the job
   is settled (its result recorded, its retry or dead letter confirmed), it ends the lease.

A worker that receives a lease copy reads the lease (`LeaseCopies.check`): still held, it sends
the copy round again; ended (or taken by a later run), it drops it; expired — the worker that
held it died or lost Redis for a whole ``lease_ttl`` — the job comes back as a crashed job does:
through the quarantine, counted against ``crash_limit``. So a long job runs once while its
worker lives, and again (once) only if that worker dies. Without a result backend there is no
lease, and RabbitMQ's ``consumer_timeout`` is the limit (see `warn_about_long_tasks`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from aqueue._client.session import Session
from aqueue._core.delays import MAX_DELAY_MS
from aqueue._core.wire import HEADER_LEASE, lease_copy
from aqueue._tasks.task import Task
from aqueue._transport import Delivery
from aqueue.exceptions import ConnectionLost, TransportError

logger = logging.getLogger("aqueue.worker")

#: RabbitMQ's default ``consumer_timeout``: a delivery unacked this long closes its channel.
BROKER_CONSUMER_TIMEOUT = 1800.0
#: How long an ended lease is remembered: longer than any lease copy takes to come back.
ENDED_FOR = 3600.0


class LeasableDelivery(Delivery):
    """A delivery whose settlement a lease can take over.

    Until `take_over`, it is the delivery. After it (the original is acked, a lease copy
    stands in), settling it does nothing: what the run records and publishes settles the job,
    and the lease ends. Losing the original's channel then cancels nothing either.
    """

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner
        self.body = inner.body
        self.headers = inner.headers
        self.message_id = inner.message_id
        self.content_type = inner.content_type
        self.routing_key = inner.routing_key
        self.exchange = inner.exchange
        self.queue = inner.queue
        self.redelivered = inner.redelivered
        self.leased = False
        self._settled = False
        # taking the lease and settling the job may race (the job ends as the lease is
        # taken): one at a time, so the original is acked once
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<LeasableDelivery {self._inner!r} leased={self.leased}>"

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        if not self.leased:
            self._inner.on_lost(callback)

    async def take_over(self) -> None:
        """Ack the original: from now on the lease copy stands in for it.

        Raises:
            ConnectionLost: the original's channel is gone (it will be redelivered).
        """
        async with self._lock:
            if not self._settled:  # else the job was settled first: the lease just ends
                await self._inner.ack()
                self._inner.on_lost(None)
            self.leased = True

    async def ack(self) -> None:
        async with self._lock:
            if not self.leased:
                await self._inner.ack()
                self._settled = True

    async def reject(self, *, requeue: bool) -> None:
        # Leased, the job comes back by itself: the lease is not ended and expires.
        async with self._lock:
            if not self.leased:
                await self._inner.reject(requeue=requeue)
                self._settled = True


class Leases:
    """Takes, renews and ends the leases of this worker's long jobs."""

    def __init__(self, session: Session, *, after: float | None, ttl: float) -> None:
        self._session = session
        self._after = after
        self._ttl = ttl

    @property
    def active(self) -> bool:
        """Whether long jobs go under a lease (a result backend and ``lease_after`` set)."""
        return self._after is not None and self._session.states.active

    @asynccontextmanager
    async def keeping(self, delivery: LeasableDelivery, queue: str) -> AsyncIterator[_Keeper]:
        """While the block runs (the job and its settlement), lease it once it runs long."""
        keeper = _Keeper(self._session, delivery, queue, self._after or 0.0, self._ttl)
        async with anyio.create_task_group() as keeping:
            keeping.start_soon(keeper.run)
            try:
                yield keeper
            finally:
                keeping.cancel_scope.cancel()


class _Keeper:
    """The lease of one run: taken after `after` seconds, renewed until the block ends."""

    def __init__(
        self, session: Session, delivery: LeasableDelivery, queue: str, after: float, ttl: float
    ) -> None:
        self._session = session
        self._delivery = delivery
        self._queue = queue
        self._after = after
        self._ttl = ttl
        self._job_id = delivery.message_id or ""
        self._token = uuid.uuid4().hex
        self._copy_sent = False
        self.owner: str | None = None
        """The lease's owner once it was taken (this run's token)."""

    async def run(self) -> None:
        await anyio.sleep(self._after)
        while True:
            # shielded: a copy published but not followed by its lease would run the job
            # again once the unowned lease "expired"
            with anyio.CancelScope(shield=True):
                if await self._take():
                    break
            await anyio.sleep(self._ttl / 3)
        while True:
            await anyio.sleep(self._ttl / 3)
            await self._renew()

    async def _take(self) -> bool:
        """Publish the copy, take the lease, ack the original; False to try again later.

        The copy first: a lease that exists always has its copy, so a redelivered original
        may be dropped whenever a lease is found (`LeaseCopies.stands_in`). The copy is sent
        once: two copies of an expired lease would run the job twice.
        """
        backend = self._session.states.require_backend("a lease")
        producer = self._session.producer
        try:
            if not self._copy_sent:
                await producer.declare_delays()
                await producer.publish(
                    lease_copy(
                        self._session.names,
                        self._delivery,
                        queue=self._queue,
                        owner=self._token,
                        delay_ms=min(math.ceil(self._ttl * 1000), MAX_DELAY_MS),
                        now_ms=time.time_ns() // 1_000_000,
                    ),
                    patient=True,
                )
                self._copy_sent = True
            if not await backend.hold_lease(self._job_id, self._token, ttl=self._ttl):
                logger.warning(
                    "job %s runs long but another run holds its lease; it stays unacked",
                    self._job_id,
                )
                return True  # never two leases for one job (this copy will be dropped)
            self.owner = self._token  # renewed from now on, ended once the job is settled
            await self._delivery.take_over()
        except (TransportError, ConnectionLost) as exc:
            logger.warning("job %s: could not take its lease yet (%s)", self._job_id, exc)
            return False
        logger.info(
            "job %s runs longer than %g s: acked under lease %s, renewed every %g s",
            self._job_id,
            self._after,
            self._token,
            self._ttl / 3,
        )
        return True

    async def _renew(self) -> None:
        if self.owner is None:
            return
        try:
            held = await self._session.states.require_backend("a lease").hold_lease(
                self._job_id, self.owner, ttl=self._ttl
            )
        except TransportError as exc:
            logger.warning("job %s: could not renew its lease (%s)", self._job_id, exc)
            return
        if not held:
            logger.error(
                "job %s lost its lease (not renewed within %g s): another worker may run it again",
                self._job_id,
                self._ttl,
            )
            self.owner = None

    async def end(self) -> None:
        """The job is settled: its lease copy will be dropped."""
        if self.owner is None:
            return
        try:
            await self._session.states.require_backend("a lease").end_lease(
                self._job_id, self.owner, ttl=max(ENDED_FOR, 4 * self._ttl)
            )
        except TransportError as exc:  # it expires instead: the copy runs it once more
            logger.warning("job %s: could not end its lease (%s)", self._job_id, exc)


class LeaseCopies:
    """What a worker does with a lease copy, and with an original a lease stands in for."""

    def __init__(self, session: Session, *, ttl: float) -> None:
        self._session = session
        self._ttl = ttl

    @staticmethod
    def is_copy(delivery: Delivery) -> bool:
        """Whether `delivery` is a lease copy."""
        return HEADER_LEASE in delivery.headers

    async def check(self, delivery: Delivery, queue: str) -> str:
        """Settle a lease copy; returns ``"run"`` when its job must run again (lease expired).

        Otherwise the copy is sent round again (``"held"``) or dropped (``"ended"``).
        """
        owner = delivery.headers.get(HEADER_LEASE)
        job_id = delivery.message_id or ""
        try:
            lease = await self._session.states.require_backend("a lease").lease(job_id)
        except TransportError as exc:
            logger.warning("job %s: could not read its lease (%s); checking later", job_id, exc)
            lease, held = None, True
        else:
            held = lease is not None and not lease.ended and lease.owner == owner
        if lease is None and not held:
            logger.warning(
                "job %s: its lease expired (its worker died, or lost the result backend); "
                "it runs again",
                job_id,
            )
            return "run"
        if not held:  # ended, or a later run holds it (and its own copy stands in)
            logger.info("job %s: lease copy dropped (the run it stood for ended)", job_id)
            await _ack_quietly(delivery)
            return "ended"
        await self._send_round(delivery, queue, str(owner))
        return "held"

    async def stands_in(self, delivery: Delivery) -> bool:
        """Whether a lease copy stands in for this (redelivered) job: held or ended."""
        try:
            lease = await self._session.states.require_backend("a lease").lease(
                delivery.message_id or ""
            )
        except TransportError:
            return False  # run it: at least once
        return lease is not None

    async def _send_round(self, delivery: Delivery, queue: str, owner: str) -> None:
        producer = self._session.producer
        message = lease_copy(
            self._session.names,
            delivery,
            queue=queue,
            owner=owner,
            delay_ms=min(math.ceil(self._ttl * 1000), MAX_DELAY_MS),
            now_ms=time.time_ns() // 1_000_000,
        )
        try:
            await producer.declare_delays()
            await producer.publish(message, patient=True)
            await delivery.ack()
        except ConnectionLost:
            return  # redelivered: checked again
        except Exception:  # settling must never kill the worker: keep the copy
            logger.exception("lease copy of %s not sent round; requeueing it", delivery.message_id)
            await _reject_quietly(delivery)


def warn_about_long_tasks(tasks: Mapping[str, Task[Any, Any]], *, leases: bool) -> None:
    """Warn about tasks whose time limit exceeds RabbitMQ's default ``consumer_timeout``.

    With leases (a result backend) such jobs are acked early and are safe; without, the broker
    closes the channel under them and delivers them again.
    """
    if leases:
        return
    for name, task in tasks.items():
        timeout = task.options.timeout
        if timeout is not None and timeout > BROKER_CONSUMER_TIMEOUT:
            logger.warning(
                "task %s may run %g s, longer than RabbitMQ's default consumer_timeout "
                "(%g s), and this worker has no result backend for leases: the broker will "
                "close the channel and deliver such a job again while it runs",
                name,
                timeout,
                BROKER_CONSUMER_TIMEOUT,
            )


async def _ack_quietly(delivery: Delivery) -> None:
    try:
        await delivery.ack()
    except ConnectionLost:
        return  # redelivered: checked again


async def _reject_quietly(delivery: Delivery) -> None:
    try:
        await delivery.reject(requeue=True)
    except ConnectionLost:
        return
