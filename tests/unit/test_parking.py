"""The parking: rate-limited jobs wait in the worker for the last seconds before their start."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from aqueue._core.types import HeaderValue
from aqueue._core.wire import HEADER_DEFERRED, HEADER_ETA, HEADER_RATE_RESERVED
from aqueue._transport import Delivery
from aqueue._worker.parking import Parking, ReservedDelivery


@dataclass
class FakeDelivery(Delivery):
    """A delivery that records how it was settled."""

    name: str = ""
    headers: dict[str, HeaderValue] = field(default_factory=dict)
    body: bytes = b"[[],{}]"
    message_id: str | None = "job"
    content_type: str = "application/json"
    routing_key: str = "q"
    queue: str = "aqueue.q"
    redelivered: bool = False
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def reject(self, *, requeue: bool) -> None:
        self.settled.append(f"reject requeue={requeue}")


def reserved(name: str, due: float) -> FakeDelivery:
    """A delivery whose start is reserved for `due` (Unix seconds)."""
    return FakeDelivery(name, {HEADER_RATE_RESERVED: 1, HEADER_ETA: round(due * 1000)})


async def test_a_reserved_delivery_waits_until_its_start_then_goes_in_start_order() -> None:
    """Deliveries reserved for later are released at their start, earliest first, whatever
    their arrival order; none before its time."""
    released: list[tuple[str, float]] = []
    done = anyio.Event()

    def release(delivery: Delivery) -> None:
        assert isinstance(delivery, FakeDelivery)
        released.append((delivery.name, time.time()))
        if len(released) == 3:
            done.set()

    parking = Parking(release)
    now = time.time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(parking.run)
        parking.put(reserved("late", now + 0.3))
        parking.put(reserved("early", now + 0.1))
        parking.put(reserved("middle", now + 0.2))
        assert parking.parked() == 3
        assert released == []
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert [name for name, _ in released] == ["early", "middle", "late"]
    for (_, at), due in zip(released, (0.1, 0.2, 0.3), strict=True):
        # released within PARK_AT_LEAST (2 ms) of its start, due times in whole ms: never sooner
        assert at >= now + due - 0.003
    assert parking.parked() == 0


async def test_unreserved_and_overdue_deliveries_are_released_at_once() -> None:
    """A concurrency-cap retry (no reservation), or a copy that came back late, is not parked."""
    released: list[Delivery] = []
    parking = Parking(released.append)
    plain = FakeDelivery("plain", {HEADER_ETA: round((time.time() + 60) * 1000)})
    overdue = reserved("overdue", time.time() - 1)
    parking.put(plain)
    parking.put(overdue)
    assert released == [plain, overdue]
    assert parking.parked() == 0


def test_close_releases_every_parked_delivery_and_later_ones_at_once() -> None:
    """A stopping worker gets every parked delivery back at once, to hand it back."""
    released: list[Delivery] = []
    parking = Parking(released.append)
    first = reserved("first", time.time() + 60)
    parking.put(first)
    assert released == []
    parking.close()
    later = reserved("later", time.time() + 60)
    parking.put(later)
    assert released == [first, later]


async def test_a_reserved_delivery_carries_its_reservation_and_settles_the_original() -> None:
    """The parked form of a delivery says its start is reserved (so it is not booked twice,
    and a hand-back copy keeps it), counts the deferral, and acks the delivery it wraps."""
    inner = FakeDelivery("job", {"x-delivery-count": 0, "aqueue-attempt": 1})
    wrapped = ReservedDelivery(inner, eta_ms=1234)
    assert wrapped.headers[HEADER_RATE_RESERVED] == 1
    assert wrapped.headers[HEADER_ETA] == 1234
    assert wrapped.headers[HEADER_DEFERRED] == {"rate": 1}
    assert wrapped.headers["x-delivery-count"] == 0
    await wrapped.ack()
    await wrapped.reject(requeue=False)
    assert inner.settled == ["ack", "reject requeue=False"]
