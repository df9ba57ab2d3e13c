"""A minimal HTTP/1.1 server for the simulated miners' web APIs (one request per connection).

A miner's web UI is a small embedded server; ten thousand simulated miners cannot each run
an ASGI stack.  ``serve_http(route, host, port)`` reads one request (request line, headers,
a bounded body), calls ``route(Request)`` and writes its JSON answer, then closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY = 64 << 10
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.body or b"{}")


@dataclass(frozen=True)
class Answer:
    status: int
    payload: Any  # JSON, or a str sent as an HTML page
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[Request], Answer | Awaitable[Answer] | None]


async def serve_http(route: Route, host: str, port: int) -> asyncio.Server:
    """Listen on host:port; ``route`` answers each request (None: close without answering,
    as a crashed miner does)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = [*lines[0].split(" "), "", ""][:3]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (ln.partition(":") for ln in lines[1:] if ln)}
            length = min(int(headers.get("content-length", "0") or 0), MAX_BODY)
            body = await asyncio.wait_for(reader.readexactly(length), 5.0) if length else b""
            answer = route(Request(method, path.split("?")[0], headers, body))
            if asyncio.iscoroutine(answer):
                answer = await answer
            if answer is None:
                return
            assert isinstance(answer, Answer)
            html = isinstance(answer.payload, str)
            data = answer.payload.encode() if html else json.dumps(answer.payload).encode()
            kind = "text/html; charset=utf-8" if html else "application/json"
            extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers)
            writer.write(f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Error')}\r\n"
                         f"Content-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
                         f"{extra}Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass
        except Exception:  # a simulated device never dies of a request
            log.exception("web handler failed on %s:%d", host, port)
        finally:
            writer.close()

    return await asyncio.start_server(on_connect, host, port, backlog=64, reuse_address=True)
