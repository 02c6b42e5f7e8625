"""The scheduler election through faults: RabbitMQ's ``consumer_timeout`` on a private node
(2 s), ``close_all_connections`` there, and a network cut (a proxy that drops every byte).

A leader that renews its token (every second here) never holds a delivery long enough for
the broker's timeout: it leads on. One that renews too rarely has its channel closed by the
broker, and the other scheduler takes over: either way one scheduler leads.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import pytest

from aqueue import TaskQueue
from aqueue._scheduler.scheduler import Scheduler
from tests.helpers.polling import wait_for
from tests.helpers.rabbit_node import RabbitNode

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(120)]

CONSUMER_TIMEOUT_MS = 2_000


@pytest.fixture(scope="module")
def short_timeout_node(rabbit_node_support: None) -> Iterator[RabbitNode]:
    """A private node that closes a channel whose delivery stays unacked for 2 s (checked on
    a 1 s channel tick)."""
    node = RabbitNode(config=[f"consumer_timeout = {CONSUMER_TIMEOUT_MS}"])
    try:
        node.start()
        node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
        yield node
    finally:
        node.cleanup()


def _app(url: str, prefix: str, name: str) -> TaskQueue:
    queue = TaskQueue(url, prefix=prefix, telemetry=False, name=f"{prefix}-{name}")

    @queue.periodic("0 0 1 1 *", name="yearly")  # never due during the test
    @queue.task(name="yearly")
    async def yearly() -> None: ...

    return queue


@pytest.mark.parametrize(("renew", "leader_changes"), [(1.0, False), (30.0, True)])
async def test_the_election_outlives_the_consumer_timeout(
    short_timeout_node: RabbitNode, prefix: str, renew: float, leader_changes: bool
) -> None:
    """Renewing every second, the leader leads through 2.5 timeouts; renewing every 30 s,
    the broker's timeout closes its channel and the other scheduler leads."""
    url = short_timeout_node.url
    first_queue, second_queue = _app(url, prefix, "one"), _app(url, prefix, "two")
    async with first_queue.session() as one, second_queue.session() as two:
        first = Scheduler(one, first_queue.schedules, renew_interval=renew)
        second = Scheduler(two, second_queue.schedules, renew_interval=renew)
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            await wait_for(lambda: first.leading, timeout=10, what="the first scheduler leads")
            await tg.start(second.run)
            if leader_changes:
                await wait_for(lambda: second.leading, timeout=15, what="the second takes over")
            else:
                watched = 2.5 * CONSUMER_TIMEOUT_MS / 1000
                with anyio.move_on_after(watched):  # the behaviour under test is time passing
                    await wait_for(
                        lambda: second.leading or not first.leading,
                        timeout=watched + 1,
                        what="a change of leader",
                    )
                assert first.leading
                assert not second.leading
            tg.cancel_scope.cancel()


async def test_after_close_all_connections_one_leads_and_the_other_follows(
    short_timeout_node: RabbitNode, prefix: str
) -> None:
    """``rabbitmqctl close_all_connections`` on the node: both schedulers reconnect, one of
    them leads again and the other follows."""
    url = short_timeout_node.url
    first_queue, second_queue = _app(url, prefix, "one"), _app(url, prefix, "two")
    async with first_queue.session() as one, second_queue.session() as two:
        first = Scheduler(one, first_queue.schedules, renew_interval=1.0)
        second = Scheduler(two, second_queue.schedules, renew_interval=1.0)
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            await wait_for(lambda: first.leading, timeout=10, what="the first scheduler leads")
            await tg.start(second.run)
            await anyio.to_thread.run_sync(
                short_timeout_node.ctl, "close_all_connections", "test: all closed"
            )
            await wait_for(
                lambda: not first.leading, timeout=10, what="the leader notices its loss"
            )
            await wait_for(
                lambda: first.leading != second.leading, timeout=20, what="one leader again"
            )
            tg.cancel_scope.cancel()


async def test_a_leader_cut_off_by_the_network_is_replaced_and_no_tick_runs_twice(
    amqp_url: str, prefix: str
) -> None:
    """The leader's link is cut silently (heartbeat 1 s): the broker drops it and the other
    scheduler leads; once the link is back the old leader follows; with a result backend no
    tick of the every-second schedule runs twice."""
    from aqueue import MemoryResultBackend, WorkerSettings, current_job
    from aqueue.testing import running_worker
    from tests.helpers.blackhole import blackhole

    backend = MemoryResultBackend()  # shared by the three queues: they are one app
    ran: list[str] = []

    def app(url: str, name: str) -> TaskQueue:
        queue = TaskQueue(
            url, prefix=prefix, telemetry=False, name=f"{prefix}-{name}", results=backend
        )

        @queue.periodic(every=1, name="second")
        @queue.task(name="tick")
        async def tick() -> None:
            ran.append(current_job().job_id)

        return queue

    parts = urlsplit(amqp_url)
    async with blackhole(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        cut_url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=1"
        first_queue = app(cut_url, "cut")
        second_queue = app(f"{amqp_url.rstrip('/')}/?heartbeat=1", "direct")
        async with (
            first_queue.session() as one,
            second_queue.session() as two,
            running_worker(second_queue, WorkerSettings(concurrency=4)),
            anyio.create_task_group() as tg,
        ):
            first = Scheduler(one, first_queue.schedules)
            second = Scheduler(two, second_queue.schedules)
            await tg.start(first.run)
            await wait_for(lambda: first.leading, timeout=10, what="the first scheduler leads")
            await tg.start(second.run)
            await wait_for(lambda: len(ran) >= 2, timeout=10, what="two ticks")
            proxy.cut = True
            took = await wait_for(lambda: second.leading, timeout=30, what="a takeover")
            await wait_for(lambda: not first.leading, timeout=30, what="the cut leader stops")
            proxy.cut = False
            count = len(ran)
            await wait_for(lambda: len(ran) >= count + 2, timeout=15, what="more ticks")
            assert second.leading
            assert not first.leading
            tg.cancel_scope.cancel()
    print(f"takeover after the cut: {took:.2f} s")
    assert len(ran) == len(set(ran)), ran
