"""One request, one reply, over a fresh TCP connection: the transport of the CGMiner RPC and
of the firmware web APIs (connectors/httplite.py).

A bare protocol rather than asyncio streams: no reader/writer objects and no task per read,
which is most of the cost of a sweep over 10,000 miners.  The whole exchange, connecting
included, is bounded by one deadline, and a reply by its size.
"""

from __future__ import annotations

import asyncio
from typing import cast


class _Exchange(asyncio.Protocol):
    def __init__(self, payload: bytes, max_bytes: int, until_nul: bool,
                 too_big: type[Exception], done: asyncio.Future[bytes]) -> None:
        self.payload, self.max_bytes, self.until_nul = payload, max_bytes, until_nul
        self.too_big, self.done = too_big, done
        self.chunks: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports write like asyncio's but do not derive from WriteTransport
        cast(asyncio.WriteTransport, transport).write(self.payload)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size > self.max_bytes:
            self.done.set_exception(self.too_big(f"reply over {self.max_bytes} bytes"))
        elif self.until_nul and data.endswith(b"\x00"):
            self.done.set_result(b"".join(self.chunks))

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(b"".join(self.chunks))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(b"".join(self.chunks))
            else:
                self.done.set_exception(exc)


async def exchange(host: str, port: int, payload: bytes, timeout_s: float, max_bytes: int, *,
                   until_nul: bool = False, too_big: type[Exception] = ValueError) -> bytes:
    """Send ``payload``; the reply up to EOF (or a chunk ending in NUL when ``until_nul``:
    CGMiner's terminator).  OSError when the connection fails, TimeoutError when it is not
    all done within ``timeout_s``, ``too_big`` past ``max_bytes``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout_s):
            transport, _ = await loop.create_connection(
                lambda: _Exchange(payload, max_bytes, until_nul, too_big, done), host, port)
            return await done
    finally:
        if transport is not None:
            transport.close()
        if not done.done():
            done.cancel()
