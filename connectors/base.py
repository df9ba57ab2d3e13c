"""What every source connector shares: an event sink, counters, reconnect with backoff.

A connector is a pure ``parse_*`` layer (recorded payloads in tests) beside a thin transport
loop.  Transport failures become ``ConnectorError``; undecodable input becomes a dead letter
(source, reason, raw bytes up to 4 KiB) and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson

from schemas.envelope import Event
from schemas.plausibility import implausible
from streams.codec import dead_letter, encode

log = logging.getLogger(__name__)

_NUMBERS = re.compile(r"[-+]?\d[\d.eE+-]*")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Event time at the source: the connector's clock (injected in tests)."""
    return datetime.now(UTC)


class ConnectorError(RuntimeError):
    """The device or service could not be reached or answered with an error."""


#: The most a device's reply may hold (HTTP bodies, MQTT payloads): real ones are a few KiB.
MAX_REPLY_BYTES = 4 << 20


class ReplyError(ValueError):
    """A device reply refused before it is parsed: too large or not JSON."""


def load_json(raw: bytes | str, *, max_bytes: int = MAX_REPLY_BYTES) -> Any:
    """Parse a device's JSON reply, bounded: size first, then orjson (fast, and nesting
    past 1,024 levels is an error rather than a RecursionError)."""
    if len(raw) > max_bytes:
        raise ReplyError(f"reply of {len(raw)} bytes over the {max_bytes}-byte limit")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReplyError(f"not JSON: {exc}") from None


async def fetch(client: httpx.AsyncClient, method: str, url: str, *,
                max_bytes: int = MAX_REPLY_BYTES, **kw: Any) -> tuple[int, bytes]:
    """One HTTP request to a device, its body read up to ``max_bytes`` (ReplyError past
    that: a hostile endpoint cannot make us hold 100 MB) within the request's ``timeout``
    as a whole (httpx's timeout is per read: a reply dripped a byte at a time would
    otherwise hold the sweep for ever; past it, ``httpx.TimeoutException``)."""
    timeout = kw.get("timeout")
    total_s = float(timeout) if isinstance(timeout, int | float) else 30.0

    async def read() -> tuple[int, bytes]:
        async with client.stream(method, url, **kw) as r:
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ReplyError(f"reply over the {max_bytes}-byte limit from {url}")
            return r.status_code, bytes(body)

    try:
        return await asyncio.wait_for(read(), total_s)
    except TimeoutError:
        raise httpx.TimeoutException(f"no whole reply from {url} within {total_s:g} s") \
            from None


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
    dlq_suppressed: int = 0  # like a letter sent within the interval: counted, not sent
    implausible: int = 0
    reconnects: int = 0
    last_error: str = ""
    last_ok_monotonic: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


class Emitter:
    """Publishes a connector's events and dead letters and keeps its counters.

    Readings pass the plausibility check first (``schemas.plausibility``): one that cannot be
    real is dead-lettered, never published.  Dead letters are rate-limited: one per distinct
    fault (the reason with its numbers masked) per device per ``dlq_interval_s``; the next
    one says how many like it were held back (a stuck meter polled 5 times a second makes
    one letter a minute, not 300)."""

    def __init__(self, sink: EventSink, *, source: str, site: str, clock: Clock = utc_now,
                 dlq_interval_s: float = 60.0):
        self.sink, self.source, self.site, self.clock = sink, source, site, clock
        self.stats = ConnectorStats()
        self.dlq_interval_s = dlq_interval_s
        self._letters: dict[tuple[str, str, str], tuple[float, int]] = {}

    async def emit(self, events: list[Event]) -> None:
        """Hand readings to the sink's outbox (never waits on the broker); implausible ones
        become dead letters."""
        if not events:
            return
        now = self.clock()
        good: list[Event] = []
        for e in events:
            why = implausible(e, now)
            if why is None:
                good.append(e)
            else:
                self.stats.implausible += 1
                await self.dead(e.kind, encode(e), f"implausible: {why}", key=e.device_id)
        if good:
            await self.sink.offer(good)
            self._count(good)

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
        """Dead-letter one bad input (rate-limited per device and kind of fault)."""
        now = self.clock()
        fault = (input_name, key, _NUMBERS.sub("#", reason)[:120])
        last, held = self._letters.get(fault, (float("-inf"), 0))
        t = now.timestamp()
        if t - last < self.dlq_interval_s:
            self._letters[fault] = (last, held + 1)
            self.stats.dlq_suppressed += 1
            return
        if len(self._letters) > 10_000:  # a flood of distinct faults: forget the oldest
            self._letters.pop(next(iter(self._letters)))
        self._letters[fault] = (t, 0)
        if held:
            reason = f"{reason} ({held} more like it in the last {self.dlq_interval_s:g} s)"
        letter = dead_letter(source_topic=input_name, raw=raw, reason=reason, site=self.site,
                             source=self.source, ts=now, key=key.encode() or None)
        await self.sink.offer([letter])
        self.stats.dlq += 1
        log.warning("%s: dead-lettered input from %s: %s", self.source, input_name,
                    reason[:300])

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
