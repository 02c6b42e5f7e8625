"""A TCP proxy that can cut the link silently: bytes are dropped, sockets stay open.

A network cut, not a closed connection: neither side learns of it until its AMQP heartbeats
go unanswered. For tests only; it listens on a free loopback port and forwards to one
upstream address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketStream


class Blackhole:
    """Forwards 127.0.0.1:`port` to `upstream`; `cut` drops everything until `restore`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.cut = False

    async def _pump(self, source: SocketStream, sink: SocketStream) -> None:
        try:
            async for chunk in source:
                if not self.cut:
                    await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await sink.aclose()

    async def _serve(self, client: SocketStream) -> None:
        try:
            upstream = await anyio.connect_tcp(*self.upstream)
        except OSError:
            await client.aclose()
            return
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, client, upstream)
                tg.start_soon(self._pump, upstream, client)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()
                await upstream.aclose()


@asynccontextmanager
async def blackhole(upstream_host: str, upstream_port: int) -> AsyncIterator[Blackhole]:
    """A running `Blackhole` for the block."""
    proxy = Blackhole(upstream_host, upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - not Django
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._serve)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
