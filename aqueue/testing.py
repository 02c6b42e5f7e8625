"""Test your tasks without RabbitMQ: an in-memory broker with RabbitMQ's semantics.

`MemoryBroker` is one virtual host held in memory, `MemoryTransport` one connection to it, and
`running_worker` runs a `Worker` for an ``async with`` block. See the testing page.
"""

from aqueue._testing import running_worker
from aqueue._transport.memory import MemoryTransport
from aqueue._transport.memory_broker import MemoryBroker

__all__ = ["MemoryBroker", "MemoryTransport", "running_worker"]
