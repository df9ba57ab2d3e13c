"""Alert sinks: ``alerts`` -> SMS (Twilio) and webhooks, by severity, deduplicated,
retried per sink, never dropped.

``AlertDispatcher`` consumes the ``alerts`` topic: what the alerts agent raises, and what
Prometheus raises through Alertmanager (``POST /v1/alerts/alertmanager`` publishes those on
the same topic).  A condition both see carries one ``dedup_key`` (the Prometheus rules set
the agent's key as a label), and ``Deduper`` lets the first firing and the first resolution
of a key through, so it is sent once, not twice.

Each sink is a ``Lane``: its own queue, its own task, its own retries with capped,
jittered exponential backoff.  A webhook that is down delays only its own deliveries; the
SMS go out meanwhile.  After ``attempts`` failures an alert goes to ``dlq`` with the
provider's error as the reason.  Offsets are committed up to the last record every lane has
finished with (delivered, dead-lettered or not its to send), so a crash sends again what
was not out yet, including an SMS digest still waiting.

SMS (``SmsPolicy``): by severity (``critical`` by default, ``HASHPLANE_SMS_SEVERITIES``),
with per-rule overrides (``HASHPLANE_SMS_RULES``: rule -> true/false); resolutions of what
was texted are gathered for ``resolution_digest_s`` and sent as one digest; optional quiet
hours (``HASHPLANE_SMS_QUIET_HOURS=22:00-06:00`` in ``HASHPLANE_SMS_TIMEZONE``) hold all
but critical alerts until they end, then send them as one digest.  One message per
recipient at most every ``min_interval_s``; alerts inside the interval go as one digest.
Credentials come from the environment Twilio's library reads (``TWILIO_ACCOUNT_SID``,
``TWILIO_AUTH_TOKEN``); ``base_url`` points the client at a regional proxy or, in tests, at
a local fake of the Messages API that records what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as daytime
from functools import partial
from typing import Any, Protocol
from uuid import UUID
from zoneinfo import ZoneInfo

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from connectors.base import Emitter
from schemas.alerts import AlertFired, AlertResolved
from streams.codec import DecodeError, decode, encode
from streams.topics import BrokerUnavailable, start_client

log = logging.getLogger(__name__)
SOURCE = "sink:alerts"
Alert = AlertFired | AlertResolved


class DeliveryError(RuntimeError):
    """A provider refused or could not be reached."""


def sms_text(alerts: list[Alert], site: str) -> str:
    """The SMS body: one alert, or a digest of several (SMS-sized: under 640 chars)."""
    def line(a: Alert) -> str:
        state = "RESOLVED" if isinstance(a, AlertResolved) else a.severity.upper()
        return f"[{state}] {a.rule} {a.device_id}: {a.message}"
    if len(alerts) == 1:
        return f"hashplane {site} {line(alerts[0])}"[:640]
    body = f"hashplane {site}: {len(alerts)} alerts\n" + "\n".join(line(a) for a in alerts)
    return body[:637] + "..." if len(body) > 640 else body


class Sink(Protocol):
    """Somewhere alerts go: queued, then flushed (the flush is what is retried)."""

    name: str

    def wants(self, alert: Alert) -> bool:
        """Whether this sink sends the alert at all (the SMS policy; webhooks: all)."""

    def enqueue(self, alert: Alert) -> None:
        """Take an alert (never fails)."""

    async def flush(self, now: float) -> None:
        """Send what is due; raise DeliveryError to be retried (what was sent is dequeued)."""

    def drop(self) -> list[Alert]:
        """Give up on everything queued (after the retries); return it for the dlq."""

    def held(self) -> set[UUID]:
        """Event ids taken and not sent yet (waiting for a digest or a retry)."""


@dataclass(frozen=True)
class SmsPolicy:
    """Which alerts go by SMS, and when."""

    severities: frozenset[str] = frozenset({"critical"})
    rules: dict[str, bool] = field(default_factory=dict)  # rule -> always / never
    quiet: tuple[daytime, daytime] | None = None  # local start, end (may wrap midnight)
    timezone: str = "UTC"
    resolution_digest_s: float = 300.0

    def wants(self, alert: Alert) -> bool:
        """Texted at all (a resolution: when its firing would have been)."""
        return self.rules.get(alert.rule, alert.severity in self.severities)

    def quiet_now(self, now: datetime) -> bool:
        if self.quiet is None:
            return False
        t = now.astimezone(ZoneInfo(self.timezone)).time()
        start, end = self.quiet
        return start <= t < end if start < end else (t >= start or t < end)


def parse_quiet_hours(text: str) -> tuple[daytime, daytime] | None:
    """``22:00-06:00`` -> (22:00, 06:00); '' -> None; ValueError otherwise."""
    if not text.strip():
        return None
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError(text)
        return daytime.fromisoformat(start.strip()), daytime.fromisoformat(end.strip())
    except ValueError:
        raise ValueError(f"quiet hours {text!r}: want HH:MM-HH:MM, e.g. 22:00-06:00") from None


class TwilioSms:
    """SMS through the twilio library: by ``SmsPolicy``, rate-limited per recipient, with
    digests (the rate limit's, the resolutions', the quiet hours')."""

    name = "sms"

    def __init__(self, recipients: list[str], sender: str, site: str, *,
                 min_interval_s: float = 60.0, base_url: str = "",
                 account_sid: str | None = None, auth_token: str | None = None,
                 policy: SmsPolicy | None = None,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        from twilio.rest import Client

        self.client = Client(account_sid, auth_token)
        if base_url:
            self.client.api.base_url = base_url
        self.recipients, self.sender, self.site = recipients, sender, site
        self.min_interval_s = min_interval_s
        self.policy = policy or SmsPolicy()
        self.wall = wall  # time of day, for the quiet hours (injected in tests)
        self.last_sent: dict[str, float] = {}
        self.pending: dict[str, list[Alert]] = {r: [] for r in recipients}
        self.resolved_since: float | None = None  # when the first gathered resolution came

    def wants(self, alert: Alert) -> bool:
        return self.policy.wants(alert)

    def enqueue(self, alert: Alert) -> None:
        for r in self.recipients:
            self.pending[r].append(alert)

    async def flush(self, now: float) -> None:
        quiet = self.policy.quiet_now(self.wall())
        for r in self.recipients:
            queue = self.pending[r]
            if any(isinstance(a, AlertResolved) for a in queue) and self.resolved_since is None:
                self.resolved_since = now
            resolutions_due = (self.resolved_since is not None
                               and now - self.resolved_since >= self.policy.resolution_digest_s)
            due = [a for a in queue
                   if (isinstance(a, AlertResolved) and resolutions_due and not quiet)
                   or (isinstance(a, AlertFired) and (not quiet or a.severity == "critical"))]
            limited = now - self.last_sent.get(r, float("-inf")) < self.min_interval_s
            if due and not limited:
                await self._send(r, sms_text(due, self.site))
                sent = {a.event_id for a in due}
                self.pending[r] = [a for a in queue if a.event_id not in sent]
                self.last_sent[r] = now
        if not any(isinstance(a, AlertResolved) for q in self.pending.values() for a in q):
            self.resolved_since = None

    def drop(self) -> list[Alert]:
        gone = {a.event_id: a for queue in self.pending.values() for a in queue}
        self.pending = {r: [] for r in self.recipients}
        return list(gone.values())

    def held(self) -> set[UUID]:
        return {a.event_id for queue in self.pending.values() for a in queue}

    async def _send(self, to: str, body: str) -> None:
        from twilio.base.exceptions import TwilioException

        try:
            await asyncio.to_thread(self.client.messages.create, to=to, from_=self.sender,
                                    body=body)
        except (TwilioException, OSError) as exc:  # the library's errors and the network's
            raise DeliveryError(f"twilio to {to}: {exc}") from exc


class Webhook:
    """POST each alert's JSON (the event as it is on the topic) to a URL."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url, self.name = url, f"webhook {url}"
        self.client = httpx.AsyncClient(timeout=timeout_s)
        self.queue: list[Alert] = []

    def wants(self, alert: Alert) -> bool:
        return True  # every alert, every severity

    def enqueue(self, alert: Alert) -> None:
        self.queue.append(alert)

    async def flush(self, now: float) -> None:
        while self.queue:
            alert = self.queue[0]
            try:
                r = await self.client.post(self.url, content=encode(alert),
                                           headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                raise DeliveryError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
            if r.status_code >= 300:
                raise DeliveryError(f"{self.url}: HTTP {r.status_code} {r.text[:200]}")
            self.queue.pop(0)

    def drop(self) -> list[Alert]:
        gone, self.queue = self.queue, []
        return gone

    def held(self) -> set[UUID]:
        return {a.event_id for a in self.queue}


@dataclass
class Retry:
    """Capped exponential backoff with jitter: each wait is drawn from
    [(1 - jitter) x delay, delay], so sinks that failed together do not retry in step."""

    attempts: int = 5
    first_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    rng: random.Random = field(default_factory=random.Random)

    async def run(self, action: Callable[[], Awaitable[None]]) -> str | None:
        """None when ``action`` succeeded; the last error when every attempt failed."""
        delay = self.first_s
        for attempt in range(1, self.attempts + 1):
            try:
                await action()
                return None
            except DeliveryError as exc:
                if attempt == self.attempts:
                    return str(exc)
                log.warning("alert delivery failed (attempt %d/%d): %s", attempt,
                            self.attempts, exc)
                await self.sleep(delay * (1.0 - self.jitter * self.rng.random()))
                delay = min(self.max_s, delay * 2)
        return "no attempt made"


class Deduper:
    """One firing and one resolution per ``dedup_key``, whichever source says it first
    (the alerts agent or Prometheus through Alertmanager); bounded memory."""

    def __init__(self, remember: int = 10_000) -> None:
        self.firing: OrderedDict[str, None] = OrderedDict()
        self.resolved: OrderedDict[str, None] = OrderedDict()
        self.remember = remember

    def admit(self, alert: Alert) -> bool:
        key = alert.dedup_key
        if isinstance(alert, AlertFired):
            if key in self.firing:
                return False
            self.firing[key] = None
            self.resolved.pop(key, None)
        else:
            if key in self.resolved and key not in self.firing:
                return False
            self.firing.pop(key, None)
            self.resolved[key] = None
        for memory in (self.firing, self.resolved):
            while len(memory) > self.remember:
                memory.popitem(last=False)
        return True


class Lane:
    """One sink's deliveries: its queue, its retries; ``done`` is the highest sequence
    number up to which every alert it was given is out or dead-lettered."""

    def __init__(self, sink: Any, retry: Retry, dead: Callable[[Any, str], Awaitable[None]],
                 clock: Callable[[], float]) -> None:
        self.sink, self.retry, self.dead, self.clock = sink, retry, dead, clock
        self.given: deque[tuple[int, UUID]] = deque()
        self.done = self.latest = 0
        self.wake = asyncio.Event()

    def offer(self, seq: int, alert: Alert) -> None:
        if self.sink.wants(alert):
            self.sink.enqueue(alert)
            self.given.append((seq, alert.event_id))
        self.wake.set()
        self._advance(seq)

    def skip(self, seq: int) -> None:
        """A record with nothing for this lane (undecodable, or a duplicate alert)."""
        self._advance(seq)

    async def attempt(self) -> None:
        """One flush of what is due, retried; what still fails goes to dlq."""
        error = await self.retry.run(partial(self.sink.flush, self.clock()))
        if error is not None:
            await self.dead(self.sink, error)
        self._advance(None)

    def _advance(self, latest: int | None) -> None:
        self.latest = max(self.latest, latest or 0)
        held = self.sink.held()
        while self.given and self.given[0][1] not in held:
            self.done = max(self.done, self.given.popleft()[0])
        if self.given:  # everything before the first alert still held is finished
            self.done = max(self.done, self.given[0][0] - 1)
        else:
            self.done = max(self.done, self.latest)

    async def run(self, stop: asyncio.Event, poll_s: float = 1.0) -> None:
        """Flush when given something, and every ``poll_s`` (digests that came due)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), poll_s)
            self.wake.clear()
            await self.attempt()


class AlertDispatcher:
    """Consume ``alerts``; every alert (deduplicated) to every sink that wants it, each
    sink in its own lane; undeliverable alerts to dlq with the reason."""

    def __init__(self, bootstrap: str, group: str, sinks: list[Any], emitter: Emitter,
                 retry: Retry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bootstrap, self.group, self.sinks = bootstrap, group, sinks
        self.emitter, self.retry = emitter, retry or Retry()
        self.clock = clock  # rate limits are measured on it (injected in tests)
        self.dead = 0
        self.dedup = Deduper()
        self.lanes = [Lane(s, self.retry, self._dead_letter, lambda: self.clock())
                      for s in sinks]
        self.seq = 0
        self.running = False  # lanes flush in their own tasks (run); else dispatch flushes

    async def dispatch(self, raw: bytes | None, key: bytes | None) -> int:
        """One record to every lane; its sequence number (for the offset bookkeeping)."""
        self.seq += 1
        try:
            alert = decode("alerts", raw)
        except DecodeError as exc:
            await self.emitter.dead("alerts", raw, exc.reason,
                                    key=(key or b"").decode("utf-8", "replace"))
            alert = None
        if isinstance(alert, AlertFired | AlertResolved) and self.dedup.admit(alert):
            for lane in self.lanes:
                lane.offer(self.seq, alert)
        else:
            for lane in self.lanes:
                lane.skip(self.seq)
        if not self.running:
            await self.tick()
        return self.seq

    async def tick(self) -> None:
        """Flush every lane now, side by side (digests that came due too)."""
        await asyncio.gather(*(lane.attempt() for lane in self.lanes))

    def done(self) -> int:
        """Every record up to this sequence number is finished with by every lane."""
        return min((lane.done for lane in self.lanes), default=self.seq)

    async def _dead_letter(self, sink: Any, error: str) -> None:
        for alert in sink.drop():
            self.dead += 1
            await self.emitter.dead(
                "alerts", encode(alert), f"{sink.name}: not delivered after "
                f"{self.retry.attempts} attempts: {error}", key=alert.device_id)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            consumer = await start_client(lambda: AIOKafkaConsumer(
                "alerts", bootstrap_servers=self.bootstrap, group_id=self.group,
                enable_auto_commit=False, auto_offset_reset="earliest"), "alert sinks", stop)
        except BrokerUnavailable:
            return
        self.running = True
        lanes = [asyncio.create_task(lane.run(stop)) for lane in self.lanes]
        marks: deque[tuple[int, Any, int]] = deque()  # (seq, partition, offset)
        committed: dict[Any, int] = {}
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        marks.append((await self.dispatch(r.value, r.key), tp, r.offset))
                upto: dict[Any, int] = {}
                done = self.done()
                while marks and marks[0][0] <= done:
                    _, tp, offset = marks.popleft()
                    upto[tp] = offset + 1
                upto = {tp: o for tp, o in upto.items() if committed.get(tp) != o}
                if upto:
                    try:
                        await consumer.commit(upto)
                        committed.update(upto)
                    except KafkaError as exc:  # rebalance, broker restart: redelivered
                        log.warning("alert offsets not committed: %s", exc)
        finally:
            for t in lanes:
                t.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            with contextlib.suppress(Exception):
                await consumer.stop()
