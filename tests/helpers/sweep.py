"""Delete every queue and exchange whose name starts with a prefix (test leftovers)."""

from __future__ import annotations

import subprocess

import aio_pika
import anyio


def _names(kind: str, prefix: str) -> list[str]:
    result = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", f"list_{kind}", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.startswith(prefix)]


async def _delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(url)
    try:
        for name in queues:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()
        for name in exchanges:
            channel = await connection.channel()
            await channel.exchange_delete(name)
            await channel.close()
    finally:
        await connection.close()


def sweep(url: str, prefix: str) -> None:
    """Delete `prefix`'s queues and exchanges on the broker at `url` (best effort)."""
    queues = _names("queues", prefix)
    exchanges = _names("exchanges", prefix)
    if queues or exchanges:
        anyio.run(_delete, url, queues, exchanges)
