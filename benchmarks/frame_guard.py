"""What the AMQP frame guard costs per delivery: ``python -m benchmarks.frame_guard``.

aiormq's own frame reader reads the same bytes (deliveries of aqueue's usual headers, fed in
64 KiB chunks as a socket hands them over) from a plain ``asyncio.StreamReader`` and from
aqueue's `GuardedStreamReader`; the difference in CPU time per delivery is the guard's cost.
No broker: the figure is the client's alone. Runs alternate, and the minimum and median of
each side are reported (a loaded machine inflates both).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime

from aiormq.connection import FrameReceiver
from pamqp import commands, frame, header
from pamqp.body import ContentBody

from aqueue._transport.amqp_frames import GuardedStreamReader, Properties

_CHUNK = 65536


def _stream(deliveries: int) -> list[bytes]:
    """`deliveries` messages as aqueue's worker receives them, cut as a socket would."""
    headers = {
        "aqueue-task": "benchmarks.noop",
        "aqueue-queue": "default",
        "aqueue-attempt": 1,
        "aqueue-enqueued-at": 1_760_000_000_000,
        "aqueue-version": 1,
        "x-delivery-count": 0,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    properties = Properties(
        content_type="application/json",
        headers=headers,  # type: ignore[arg-type]
        delivery_mode=2,
        message_id="0f8fad5bd9cb469fa16570867728950e",
        timestamp=datetime.fromtimestamp(1_760_000_000, UTC),
    )
    body = b'{"args":[1],"kwargs":{}}'
    deliver = commands.Basic.Deliver(
        consumer_tag="ctag1.0123456789abcdef",
        delivery_tag=1,
        exchange="bench",
        routing_key="bench.default",
    )
    one = (
        frame.marshal(deliver, 1)
        + frame.marshal(header.ContentHeader(0, len(body), properties), 1)
        + frame.marshal(ContentBody(body), 1)
    )
    data = one * deliveries
    return [data[pos : pos + _CHUNK] for pos in range(0, len(data), _CHUNK)]


async def _run(chunks: list[bytes], deliveries: int, *, guarded: bool) -> float:
    """CPU microseconds per delivery to feed and read every frame."""
    started = time.process_time()
    reader = (
        GuardedStreamReader(loop=asyncio.get_running_loop(), limit=2**30)
        if guarded
        else asyncio.StreamReader(limit=2**30)
    )
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    frames = 0
    async for _ in FrameReceiver(reader):
        frames += 1
    if frames != 3 * deliveries:
        raise RuntimeError(f"read {frames} frames, not {3 * deliveries}")
    return (time.process_time() - started) / deliveries * 1e6


async def _main(deliveries: int, repeats: int) -> None:
    chunks = _stream(deliveries)
    runs: dict[bool, list[float]] = {False: [], True: []}
    for repeat in range(repeats):
        for guarded in (False, True) if repeat % 2 else (True, False):
            runs[guarded].append(await _run(chunks, deliveries, guarded=guarded))
    for guarded, name in ((False, "plain reader"), (True, "frame guard")):
        times = runs[guarded]
        print(f"{name}: {min(times):.2f} us/delivery (median {statistics.median(times):.2f})")
    overhead = min(runs[True]) - min(runs[False])
    median = statistics.median(runs[True]) - statistics.median(runs[False])
    print(f"guard cost: {overhead:.2f} us/delivery (medians: {median:.2f})")


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=21)
    options = parser.parse_args()
    asyncio.run(_main(options.deliveries, options.repeat))


if __name__ == "__main__":
    main()
