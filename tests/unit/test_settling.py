"""`settling`: which ``basic.ack`` frames ack exactly the settled tags, and in what order."""

from __future__ import annotations

import asyncio

import pytest

from aqueue._transport.settling import ChannelAcks, plan


@pytest.mark.parametrize(
    ("pending", "lowest", "frames"),
    [
        ([3, 1, 2], None, [(3, True)]),
        ([1], None, [(1, False)]),
        ([1, 2, 5, 7], 4, [(2, True), (5, False), (7, False)]),
        ([5, 6], 1, [(5, False), (6, False)]),
        ([2], 3, [(2, False)]),
        ([], None, []),
    ],
)
def test_plan_covers_only_tags_below_the_lowest_unsettled(
    pending: list[int], lowest: int | None, frames: list[tuple[int, bool]]
) -> None:
    assert plan(pending, lowest) == frames


class Channel:
    """Records the frames; each write takes a turn of the loop, as aiormq's drain does."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.frames: list[tuple[int, bool]] = []
        self.fail = fail

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        self.frames.append((delivery_tag, multiple))


async def test_acks_of_one_turn_share_a_frame_and_skip_unsettled_tags() -> None:
    channel = Channel()
    acks = ChannelAcks(channel)
    for tag in range(1, 7):
        acks.delivered(tag, object())
    # 4 still runs: 1-3 go as one multiple ack, 5 and 6 alone
    await asyncio.gather(*(acks.ack(tag) for tag in (1, 2, 3, 5, 6)))
    assert channel.frames == [(3, True), (5, False), (6, False)]
    assert acks.unsettled() != []
    await acks.ack(4)
    assert channel.frames[-1] == (4, False)
    assert acks.unsettled() == []


async def test_a_later_batch_waits_for_the_earlier_one() -> None:
    """Acks asked for while a batch is written go in the next one, after it: never ahead."""
    channel = Channel()
    acks = ChannelAcks(channel)
    for tag in range(1, 5):
        acks.delivered(tag, object())
    first = asyncio.gather(acks.ack(2), acks.ack(3))
    await asyncio.sleep(0)  # the flush has begun writing 2
    await asyncio.gather(acks.ack(1), acks.ack(4), first)
    assert channel.frames == [(2, False), (3, False), (4, True)]


async def test_a_failed_write_fails_every_ack_of_its_batch_with_a_connection_error() -> None:
    channel = Channel(fail=asyncio.CancelledError())  # aiormq's way on a dying channel
    acks = ChannelAcks(channel)
    acks.delivered(1, object())
    acks.delivered(2, object())
    results = await asyncio.gather(acks.ack(1), acks.ack(2), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)


async def test_a_cancelled_acker_does_not_stop_the_ack() -> None:
    channel = Channel()
    acks = ChannelAcks(channel)
    acks.delivered(1, object())
    acks.delivered(2, object())
    waiting = asyncio.ensure_future(acks.ack(1))
    await asyncio.sleep(0)  # its batch is open
    waiting.cancel()
    await acks.ack(2)  # joins the same batch: 1 is acked with it, cancelled or not
    assert channel.frames == [(2, True)]
    assert waiting.cancelled()


async def test_on_empty_is_called_once_as_the_last_delivery_is_settled() -> None:
    acks = ChannelAcks(Channel())
    calls: list[int] = []
    acks.delivered(1, object())
    acks.delivered(2, object())
    acks.on_empty = lambda: calls.append(len(acks))
    await acks.ack(1)
    assert calls == []
    acks.forget(2)  # its reject was written
    assert calls == [0]
    assert acks.on_empty is None
