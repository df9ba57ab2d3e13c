"""What every source connector shares: an event sink, counters, reconnect with backoff.

A connector is a pure ``parse_*`` layer (recorded payloads in tests) beside a thin transport
loop.  Transport failures become ``ConnectorError``; undecodable input becomes a dead letter
(source, reason, raw bytes up to 4 KiB) and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from schemas.envelope import Event
from streams.codec import dead_letter

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Event time at the source: the connector's clock (injected in tests)."""
    return datetime.now(UTC)


class ConnectorError(RuntimeError):
    """The device or service could not be reached or answered with an error."""


class EventSink(Protocol):
    """Where a connector's events go (``streams.publish.Publisher`` in production, a list
    in tests)."""

    async def offer(self, events: list[Event]) -> None:
        """Queue readings and return at once (sent in the background, retried through
        outages; the oldest are dropped, and counted, past a bound)."""

    async def deliver(self, events: list[Event]) -> None:
        """Publish events and return once the broker acknowledged every one, retrying
        through outages (what must never be dropped: commands' acks)."""


@dataclass
class ConnectorStats:
    """Counters for the metrics endpoint."""

    events: int = 0
    errors: int = 0
    dlq: int = 0
    reconnects: int = 0
    last_error: str = ""
    last_ok_monotonic: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


class Emitter:
    """Publishes a connector's events and dead letters and keeps its counters."""

    def __init__(self, sink: EventSink, *, source: str, site: str, clock: Clock = utc_now):
        self.sink, self.source, self.site, self.clock = sink, source, site, clock
        self.stats = ConnectorStats()

    async def emit(self, events: list[Event]) -> None:
        """Hand readings to the sink's outbox (never waits on the broker)."""
        if not events:
            return
        await self.sink.offer(events)
        self._count(events)

    async def deliver(self, events: list[Event]) -> None:
        """Publish events that must not be lost (acks) and wait until the broker has them."""
        if not events:
            return
        await self.sink.deliver(events)
        self._count(events)

    def _count(self, events: list[Event]) -> None:
        self.stats.events += len(events)
        self.stats.last_ok_monotonic = time.monotonic()
        for e in events:
            self.stats.by_kind[e.kind] = self.stats.by_kind.get(e.kind, 0) + 1

    async def dead(self, input_name: str, raw: bytes | None, reason: str, key: str = "") -> None:
        letter = dead_letter(source_topic=input_name, raw=raw, reason=reason, site=self.site,
                             source=self.source, ts=self.clock(), key=key.encode() or None)
        await self.sink.offer([letter])
        self.stats.dlq += 1
        log.warning("%s: dead-lettered input from %s: %s", self.source, input_name, reason)

    def error(self, exc: BaseException | str) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)[:500]


async def with_backoff(name: str, body: Callable[[], Awaitable[None]], stop: asyncio.Event,
                       emitter: Emitter, *, first_s: float = 0.5, max_s: float = 30.0) -> None:
    """Run ``body`` until ``stop``; on ConnectorError/OSError wait (capped, jittered
    exponential backoff) and run it again."""
    delay = first_s
    while not stop.is_set():
        try:
            await body()
            delay = first_s
        except (ConnectorError, OSError, TimeoutError) as exc:
            emitter.error(exc)
            emitter.stats.reconnects += 1
            log.warning("%s: %s; retrying in %.1fs", name, exc, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay * random.uniform(0.8, 1.2))
            except TimeoutError:
                pass
            delay = min(max_s, delay * 2)


async def every(period_s: float, stop: asyncio.Event, tick: Callable[[], Awaitable[None]]) -> None:
    """Call ``tick`` every ``period_s`` (fixed rate, skipping missed slots) until ``stop``."""
    next_t = time.monotonic()
    while not stop.is_set():
        await tick()
        next_t += period_s
        now = time.monotonic()
        if next_t < now:
            next_t = now + period_s * ((now - next_t) // period_s + 1) - period_s
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_t - time.monotonic()))
        except TimeoutError:
            pass


class ListSink:
    """An EventSink that keeps events in memory (tests, dry runs)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def offer(self, events: list[Event]) -> None:
        self.events.extend(events)

    async def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)
