"""Publishing typed events to their topics (the producer side of the codec).

Three ways to publish, by what a caller can afford to lose:

* ``publish`` / ``publish_many``: send and wait for the broker's acknowledgement; a broker
  error is raised as ``PublishError`` (the API answers 503 with it; tests).
* ``deliver``: send and wait, retrying through broker outages of any length with capped
  exponential backoff until every event is acknowledged (commands' acks, dead letters).
* ``offer``: queue readings and return at once; a background task sends them and retries
  through outages.  The queue is bounded (``buffer_max`` records): past it the oldest
  readings are dropped and counted (``stats.dropped``), so a connector keeps polling its
  devices at its own pace whatever the broker does.

A producer that cannot reach the broker at start keeps trying (``start`` waits), so a
process started during an outage comes up by itself when the broker does.

**A broker that forgets.**  The embedded broker keeps topics in memory: records it
acknowledged but no consumer had read yet die with it.  The publisher therefore keeps the
records of the broker's last ``resend_s`` seconds of acknowledgements (at most
``recent_max``) and watches the broker's cluster id (a restarted embedded broker has a new
one); when it changes, it waits until the topics exist again (Tansu acknowledges records
for a topic it does not have, and drops them) and sends those records again.  Records in
flight while it does are sent again too (their acknowledgement may be the new broker's,
from before its topics existed), and a publisher that stops takes one last look first (the
watcher looks every second).  They keep their event ids, so the history sink stores each
once.  Against a real Kafka cluster the id never changes and nothing is re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.envelope import Event
from schemas.registry import topic_of
from streams.codec import encode, encode_key

log = logging.getLogger(__name__)

#: What a broker outage looks like from the producer (aiokafka's errors, sockets, timeouts).
BROKER_ERRORS = (KafkaError, OSError, TimeoutError)

#: How long a restarted broker's new topics are given before the records it lost are sent
#: again (Tansu answers UnknownError, and acknowledges records it does not keep, for a
#: moment after it created them).
SETTLE_S = 1.0

#: One record on its way: topic (without prefix), key, value, event kind (for counters).
Record = tuple[str, bytes | None, bytes | None, str]


class PublishError(RuntimeError):
    """The broker did not acknowledge a record (unreachable, timed out, refused)."""


@dataclass
class PublishStats:
    """Counters for the metrics endpoint."""

    sent: int = 0
    retries: int = 0
    dropped: int = 0  # readings dropped because the outbox was full during an outage
    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    buffered: int = 0  # readings waiting in the outbox now
    resent: int = 0  # records sent again to a broker that restarted empty
    last_error: str = ""


def records(events: Iterable[Event]) -> list[Record]:
    """Events encoded for their registry topics, keyed by their key field."""
    out: list[Record] = []
    for e in events:
        spec = topic_of(type(e))
        out.append((spec.name, encode_key(e, spec), encode(e), e.kind))
    return out


class Publisher:
    """An aiokafka producer that routes each event to its registry topic, keyed by device."""

    def __init__(self, bootstrap: str, *, client_id: str = "hashplane", linger_ms: int = 5,
                 prefix: str = "", buffer_max: int = 100_000, retry_max_s: float = 5.0,
                 resend_s: float = 120.0, recent_max: int = 200_000,
                 request_timeout_ms: int = 15_000):
        self.bootstrap, self.client_id, self.linger_ms = bootstrap, client_id, linger_ms
        self.prefix = prefix
        self.buffer_max, self.retry_max_s = buffer_max, retry_max_s
        self.resend_s, self.recent_max = resend_s, recent_max
        self.request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self.stats = PublishStats()
        self._outbox: deque[Record] = deque()
        self._recent: deque[tuple[float, Record]] = deque()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._known: str | None = None  # the cluster id the acknowledgements came from
        self._admin: AIOKafkaAdminClient | None = None
        self._checking = asyncio.Lock()
        # counts the broker restarts handled: an acknowledgement that comes back across one
        # may be the new broker's, for a topic it did not have yet (acknowledged, dropped)
        self._incarnation = 0

    @property
    def sent(self) -> int:
        """Records acknowledged by the broker."""
        return self.stats.sent

    @property
    def unsent(self) -> int:
        """Records waiting in the outbox (after ``stop``: the ones it could not send)."""
        return len(self._outbox)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=self.request_timeout_ms,
        )

    async def start(self, timeout_s: float | None = None) -> None:
        """Connect to the cluster; while it cannot be reached, retry (forever by default)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        delay = 0.25
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
                self._producer = producer
                break
            except BROKER_ERRORS as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if deadline is not None and loop.time() + delay > deadline:
                    raise PublishError(f"broker {self.bootstrap} unreachable: {exc}") from exc
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("broker %s unreachable (%s); retrying in %.1fs", self.bootstrap,
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
        if self.resend_s > 0:
            # the incarnation the first acknowledgements come from (else the watcher's
            # first look learns it)
            self._known = await self._cluster_id()
            self._watcher = asyncio.create_task(self._watch(), name=f"{self.client_id}-watch")

    async def stop(self, flush_s: float = 5.0) -> None:
        """Send what the outbox holds (for at most ``flush_s``), then disconnect."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
            # a broker that restarted empty since the watcher's last look (it looks every
            # second) gets what it lost before the publisher goes
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._check(), flush_s)
            if self._admin is not None:
                with contextlib.suppress(Exception):
                    await self._admin.close()
        if self._flusher is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._until_empty()), flush_s)
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
            if self._outbox:
                log.warning("%s: stopping with %d readings not sent", self.client_id,
                            len(self._outbox))
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise PublishError("publisher not started")
        return self._producer

    # -- wait for the broker, raise on failure ----------------------------------------------

    async def publish(self, event: Event) -> None:
        """Send one event and wait until the broker acknowledged it."""
        await self.publish_many([event])

    async def publish_many(self, events: Iterable[Event]) -> None:
        """Send events in batches and wait until all are acknowledged (order kept per key)."""
        failed, error = await self._try(records(events))
        if failed:
            raise PublishError(f"{len(failed)} records not acknowledged: {error}")

    async def _try(self, batch: Sequence[Record]) -> tuple[list[Record], str]:
        """Send ``batch``; return the records the broker did not acknowledge, and why."""
        if not batch:
            return [], ""
        futures: list[Any] = []
        error = ""
        incarnation = self._incarnation
        try:
            for topic, key, value, _ in batch:
                futures.append(await self.producer.send(self.prefix + topic, value, key=key))
        except (*BROKER_ERRORS, PublishError) as exc:  # PublishError: not started yet
            error = f"{type(exc).__name__}: {exc}"
        results = await asyncio.gather(*futures, return_exceptions=True)
        if incarnation != self._incarnation:
            # the broker restarted empty while these were in flight and its lost records
            # were already queued again: an acknowledgement may be the new broker's from
            # before its topics existed, so send them again too (same event ids)
            results = [PublishError("sent across a broker restart") for _ in results]
        now = time.monotonic()
        failed: list[Record] = []
        for rec, r in zip(batch, results, strict=False):
            if isinstance(r, BaseException):
                failed.append(rec)
                error = error or f"{type(r).__name__}: {r}"
            elif self.resend_s > 0:
                self._recent.append((now, rec))
        failed += list(batch[len(futures):])  # never handed to the producer
        self.stats.sent += len(batch) - len(failed)
        # the last resend_s of the broker's acknowledgements (not of wall time: an outage
        # must not age out what the broker took just before it went)
        while self._recent and (len(self._recent) > self.recent_max
                                or self._recent[-1][0] - self._recent[0][0] > self.resend_s):
            self._recent.popleft()
        if failed:
            self.stats.last_error = error[:500]
        return failed, error

    # -- retry through outages ---------------------------------------------------------------

    async def deliver(self, events: Iterable[Event], stop: asyncio.Event | None = None) -> None:
        """Send events and wait until every one is acknowledged, retrying through broker
        outages with capped backoff (until ``stop`` is set or the publisher stops: then
        PublishError)."""
        pending = records(events)
        delay = 0.25
        while pending:
            pending, error = await self._try(pending)
            if not pending:
                return
            if self._closing or (stop is not None and stop.is_set()):
                raise PublishError(f"stopped with {len(pending)} records not delivered: {error}")
            self.stats.retries += 1
            log.warning("%s: %d records not acknowledged (%s); retrying in %.1fs",
                        self.client_id, len(pending), error, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(self.retry_max_s, delay * 2)

    # -- queue and go on -----------------------------------------------------------------------

    async def offer(self, events: Iterable[Event]) -> None:
        """Queue readings for the background sender and return at once (oldest dropped,
        and counted, when more than ``buffer_max`` wait)."""
        self._enqueue(records(events))

    def _enqueue(self, batch: list[Record], front: bool = False) -> None:
        if front:
            self._outbox.extendleft(reversed(batch))
        else:
            self._outbox.extend(batch)
        while len(self._outbox) > self.buffer_max:
            *_, kind = self._outbox.popleft()
            self.stats.dropped += 1
            self.stats.dropped_by_kind[kind] = self.stats.dropped_by_kind.get(kind, 0) + 1
            if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
                log.error("%s: outbox full (%d readings): dropped %d oldest so far",
                          self.client_id, self.buffer_max, self.stats.dropped)
        self.stats.buffered = len(self._outbox)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"{self.client_id}-outbox")
        self._wake.set()

    async def _until_empty(self) -> None:
        while self._outbox:  # noqa: ASYNC110 - the flusher empties it; a poll is plenty
            await asyncio.sleep(0.02)

    async def _flush(self) -> None:
        delay = 0.25
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 5000))]
            failed, error = await self._try(batch)
            if failed:
                self._outbox.extendleft(reversed(failed))  # back in front, in order
                self.stats.retries += 1
                if delay in (0.25, self.retry_max_s):
                    log.warning("%s: broker not acknowledging (%s); %d readings buffered",
                                self.client_id, error, len(self._outbox))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(self.retry_max_s, delay * 2)
            else:
                delay = 0.25
            self.stats.buffered = len(self._outbox)

    # -- a broker that restarted empty ------------------------------------------------------

    async def _cluster_id(self) -> str | None:
        """The broker's cluster id, or None while it cannot be asked."""
        try:
            if self._admin is None:
                self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap,
                                                  request_timeout_ms=5000)
                await self._admin.start()
            cluster: str | None = (await self._admin.describe_cluster()).get("cluster_id")
            return cluster
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - broker away: look again later
            if self._admin is not None:
                with contextlib.suppress(Exception):
                    await self._admin.close()
            self._admin = None
            return None

    async def _watch(self, every_s: float = 1.0) -> None:
        """Look at the broker's cluster id every ``every_s`` (``_check``)."""
        while True:
            await asyncio.sleep(every_s)
            await self._check()

    async def _check(self) -> None:
        """When the broker's cluster id changed, send again the records it acknowledged in
        its last ``resend_s`` (the new broker never had them)."""
        async with self._checking:
            cluster, known = await self._cluster_id(), self._known
            if cluster is None or cluster == known:
                return
            if known is None:  # the first look: this is the incarnation
                self._known = cluster
                return
            # Tansu acknowledges records for a topic it does not have (yet) and drops them:
            # until the topics are recreated, acks mean nothing.  Wait for them, then send
            # again everything acknowledged since the broker's last minutes.
            wanted = {self.prefix + rec[0] for _, rec in self._recent}
            for _ in range(150):
                try:
                    assert self._admin is not None
                    if wanted <= set(await self._admin.list_topics()):
                        break
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - not answering yet
                    pass
                await asyncio.sleep(0.2)
            await asyncio.sleep(SETTLE_S)
            # known only now: a look cancelled while waiting (a stop) leaves it to the next
            again = [rec for _, rec in self._recent]
            self._recent.clear()
            self._incarnation += 1
            self._known = cluster
            if again:
                self.stats.resent += len(again)
                log.warning("%s: the broker restarted empty (cluster %s -> %s); sending "
                            "again the %d records it acknowledged in the last %.0f s",
                            self.client_id, known, cluster, len(again), self.resend_s)
                self._enqueue(again, front=True)

    # -- raw records ---------------------------------------------------------------------------

    async def enqueue_raw(self, topic: str, value: bytes | None,
                          key: bytes | None = None) -> asyncio.Future[Any]:
        """Queue raw bytes without waiting; await the returned future for the broker's ack."""
        fut: asyncio.Future[Any] = await self.producer.send(self.prefix + topic, value, key=key)
        return fut

    async def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """Send raw bytes (tests and replay of stored payloads)."""
        await self.producer.send_and_wait(self.prefix + topic, value, key=key)
