"""The API's live view: a group-less Kafka consumer from the topics' ends.

It feeds server-sent events (every subscriber gets the records it asked for, a slow one loses
its oldest records, never stalls the others), answers "has my command been acked yet?", keeps
the pipeline counters Prometheus scrapes (events per topic, dlq, acks and their latency) and
the fleet's latest readings, and refreshes the consumer groups' lag every ``lag_s``.  History
is ClickHouse's job; this holds only what arrived since the API started.  It commits nothing
and joins no group, so any number of API replicas can run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.alerts import AlertFired, AlertResolved
from schemas.commands import CommandAcknowledged
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    GpuTelemetryObserved,
    RecordDeadLettered,
    UplinkStatusObserved,
)
from schemas.metrics import EnergyHeadroomComputed
from schemas.registry import TOPICS
from streams.codec import DecodeError, decode

log = logging.getLogger(__name__)

#: Topics the live view follows (what the dashboard, SSE and /metrics need).
LIVE_TOPICS = (
    "metrics.energy", "metrics.shares", "metrics.rewards", "alerts", "commands.asic",
    "commands.gpu", "commands.compute", "commands.site", "commands.acks", "asic.telemetry",
    "gpu.telemetry", "grid.readings", "power.readings", "shares", "dlq", "uplink.status",
)
#: Command latency histogram buckets, seconds (the grid wants < 1 s).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(eq=False)
class Subscriber:
    """One SSE client: the topics it wants and its bounded queue."""

    topics: frozenset[str]
    queue: asyncio.Queue[tuple[str, Event]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=2_000))
    dropped: int = 0

    def offer(self, topic: str, event: Event) -> None:
        if self.topics and topic not in self.topics:
            return
        if self.queue.full():
            self.queue.get_nowait()  # slow client: lose the oldest, keep up
            self.dropped += 1
        self.queue.put_nowait((topic, event))


@dataclass
class Pipeline:
    """Counters since start (Prometheus counters are monotonic in a process)."""

    events: dict[str, int] = field(default_factory=dict)
    dlq: dict[str, int] = field(default_factory=dict)  # by source topic
    acks: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, status)
    latency_buckets: dict[str, list[int]] = field(default_factory=dict)  # kind -> counts
    latency_sum: dict[str, float] = field(default_factory=dict)
    undecodable: int = 0
    lag: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, topic) -> lag
    lag_at: float = 0.0

    def ack(self, a: CommandAcknowledged) -> None:
        k = (a.command_kind, a.status)
        self.acks[k] = self.acks.get(k, 0) + 1
        s = a.latency_ms / 1000.0
        counts = self.latency_buckets.setdefault(a.command_kind, [0] * (len(LATENCY_BUCKETS) + 1))
        i = next((i for i, b in enumerate(LATENCY_BUCKETS) if s <= b), len(LATENCY_BUCKETS))
        counts[i] += 1
        self.latency_sum[a.command_kind] = self.latency_sum.get(a.command_kind, 0.0) + s


@dataclass
class Fleet:
    """Latest readings per device and the alerts firing (since the API started)."""

    asics: dict[str, AsicTelemetryObserved] = field(default_factory=dict)
    gpus: dict[str, GpuTelemetryObserved] = field(default_factory=dict)
    energy: EnergyHeadroomComputed | None = None
    firing: dict[str, AlertFired] = field(default_factory=dict)
    uplinks: dict[str, UplinkStatusObserved] = field(default_factory=dict)  # target -> last


class LiveFeed:
    """Follow ``topics`` from their ends; fan records out to subscribers and waiters."""

    def __init__(self, bootstrap: str, topics: Iterable[str] = LIVE_TOPICS,
                 groups: Iterable[str] = (), lag_s: float = 10.0):
        self.bootstrap, self.topics = bootstrap, tuple(topics)
        self.groups, self.lag_s = tuple(groups), lag_s
        self.pipeline, self.fleet = Pipeline(), Fleet()
        self.subscribers: set[Subscriber] = set()
        self._waiters: dict[str, asyncio.Future[CommandAcknowledged]] = {}
        self.ready = asyncio.Event()
        self.error = ""

    # -- consumers of the feed ------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, topics: Iterable[str] = ()) -> Any:
        """A subscriber for the ``with`` block (all topics when ``topics`` is empty)."""
        sub = Subscriber(frozenset(topics))
        self.subscribers.add(sub)
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)

    def expect_ack(self, command_id: str) -> asyncio.Future[CommandAcknowledged]:
        """A future resolved by the command's ack (call before publishing the command)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = fut
        return fut

    def forget(self, command_id: str) -> None:
        self._waiters.pop(command_id, None)

    # -- the loop -------------------------------------------------------------------------

    def fold(self, topic: str, event: Event) -> None:
        """Account one record (pure bookkeeping; tests call it directly)."""
        p, f = self.pipeline, self.fleet
        p.events[topic] = p.events.get(topic, 0) + 1
        if isinstance(event, RecordDeadLettered):
            p.dlq[event.source_topic] = p.dlq.get(event.source_topic, 0) + 1
        elif isinstance(event, CommandAcknowledged):
            p.ack(event)
            fut = self._waiters.pop(str(event.command_id), None)
            if fut is not None and not fut.done():
                fut.set_result(event)
        elif isinstance(event, AsicTelemetryObserved):
            f.asics[event.device_id] = event
        elif isinstance(event, GpuTelemetryObserved):
            f.gpus[event.device_id] = event
        elif isinstance(event, EnergyHeadroomComputed):
            f.energy = event
        elif isinstance(event, UplinkStatusObserved):
            f.uplinks[event.target] = event
        elif isinstance(event, AlertFired):
            f.firing[event.dedup_key] = event
        elif isinstance(event, AlertResolved):
            f.firing.pop(event.dedup_key, None)
        for sub in list(self.subscribers):
            sub.offer(topic, event)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``; reconnect with backoff when the broker is away."""
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._consume(stop)
                return
            except Exception as exc:  # noqa: BLE001 - broker away: the API stays up
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("live feed: %s; retrying in %.1fs", self.error, backoff)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    group_id=None, fetch_max_wait_ms=100)
        await consumer.start()
        lag_task: asyncio.Task[None] | None = None
        try:
            parts = [TopicPartition(t, p) for t in self.topics
                     for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(parts)
            started_ms = int(time.time() * 1000) - 1000
            # Tansu answers ListOffsets(latest) with the last batch's base offset + 1, so the
            # end may replay that batch: records produced before the start are skipped.
            await consumer.seek_to_end(*parts)
            self.error = ""
            self.ready.set()
            if self.groups:
                lag_task = asyncio.create_task(self._lag_loop(stop))
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=2_000)
                for tp, records in batch.items():
                    for r in records:
                        if r.timestamp < started_ms:
                            continue
                        try:
                            event = decode(tp.topic, r.value)
                        except DecodeError:
                            self.pipeline.undecodable += 1  # dlq'd by the agents, not here
                            continue
                        self.fold(tp.topic, event)
        finally:
            if lag_task is not None:
                lag_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lag_task
            await consumer.stop()

    async def _lag_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.pipeline.lag = await consumer_lag(self.bootstrap, self.groups)
                self.pipeline.lag_at = time.time()
            except Exception as exc:  # noqa: BLE001 - lag is best effort; keep the last
                log.debug("consumer lag: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.lag_s)


async def consumer_lag(bootstrap: str, groups: Iterable[str],
                       topics: Iterable[str] | None = None) -> dict[tuple[str, str], int]:
    """(group, topic) -> records behind the end, over partitions the group has committed.

    Committed offsets are read with OffsetFetch through a consumer that joins no group (the
    admin client's ListConsumerGroupOffsets is not decoded from every broker, Tansu's
    included)."""
    names = list(topics) if topics is not None else [t.name for t in TOPICS]
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, fetch_max_wait_ms=100)
    await probe.start()
    try:
        tps = [TopicPartition(t, p) for t in names
               for p in sorted(probe.partitions_for_topic(t) or ())]
        ends = await high_watermarks(probe, tps)
    finally:
        await probe.stop()
    lag: dict[tuple[str, str], int] = {}
    for g in groups:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=g, enable_auto_commit=False)
        await c.start()
        try:
            for tp in tps:
                off = await c.committed(tp)
                if off is None or off < 0:
                    continue
                key = (g, tp.topic)
                lag[key] = lag.get(key, 0) + max(0, ends.get(tp, off) - off)
        finally:
            await c.stop()
    return lag


async def high_watermarks(consumer: AIOKafkaConsumer,
                          tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Each partition's high watermark as a fetch reports it.  ListOffsets(latest) alone is
    not enough: Tansu answers it with the last batch's base offset + 1, so fetching from
    there returns that batch and, with it, the true high watermark."""
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(0, ends[tp] - 1))
    pending = {tp for tp in tps if ends[tp] > 0}
    for _ in range(5):
        if not pending:
            break
        await consumer.getmany(*pending, timeout_ms=300, max_records=1)
        pending = {tp for tp in pending if consumer.highwater(tp) is None}
    return {tp: max(ends[tp], consumer.highwater(tp) or 0) for tp in tps}


def sse(topic: str, event: Event) -> bytes:
    """One server-sent event: ``event:`` is the topic, ``data:`` the event's JSON."""
    data = orjson.dumps(event.model_dump(mode="json"))
    return b"event: " + topic.encode() + b"\nid: " + str(event.event_id).encode() + \
        b"\ndata: " + data + b"\n\n"

