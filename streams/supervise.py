"""Keeping a stack's services running: what `hashplane demo` and `up` do for their parts.

A service that fails (an in-process task that raises, a child process that exits) is
started again after a capped, growing delay, and the failure is logged and counted: one
broken part never takes the others down.  In production each part is its own systemd unit
and systemd plays this role (``infra/systemd``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (a dependency: about a third less CPU per request
    than the standard loop), else the standard one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(main)`` on :func:`loop_factory`'s loop: what the I/O-bound processes
    (connectors, actuators, the simulator, discovery) run on."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


@dataclass
class Service:
    """One supervised part: an in-process coroutine or a child process."""

    name: str
    start: Callable[[], Any]  # -> Awaitable (task) or subprocess.Popen (process)
    restarts: int = 0
    last_error: str = ""
    running: Any = None  # asyncio.Task | subprocess.Popen
    started_at: float = 0.0
    retry_at: float | None = None


@dataclass
class Supervisor:
    """Start services and restart those that stop while the stack runs."""

    stop: asyncio.Event
    max_delay_s: float = 30.0
    healthy_s: float = 60.0  # ran this long: the next failure restarts at once
    services: dict[str, Service] = field(default_factory=dict)
    on_restart: Callable[[Service], Awaitable[None]] | None = None

    def task(self, name: str, factory: Callable[[], Awaitable[None]]) -> Service:
        """Run ``factory()`` as a task; start it again whenever it ends before ``stop``."""
        svc = Service(name, factory)
        self.services[name] = svc
        self._launch(svc)
        return svc

    def process(self, name: str, spawn: Callable[[], subprocess.Popen[bytes]]) -> Service:
        """Run a child process; start it again whenever it exits before ``stop``."""
        svc = Service(name, spawn)
        self.services[name] = svc
        self._launch(svc)
        return svc

    def _launch(self, svc: Service) -> None:
        made = svc.start()
        svc.running = asyncio.ensure_future(made) if asyncio.iscoroutine(made) else made
        svc.started_at = time.monotonic()
        svc.retry_at = None

    @staticmethod
    def _ended(svc: Service) -> str | None:
        """Why the service is not running (None while it runs)."""
        r = svc.running
        if isinstance(r, subprocess.Popen):
            code = r.poll()
            return None if code is None else f"exited with code {code}"
        if not r.done():
            return None
        if r.cancelled():
            return "cancelled"
        exc = r.exception()
        return f"failed: {exc!r}" if exc is not None else "ended"

    async def check(self) -> None:
        """Look at every service once; schedule or perform restarts."""
        if self.stop.is_set():
            return
        now = time.monotonic()
        for svc in self.services.values():
            if svc.retry_at is not None:
                if now >= svc.retry_at:
                    log.warning("restarting %s (restart %d)", svc.name, svc.restarts)
                    try:
                        self._launch(svc)
                    except Exception as exc:  # noqa: BLE001 - spawn failed: try again later
                        svc.last_error = f"restart failed: {exc!r}"
                        svc.retry_at = now + self.max_delay_s
                        continue
                    if self.on_restart is not None:
                        await self.on_restart(svc)
                continue
            why = self._ended(svc)
            if why is None:
                continue
            ran = now - svc.started_at
            svc.restarts += 1
            svc.last_error = why
            delay = 0.5 if ran >= self.healthy_s else min(
                self.max_delay_s, 0.5 * 2 ** min(svc.restarts, 8))
            svc.retry_at = now + delay
            log.error("%s %s after %.0f s; restarting in %.1f s", svc.name, why, ran, delay)

    async def shutdown(self, timeout_s: float = 15.0) -> None:
        """Wait for the tasks to end (they watch ``stop``), then stop the processes."""
        for svc in self.services.values():
            r = svc.running
            if isinstance(r, asyncio.Future) and not r.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError,
                                         Exception):
                    await asyncio.wait_for(asyncio.shield(r), timeout_s)
        for svc in self.services.values():
            r = svc.running
            if isinstance(r, subprocess.Popen):
                await asyncio.to_thread(terminate, r)


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM a child, SIGKILL it if it has not exited after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
