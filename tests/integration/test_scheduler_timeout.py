"""The scheduler election and RabbitMQ's ``consumer_timeout``, on a private node (2 s).

A leader that renews its token (every second here) never holds a delivery long enough for
the broker's timeout: it leads on. One that renews too rarely has its channel closed by the
broker, and the other scheduler takes over: either way one scheduler leads.
"""

from __future__ import annotations

from collections.abc import Iterator

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
