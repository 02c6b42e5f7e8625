"""The intake: deliveries handed to idle runners, and what a stopping worker gives back."""

from __future__ import annotations

from typing import cast

from aqueue._transport import Delivery
from aqueue._worker.intake import Intake


def delivery(name: str) -> Delivery:
    """A stand-in: the intake only passes deliveries along."""
    return cast("Delivery", name)


async def test_a_closed_intake_keeps_late_deliveries_for_the_hand_back() -> None:
    """Once closed, no runner gets a delivery; those held and those arriving later (a
    deferred one first) are all returned, once, by `unstarted`."""
    intake = Intake()
    intake.put(delivery("held"))
    intake.close()
    intake.put(delivery("late"))
    intake.put_first(delivery("deferred"))
    assert await intake.get() is None
    assert intake.unstarted() == [delivery("deferred"), delivery("held"), delivery("late")]
    assert intake.unstarted() == []
