"""The session: what exists only while a `TaskQueue` is open.

`TaskQueue` keeps the tasks, the settings and the user's verbs; everything connection-scoped
lives here, created by `TaskQueue.open()` and closed by `aclose()`: the publishing transport,
the producer with its declarations, the job states and the workflow flows, and the factory of
further connections (a worker's consumer, the dead-letter tools). Downstream objects (the
worker's job runner, `Flows`, `DeadLetterQueue`) are handed the session, never the
`TaskQueue`: "the queue is open" is a value, not a check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio

from aqueue._client.fair import FairShare
from aqueue._client.flows import Flows
from aqueue._client.producer import Producer
from aqueue._core.config import ConnectionSettings, ProducerSettings, QueueSettings
from aqueue._core.topology import TopologyNames
from aqueue._observability.hooks import Instruments
from aqueue._results import ResultBackend
from aqueue._results.states import JobStates
from aqueue._transport import Connector, Transport


class Session:
    """The connection-scoped parts of one open `TaskQueue`.

    Attributes:
        names: the broker names of the queue's prefix.
        queue_settings: how work queues are declared.
        connection: how connections reach the broker.
        transport: the publishing connection.
        producer: publishes (confirmed) on `transport`, declaring on first use.
        states: job states in the result backend (no-ops without one).
        flows: workflow starts and continuations.
        instruments: the queue's instrumentations (shared: later additions are seen).
    """

    def __init__(
        self,
        *,
        connect: Connector,
        names: TopologyNames,
        queue_settings: QueueSettings,
        connection: ConnectionSettings,
        transport: Transport,
        producer: Producer,
        states: JobStates,
        instruments: Instruments,
    ) -> None:
        self._connect = connect
        self.names = names
        self.queue_settings = queue_settings
        self.connection = connection
        self.transport = transport
        self.producer = producer
        self.states = states
        self.flows = Flows(producer, states)
        #: the shard of each fair-share job (see `aqueue._client.fair`)
        self.fair = FairShare(producer, transport, names, queue_settings)
        self.instruments = instruments

    def __repr__(self) -> str:
        return f"<Session prefix={self.names.prefix!r} transport={self.transport!r}>"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        connect: Connector,
        names: TopologyNames,
        queue_settings: QueueSettings,
        connection: ConnectionSettings,
        producer_settings: ProducerSettings,
        instruments: Instruments,
        backend: ResultBackend | None,
        result_ttl: float,
    ) -> AsyncIterator[Session]:
        """Connect the publishing transport and open the result backend, for the block.

        Raises:
            ConnectionFailed: no broker answered within ``connection.connect_timeout``.
        """
        async with AsyncExitStack() as stack:
            transport = connect("publisher")
            await transport.connect(timeout=connection.connect_timeout)
            stack.push_async_callback(transport.aclose)
            if backend is not None:
                await backend.open()
                stack.push_async_callback(backend.aclose)
            producer = Producer(transport, names, queue_settings, producer_settings, instruments)
            yield cls(
                connect=connect,
                names=names,
                queue_settings=queue_settings,
                connection=connection,
                transport=transport,
                producer=producer,
                states=JobStates(backend, result_ttl),
                instruments=instruments,
            )

    @asynccontextmanager
    async def connection_for(self, role: str) -> AsyncIterator[Transport]:
        """A connection of its own (a worker's consumer, a dead-letter pass), for the block.

        Closing it gives back, unacked, whatever it still holds: the broker delivers that again.

        Raises:
            ConnectionFailed: no broker answered within ``connection.connect_timeout``.
        """
        transport = self._connect(role)
        await transport.connect(timeout=self.connection.connect_timeout)
        try:
            yield transport
        finally:
            with anyio.CancelScope(shield=True):
                await transport.aclose()
