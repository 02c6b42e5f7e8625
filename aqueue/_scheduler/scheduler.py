"""The scheduler: every process may run one; the one that holds the token leads and enqueues.

The election needs nothing but RabbitMQ. Every scheduler consumes the *election queue*
(``{prefix}.scheduler.leader``: quorum, ``x-single-active-consumer``), in which *tokens*
wait: small messages that carry the schedules' marks (the last tick handled and the last
run, per schedule). RabbitMQ delivers only to the queue's single active consumer, so the
scheduler that receives a token leads; the others receive nothing and wait.

- The leader keeps its tokens unacked while it leads. When its connection dies (the process
  was killed, the broker closed the connection, the network was cut and the broker's
  heartbeat noticed), RabbitMQ requeues them and makes the next consumer active, which
  receives them and leads: measured takeover under half a second after the broker noticed.
- It *renews* after every tick it runs and every `RENEW_INTERVAL` seconds: it publishes a
  fresh token with its marks (confirmed), then acks the tokens it holds. No delivery stays
  unacked for long, so RabbitMQ's ``consumer_timeout`` never fires on a token; and if it
  did, the channel would close and the next scheduler take over, as on any other loss.
- Every scheduler offers a token when it starts and every few renew intervals while it
  follows, so an election queue that lost its tokens gets one back; the leader absorbs the
  extra ones at its next renewal (it holds every token: its prefetch is `TOKEN_PREFETCH`).
- Every scheduler sends a notice on the control exchange (``scheduler.{id}``) every
  `STATUS_INTERVAL` seconds, the leader also after every tick: followers learn the marks
  from it, so a new leader knows what ran even if the newest token was not the one it got;
  ``aqueue schedules`` learns who leads.

A leader that cannot renew, or whose token came back to someone else, stops leading. A tick
published twice in a failover has one job id (`Schedule.job_id`): with a result backend the
worker runs it once (`aqueue._worker.gates`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus

from aqueue._client.session import Session
from aqueue._core.heartbeats import control_exchange
from aqueue._core.schedules import (
    STATUS_BINDING,
    Mark,
    Schedule,
    SchedulerStatus,
    marks_payload,
    merge_marks,
    read_marks,
)
from aqueue._core.topology import ExchangeSpec, QueueSpec, Topology, TopologyNames
from aqueue._core.wire import HEADER_TICK, Envelope, OutgoingMessage
from aqueue._results import JobState, JobStatus
from aqueue._serialization import dumps, loads
from aqueue._transport import Consumer, Delivery, Transport
from aqueue.exceptions import AqueueError, DecodeError

logger = logging.getLogger("aqueue.scheduler")

#: Seconds between two renewals of the leader's token when no tick ran meanwhile.
RENEW_INTERVAL = 10.0
#: Seconds between two notices of a scheduler on the control exchange.
STATUS_INTERVAL = 5.0
#: Tokens the leader may hold at once (the extra ones are absorbed at its next renewal).
TOKEN_PREFETCH = 16
#: A follower offers a token every this many renew intervals (an election queue that lost
#: its tokens gets one back).
OFFER_INTERVALS = 3
#: Seconds the leader waits for its renewed token to come back before it steps down.
TOKEN_RETURN = 2.0
#: Seconds to wait for the confirm of a token.
TOKEN_PUBLISH_TIMEOUT = 5.0
#: Seconds one round of ticks may take once started (it is not interrupted by a stop).
FIRE_BOUND = 10.0
#: Seconds a scheduler that stopped leading on an error waits before it tries again.
RETRY_AFTER = 1.0
#: Bound on one notice (written, not confirmed).
NOTICE_TIMEOUT = 1.0


def election_queue(names: TopologyNames) -> str:
    """The queue whose single active consumer leads."""
    return f"{names.prefix}.scheduler.leader"


def scheduler_topology(names: TopologyNames) -> Topology:
    """The control exchange and the election queue (quorum, single active consumer)."""
    return Topology(
        exchanges=(ExchangeSpec(control_exchange(names.prefix), "topic"),),
        queues=(
            QueueSpec(
                election_queue(names),
                {"x-queue-type": "quorum", "x-single-active-consumer": True},
            ),
        ),
    )


class _StepDown(Exception):
    """The leader cannot go on leading (its token was lost, or it could not renew)."""


class Scheduler:
    """Runs an app's schedules: elects a leader through the broker; the leader enqueues.

    Args:
        session: the open queue's session (its producer publishes the ticks).
        schedules: the app's schedules, by name.
        renew_interval: seconds between two renewals of the leader's token.
        status_interval: seconds between two notices on the control exchange.
    """

    def __init__(
        self,
        session: Session,
        schedules: Mapping[str, Schedule],
        *,
        renew_interval: float = RENEW_INTERVAL,
        status_interval: float = STATUS_INTERVAL,
    ) -> None:
        self._session = session
        self._schedules = dict(schedules)
        self._renew_interval = renew_interval
        self._status_interval = status_interval
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.scheduler_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._names = session.names
        self._held: list[Delivery] = []
        self._marks: dict[str, Mark] = {}
        self._leading = False
        self._lost = False
        self._wake = anyio.Event()
        #: ticks this scheduler enqueued, and the ticks it skipped (tests, statistics)
        self.fired: list[str] = []
        self.skipped: list[str] = []

    def __repr__(self) -> str:
        return f"<Scheduler {self.scheduler_id} leading={self._leading}>"

    @property
    def leading(self) -> bool:
        """Whether this scheduler leads now."""
        return self._leading

    @property
    def marks(self) -> Mapping[str, Mark]:
        """The marks this scheduler knows, by schedule name."""
        return dict(self._marks)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take part in the election on a connection of its own, and lead when elected.

        Runs until cancelled; then it hands its tokens (with its marks) back at once, so the
        next scheduler takes over without waiting for the broker to notice.
        """
        async with self._session.connection_for("scheduler") as transport:
            await transport.declare(scheduler_topology(self._names))
            listener = await transport.listen(
                control_exchange(self._names.prefix), STATUS_BINDING, self._on_notice
            )
            consumer = await transport.consume(
                election_queue(self._names), prefetch=TOKEN_PREFETCH, on_delivery=self._on_token
            )
            await self._offer(transport)
            task_status.started()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._notices, transport)
                    await self._elect(transport)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(transport, consumer, listener)

    # -- the election ----------------------------------------------------------------------

    def _on_token(self, delivery: Delivery) -> None:
        try:
            token = loads(delivery.body)
        except DecodeError:
            token = {}
        if isinstance(token, dict):
            self._marks = merge_marks(self._marks, read_marks(token.get("marks")))
        self._held.append(delivery)
        delivery.on_lost(self._on_lost)
        self._wake.set()

    def _on_lost(self) -> None:
        self._lost = True
        self._wake.set()

    def _on_notice(self, _routing_key: str, body: bytes) -> None:
        try:
            status = SchedulerStatus.from_payload(loads(body))
        except (ValueError, DecodeError):
            return
        if status.prefix == self._names.prefix and status.scheduler_id != self.scheduler_id:
            self._marks = merge_marks(self._marks, status.marks)

    async def _wait(self, seconds: float) -> None:
        with anyio.move_on_after(max(0.0, seconds)):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def _elect(self, transport: Transport) -> None:
        offered = time.monotonic()
        while True:
            if self._lost:
                self._held.clear()  # their channel is gone: the broker requeued them
                self._lost = False
            if not self._held:
                await self._wait(self._renew_interval)
                if not self._held and time.monotonic() - offered >= (
                    OFFER_INTERVALS * self._renew_interval
                ):
                    await self._offer(transport)
                    offered = time.monotonic()
                continue
            try:
                await self._lead(transport)
            except (_StepDown, AqueueError) as exc:
                logger.warning("scheduler %s stops leading: %s", self.scheduler_id, exc)
                self._leading = False
                # its tokens may still be its own (the broker, not the token, failed): it
                # leads again once the broker answers, unless their channel died meanwhile
                await self._wait(RETRY_AFTER)
            finally:
                self._leading = False

    async def _lead(self, transport: Transport) -> None:
        self._leading = True
        now_ms = _now_ms()
        for name in self._schedules:  # a schedule never seen starts now: nothing to catch up
            self._marks.setdefault(name, Mark(cursor=now_ms))
        logger.info("scheduler %s leads (%d schedules)", self.scheduler_id, len(self._schedules))
        renewed = time.monotonic()
        while True:
            if self._lost:
                raise _StepDown("its token's channel to the broker closed")
            fired = True  # if the bound cuts the round short, renew all the same
            # shielded: a stop between a tick's publish and its mark would hand the next
            # leader a token without it, and the tick would be published twice
            with anyio.CancelScope(shield=True), anyio.move_on_after(FIRE_BOUND):
                fired = await self._fire_due(time.time())
            if fired or time.monotonic() - renewed >= self._renew_interval:
                await self._renew(transport)
                renewed = time.monotonic()
                if fired:
                    await self._notify(transport)
            await self._wait(
                min(
                    self._next_tick() - time.time(),
                    renewed + self._renew_interval - time.monotonic(),
                )
            )

    def _next_tick(self) -> float:
        nexts = [
            schedule.trigger.next_after(self._marks[name].cursor / 1000)
            for name, schedule in self._schedules.items()
        ]
        return min(nexts, default=time.time() + self._renew_interval)

    async def _renew(self, transport: Transport) -> None:
        """Publish a fresh token with the marks (confirmed), then ack the ones held."""
        if not self._held:
            await self._wait(TOKEN_RETURN)
            if not self._held:
                raise _StepDown("its renewed token did not come back (another scheduler leads)")
        # the fresh token may come back before its confirm: only the ones held before go
        held = list(self._held)
        await self._offer(transport, strict=True)
        self._held = [delivery for delivery in self._held if delivery not in held]
        for delivery in held:
            delivery.on_lost(None)
            await delivery.ack()

    async def _offer(self, transport: Transport, *, strict: bool = False) -> None:
        body = dumps({"version": 1, "by": self.scheduler_id, "marks": marks_payload(self._marks)})
        message = OutgoingMessage(
            exchange="",
            routing_key=election_queue(self._names),
            body=body,
            message_id=uuid.uuid4().hex,
        )
        try:
            await transport.publish(message, timeout=TOKEN_PUBLISH_TIMEOUT)
        except AqueueError as exc:
            if strict:
                raise _StepDown(f"could not renew its token: {exc}") from exc
            logger.debug("scheduler %s could not offer a token: %s", self.scheduler_id, exc)

    async def _hand_back(
        self, transport: Transport, consumer: Consumer, listener: Consumer
    ) -> None:
        """Stop consuming, leave a token with the marks, ack the held ones; best effort."""
        try:
            with anyio.fail_after(3 * NOTICE_TIMEOUT):
                await consumer.cancel()
                await listener.cancel()
                if self._held and not self._lost:
                    await self._offer(transport)
                    for delivery in self._held:
                        delivery.on_lost(None)
                        await delivery.ack()
                await self._notify(transport, stopping=True)
        except (AqueueError, TimeoutError) as exc:
            logger.debug("scheduler %s: hand-back incomplete: %s", self.scheduler_id, exc)
        self._held.clear()
        self._leading = False

    # -- ticks -----------------------------------------------------------------------------

    async def _fire_due(self, now: float) -> bool:
        """Enqueue every schedule's due tick; True if one was enqueued or skipped."""
        changed = False
        for name, schedule in self._schedules.items():
            mark = self._marks[name]
            plan = schedule.plan(mark.cursor / 1000, now)
            if round(plan.cursor * 1000) <= mark.cursor:
                continue
            changed = True
            if plan.missed:
                logger.warning(
                    "schedule %s missed ticks since %s (no scheduler ran, or the leader "
                    "changed); misfire=%r: %s",
                    name,
                    schedule.job_id(mark.cursor / 1000),
                    schedule.misfire,
                    "running the latest once" if plan.fire is not None else "skipping them",
                )
            fired = mark.fired
            if plan.fire is not None:
                if await self._may_overlap(schedule, mark):
                    fired = round(plan.fire * 1000)
                    await self._enqueue(schedule, plan.fire, Mark(round(plan.cursor * 1000), fired))
                    self.fired.append(schedule.job_id(plan.fire))
                else:
                    self.skipped.append(schedule.job_id(plan.fire))
                    logger.info(
                        "schedule %s: tick %s skipped, its previous run is not finished",
                        name,
                        schedule.job_id(plan.fire),
                    )
            self._marks[name] = Mark(round(plan.cursor * 1000), fired)
        return changed

    async def _may_overlap(self, schedule: Schedule, mark: Mark) -> bool:
        if schedule.overlap or not mark.fired:
            return True
        backend = self._session.states.require_backend("overlap=False")
        state = await backend.get_state(schedule.job_id(mark.fired / 1000))
        return state is None or state.status.is_final

    async def _enqueue(self, schedule: Schedule, tick: float, mark: Mark) -> None:
        """Publish the tick's job (confirmed), set the schedule's `mark`, record it queued."""
        producer = self._session.producer
        now_ms = _now_ms()
        envelope = Envelope(
            job_id=schedule.job_id(tick),
            task=schedule.task,
            queue=schedule.queue,
            args=schedule.args,
            kwargs=schedule.kwargs,
            enqueued_at_ms=now_ms,
            # each publish of a tick is told apart from another publish of the same tick
            extra_headers={HEADER_TICK: uuid.uuid4().hex},
            options=schedule.options,
        )
        body = producer.encode_body(schedule.task, schedule.args, schedule.kwargs)
        await producer.ensure_route(schedule.queue, 0)
        await producer.publish(producer.message(envelope, body))
        self._marks[schedule.name] = mark
        if schedule.store_result:
            await self._session.states.record(
                JobState(envelope.job_id, JobStatus.QUEUED, task=schedule.task),
                ttl=schedule.result_ttl,
            )
        logger.info("schedule %s: enqueued %s", schedule.name, envelope.job_id)

    # -- notices ---------------------------------------------------------------------------

    async def _notices(self, transport: Transport) -> None:
        while True:
            await self._notify(transport)
            await anyio.sleep(self._status_interval)

    def status(self, *, stopping: bool = False) -> SchedulerStatus:
        """This scheduler's notice as of now."""
        return SchedulerStatus(
            scheduler_id=self.scheduler_id,
            host=self.host,
            pid=self.pid,
            prefix=self._names.prefix,
            leader=self._leading and not stopping,
            sent_at=time.time(),
            interval=self._status_interval,
            marks=dict(self._marks),
            stopping=stopping,
        )

    async def _notify(self, transport: Transport, *, stopping: bool = False) -> None:
        status = self.status(stopping=stopping)
        payload: Any = status.to_payload()
        try:
            await transport.notify(
                control_exchange(self._names.prefix),
                status.routing_key,
                dumps(payload),
                timeout=NOTICE_TIMEOUT,
            )
        except AqueueError as exc:
            logger.debug("scheduler notice not sent: %s", exc)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
