"""Serving an ASGI app inside a running event loop (the runtime owns the signals)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from streams.supervise import loop_factory


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpService:
    """One app on host:port that can be started, stopped and started again."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 lifespan: str = "off"):
        self.app, self.host, self.port, self.lifespan = app, host, port, lifespan
        self._server: QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if not self.port:
            import socket

            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        self._server = QuietServer(uvicorn.Config(
            self.app, host=self.host, port=self.port, log_level="warning", lifespan=self.lifespan,  # type: ignore[arg-type]
            access_log=False))
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        self._server = self._task = None

    @property
    def running(self) -> bool:
        return self._server is not None


async def serve_in_thread(server: uvicorn.Server, name: str = "hashplane-api") -> None:
    """Run ``server`` on its own event loop in its own thread until it stops (or this is
    cancelled: then it is told to exit, and waited for).

    The API of ``demo``/``up`` shares its process with the sink, the connectors and the
    simulated farm (the embedded ClickHouse belongs to one process); on their event loop a
    dashboard request waited behind every sweep and insert.  On its own loop it waits only
    for the interpreter."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not done.done():
            done.set_result(None) if exc is None else done.set_exception(exc)

    def run() -> None:
        error: BaseException | None = None
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(server.serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting loop
            error = exc
        with contextlib.suppress(RuntimeError):  # the awaiting loop is gone
            loop.call_soon_threadsafe(settle, error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        await asyncio.shield(done)
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15.0)
