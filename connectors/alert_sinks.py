"""Alert sinks: ``alerts`` -> SMS (Twilio) and webhooks, rate-limited, retried, never dropped.

``AlertDispatcher`` consumes the ``alerts`` topic and hands each alert to every sink.  A
sink that fails is retried with capped exponential backoff; after ``attempts`` failures the
alert goes to ``dlq`` with the provider's error as the reason (an operator can see what was
not delivered), and the offsets move on.  Offsets are committed once every sink has
delivered or dead-lettered the alerts before them.

SMS: one message per recipient at most every ``min_interval_s``; alerts arriving inside the
interval are gathered and sent as one digest when it ends ("3 alerts: ...").  Credentials
come from the environment Twilio's library reads (``TWILIO_ACCOUNT_SID``,
``TWILIO_AUTH_TOKEN``); ``base_url`` points the client at a regional proxy or, in tests, at
a local fake of the Messages API that records what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

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

    def enqueue(self, alert: Alert) -> None:
        """Take an alert (never fails)."""

    async def flush(self, now: float) -> None:
        """Send what is due; raise DeliveryError to be retried (what was sent is dequeued)."""

    def drop(self) -> list[Alert]:
        """Give up on everything queued (after the retries); return it for the dlq."""


class TwilioSms:
    """SMS through the twilio library, rate-limited per recipient with digests."""

    name = "sms"

    def __init__(self, recipients: list[str], sender: str, site: str, *,
                 min_interval_s: float = 60.0, base_url: str = "",
                 account_sid: str | None = None, auth_token: str | None = None) -> None:
        from twilio.rest import Client

        self.client = Client(account_sid, auth_token)
        if base_url:
            self.client.api.base_url = base_url
        self.recipients, self.sender, self.site = recipients, sender, site
        self.min_interval_s = min_interval_s
        self.last_sent: dict[str, float] = {}
        self.pending: dict[str, list[Alert]] = {r: [] for r in recipients}

    def enqueue(self, alert: Alert) -> None:
        for r in self.recipients:
            self.pending[r].append(alert)

    async def flush(self, now: float) -> None:
        for r in self.recipients:
            due = now - self.last_sent.get(r, float("-inf")) >= self.min_interval_s
            if self.pending[r] and due:
                await self._send(r, sms_text(self.pending[r], self.site))
                self.pending[r] = []
                self.last_sent[r] = now

    def drop(self) -> list[Alert]:
        gone = {a.event_id: a for queue in self.pending.values() for a in queue}
        self.pending = {r: [] for r in self.recipients}
        return list(gone.values())

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


@dataclass
class Retry:
    """Capped exponential backoff."""

    attempts: int = 5
    first_s: float = 0.5
    max_s: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)

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
                await self.sleep(delay)
                delay = min(self.max_s, delay * 2)
        return "no attempt made"


class AlertDispatcher:
    """Consume ``alerts``; every alert to every sink, retried, or to dlq with the reason."""

    def __init__(self, bootstrap: str, group: str, sinks: list[Any], emitter: Emitter,
                 retry: Retry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bootstrap, self.group, self.sinks = bootstrap, group, sinks
        self.emitter, self.retry = emitter, retry or Retry()
        self.clock = clock  # rate limits are measured on it (injected in tests)
        self.dead = 0

    async def dispatch(self, raw: bytes | None, key: bytes | None) -> None:
        """One record to every sink."""
        try:
            alert = decode("alerts", raw)
        except DecodeError as exc:
            await self.emitter.dead("alerts", raw, exc.reason,
                                    key=(key or b"").decode("utf-8", "replace"))
            return
        assert isinstance(alert, AlertFired | AlertResolved)
        for sink in self.sinks:
            sink.enqueue(alert)
        await self.tick()

    async def tick(self) -> None:
        """Flush every sink (digests that came due too); what still fails after the retries
        goes to dlq with the provider's error."""
        for sink in self.sinks:
            error = await self.retry.run(partial(sink.flush, self.clock()))
            if error is None:
                continue
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
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        await self.dispatch(r.value, r.key)
                await self.tick()
                if batch:
                    try:
                        await consumer.commit()
                    except KafkaError as exc:  # rebalance, broker restart: redelivered
                        log.warning("alert offsets not committed: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
