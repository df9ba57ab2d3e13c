"""The history sink: every contract topic into ClickHouse, at least once, without duplicates.

Offsets are committed only after the insert that holds them succeeded.  After a restart, a
rebalance, or when a partition's offsets go back (the embedded broker restarted: offsets
start again at 0; or the group's position was reset), the sink asks the log which of the
fetched events it already holds, by event id (``HistoryStore.stored_ids``), and skips
exactly those; it goes on asking until a fetch brings nothing stored past what this process
itself stored.  So a batch redelivered after a crash mid-insert is not stored twice, and a
new record at an offset an old one had is never mistaken for it.  The check errs only
towards storing: a record it cannot prove stored is inserted (a duplicate row would collapse
in the ReplacingMergeTree; a skipped one would be lost).

A ClickHouse outage (at the check, the repair or the insert) pauses consumption and retries
with capped exponential backoff; nothing is committed meanwhile, so nothing is lost.
Undecodable records are published to ``dlq`` with the reason and their offsets committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from schemas.envelope import Event
from schemas.events import RecordDeadLettered
from schemas.plausibility import implausible
from schemas.registry import TOPICS
from schemas.settings import Settings
from streams.codec import DecodeError, decode_record, encode, record_letter
from streams.history import HistoryStore, StoredKey, epoch_ms
from streams.publish import Publisher, PublishError
from streams.topics import BrokerUnavailable, start_client

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")

#: A record whose broker timestamp is this far past its event's time is checked against the
#: log before it is stored (a resend, a replay, an outbox drained after an outage), s.
LATE_S = 10.0


def utc_now() -> datetime:
    """Wall-clock UTC (ingestion time and dlq stamps only; logic takes time as input)."""
    return datetime.now(UTC)


@dataclass
class SinkStats:
    """Counters exposed on the metrics endpoint."""

    inserted: int = 0
    batches: int = 0
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    insert_failures: int = 0
    last_error: str = ""
    last_insert_s: float = 0.0


@dataclass
class Batch:
    """Rows and dead letters gathered from one or more fetches, with their positions."""

    rows: dict[TopicPartition, list[tuple[Any, ...]]] = field(default_factory=dict)
    dead: dict[TopicPartition, list[RecordDeadLettered]] = field(default_factory=dict)
    last_offset: dict[TopicPartition, int] = field(default_factory=dict)
    ids: set[int] = field(default_factory=set)  # rows' event ids (UUID.int): a re-fetch skips
    size: int = 0

    def forget_positions(self, tps: set[TopicPartition]) -> None:
        """Commit nothing for these partitions: their rows are still stored, but their
        offsets may belong to another broker incarnation or another owner's group
        generation (the next owner re-reads them and finds them stored)."""
        for tp in tps:
            self.last_offset.pop(tp, None)

    def all_rows(self) -> list[tuple[Any, ...]]:
        return [r for rows in self.rows.values() for r in rows]

    def all_dead(self) -> list[RecordDeadLettered]:
        return [d for dead in self.dead.values() for d in dead]


def to_row(topic: str, rec: ConsumerRecord[bytes, bytes], event: Event, upcast: bool,
           ingested_ms: int) -> tuple[Any, ...]:
    """The raw-log row of a decoded record (payload as received unless it was upcast, in
    which case the log stores the current version).  The event id goes in as its integer,
    the times as epoch milliseconds and the payload as its bytes (the decoder refused
    anything that is not UTF-8): the client writes those as they are, where it would
    convert each UUID, datetime and str in Python (a third of its time per row)."""
    payload = encode(event) if upcast or rec.value is None else rec.value
    return (
        event.event_id.int, topic, event.kind, event.schema_version, event.site,
        event.device_id, epoch_ms(event.ts), ingested_ms, event.source,
        payload, rec.partition, rec.offset,
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: HistorySink):
        self.sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # The gathered rows are kept and stored (after a broker restart they exist nowhere
        # else); only their offsets are not committed.
        self.sink.forget_positions(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.sink.settle()  # what is stored must include the insert in flight
        # Fetched records of these partitions are checked against the log before storing.
        self.sink.unchecked |= set(assigned)
        log.info("sink assigned %d partitions", len(assigned))


class HistorySink:
    """Consume the contract topics and insert them into the raw log in batches."""

    def __init__(self, settings: Settings, store: HistoryStore, *,
                 topics: list[str] | None = None, clock: Clock = utc_now,
                 bootstrap: str | None = None, recent_max: int = 200_000):
        self.settings = settings
        self.store = store
        self.topics = topics or [t.name for t in TOPICS]
        self.clock = clock
        self.bootstrap = bootstrap or settings.kafka_bootstrap
        self.stats = SinkStats()
        self.batch = Batch()
        self.unchecked: set[TopicPartition] = set()
        self.last_seen: dict[TopicPartition, int] = {}  # last offset fetched
        self.stored_upto: dict[TopicPartition, int] = {}  # highest offset this process stored
        # Event ids (as integers: a UUID hashes in Python, its int in C) this process stored
        # lately: a record sent again (a producer re-sending to a broker that restarted
        # empty, a producer retry) is skipped without a lookup.
        self.recent_ids: set[int] = set()
        self._recent_order: deque[int] = deque()
        self.recent_max = recent_max
        self._dlq: Publisher | None = None
        self._inflight: tuple[Batch, asyncio.Task[None], float] | None = None
        self._stop: asyncio.Event | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def _store_call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A store call retried with capped backoff until it succeeds (never guess)."""
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except Exception as exc:  # noqa: BLE001 - store down: wait, never guess
                attempt += 1
                self._record_failure(exc)
                delay = min(self.settings.sink_retry_max_s, 0.25 * 2 ** min(attempt, 10))
                log.warning("history store %s failed (attempt %d, retry in %.1fs): %s", what,
                            attempt, delay, exc)
                await asyncio.sleep(delay)

    def forget_positions(self, tps: set[TopicPartition]) -> None:
        """Offsets of these partitions must not be committed (revoked, or went back)."""
        self.batch.forget_positions(tps)
        if self._inflight is not None:
            self._inflight[0].forget_positions(tps)

    async def add_records(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]],
                          ingested: datetime) -> None:
        """Decode fetched records into the batch: rows, dead letters, skipped duplicates."""
        if not records:
            return
        last = self.last_seen.get(tp)
        if last is not None and records[0].offset <= last:
            # Offsets went back: the broker restarted (they start again at 0) or the
            # position was reset.  Store what is in flight, then check against the log.
            log.warning("sink: %s went back from offset %d to %d; checking fetched records "
                        "against the log", tp, last, records[0].offset)
            self.forget_positions({tp})
            await self.settle()
            self.stored_upto.pop(tp, None)
            self.unchecked.add(tp)
        self.last_seen[tp] = records[-1].offset
        decoded: list[tuple[ConsumerRecord[bytes, bytes], Event | None, bool, str]] = []
        for rec in records:
            try:
                event, upcast = decode_record(tp.topic, rec.value)
            except DecodeError as exc:
                decoded.append((rec, None, False, exc.reason))
                continue
            # what the agents refuse to fold is not history either (rebuild equals live)
            why = implausible(event, ingested)
            decoded.append((rec, None, False, f"implausible: {why}") if why is not None
                           else (rec, event, upcast, ""))
        found: set[int] = set()
        unchecked = tp in self.unchecked
        # A record produced well after its event happened may be a producer's resend (after
        # a broker restart it sends again what the old broker acknowledged in its last
        # resend window, maybe long after this sink stored it, maybe before this sink's
        # restart): checked too, wherever it lands in the new log.
        keys: list[StoredKey] = [(e.site, e.device_id, e.ts, e.event_id)
                                 for rec, e, _, _ in decoded if e is not None and (
                                     unchecked or rec.timestamp / 1000.0 - e.ts.timestamp()
                                     > LATE_S)]
        if keys:
            found = {u.int for u in await self._store_call("lookup", self.store.stored_ids,
                                                           tp.topic, keys)}
        if unchecked:
            if found:
                repaired = await self._store_call(
                    "repair", self.store.repair_typed, tp.topic,
                    [k for k in keys if k[3].int in found])
                log.info("sink: %s: %d fetched records from offset %d were already stored; "
                         "skipped (%d typed rows their view had missed were added)", tp,
                         len(found), records[0].offset, repaired)
            elif records[-1].offset >= self.stored_upto.get(tp, -1):
                self.unchecked.discard(tp)  # past anything stored: no more lookups
        ingested_ms = epoch_ms(ingested)
        for rec, ev, upcast, reason in decoded:
            self.batch.last_offset[tp] = rec.offset
            if ev is None:
                self._dead(tp, rec, reason, ingested)
                continue
            eid = ev.event_id.int
            if eid in found or eid in self.batch.ids or eid in self.recent_ids:
                self.stats.duplicates_skipped += 1
                continue
            self.batch.rows.setdefault(tp, []).append(
                to_row(tp.topic, rec, ev, upcast, ingested_ms))
            self.batch.ids.add(eid)
            self.batch.size += 1

    def _dead(self, tp: TopicPartition, rec: ConsumerRecord[bytes, bytes], reason: str,
              ingested: datetime) -> None:
        if tp.topic == "dlq":
            log.error("undecodable record on dlq itself at %s@%d: %s", tp, rec.offset, reason)
            return
        # Same record, same letter: a redelivery does not dead-letter it twice.
        self.batch.dead.setdefault(tp, []).append(record_letter(
            topic=tp.topic, partition=tp.partition, offset=rec.offset,
            timestamp_ms=rec.timestamp, raw=rec.value, key=rec.key, reason=reason,
            site=self.settings.site, source="history-sink", ts=ingested))
        self.batch.size += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; store what was gathered, then leave the group.

        One insert is in flight while the next batch is gathered (the engine works in a
        thread); a batch's offsets are committed only after its own insert succeeded.
        """
        s = self.settings
        def make() -> AIOKafkaConsumer:
            c = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=s.sink_group,
                client_id="hashplane-history-sink",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4 * 1024 * 1024,
                fetch_max_bytes=32 * 1024 * 1024,
                session_timeout_ms=int(s.worker_session_timeout_s * 1000) * 3,
                heartbeat_interval_ms=int(s.worker_heartbeat_interval_s * 1000),
                rebalance_timeout_ms=int(s.worker_rebalance_timeout_s * 1000) * 3,
                max_poll_interval_ms=3_600_000,
            )
            c.subscribe(self.topics, listener=_Rebalance(self))
            return c

        self._stop = stop
        self._dlq = Publisher(self.bootstrap, client_id="hashplane-history-sink-dlq")
        try:
            consumer = await start_client(make, "history sink", stop)
            self.consumer = consumer
            await self._dlq.start()
        except BrokerUnavailable:
            return
        try:
            while not stop.is_set():
                await self._gather(consumer, stop)
                await self._complete(consumer, stop)
                self._launch()
            # Graceful stop: store what was gathered too.
            await self._complete(consumer, stop)
            self._launch()
            await self._complete(consumer, None)
        finally:
            if self._inflight is not None and not self._inflight[1].done():
                self._inflight[1].cancel()
            await consumer.stop()
            await self._dlq.stop()

    async def _gather(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Fetch into ``self.batch`` until it is full or the batch window has passed."""
        s = self.settings
        deadline = time.monotonic() + s.sink_batch_window_s
        while self.batch.size < s.sink_batch_max and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            fetched = await consumer.getmany(
                timeout_ms=int(min(remaining, 0.25) * 1000),
                max_records=s.sink_batch_max - self.batch.size)
            ingested = self.clock()
            for tp, records in fetched.items():
                await self.add_records(tp, records, ingested)

    def _launch(self) -> None:
        """Start inserting the gathered batch in a worker thread."""
        if not (self.batch.size or self.batch.last_offset):
            return
        batch, self.batch = self.batch, Batch()
        task = asyncio.create_task(asyncio.to_thread(self.store.insert_events, batch.all_rows()))
        self._inflight = (batch, task, time.perf_counter())

    async def settle(self) -> None:
        """Wait for the insert in flight (its rows count as stored on assignment)."""
        if self._inflight is not None:
            await asyncio.wait({self._inflight[1]})

    async def _complete(self, consumer: AIOKafkaConsumer, stop: asyncio.Event | None) -> None:
        """Finish the batch in flight: retry its insert through outages, publish its dead
        letters, commit its offsets."""
        if self._inflight is None:
            return
        batch, task, t0 = self._inflight
        attempt = 0
        while True:
            try:
                if attempt == 0:
                    await task
                else:
                    # every row, owned or not: after a broker restart they exist only here
                    await asyncio.to_thread(self.store.insert_events, batch.all_rows())
                break
            except Exception as exc:  # noqa: BLE001 - any store failure: back off, keep the rows
                attempt += 1
                self._record_failure(exc)
                delay = min(self.settings.sink_retry_max_s, 0.25 * 2 ** min(attempt, 10))
                log.warning("history insert failed (attempt %d, retry in %.1fs): %s",
                            attempt, delay, exc)
                consumer.pause(*consumer.assignment())
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    if stop is not None and stop.is_set() and attempt > 1:
                        log.warning("stopping with %d rows not stored; offsets not committed",
                                    len(batch.all_rows()))
                        self._inflight = None
                        return
                    # Paused: returns nothing but keeps group membership alive.
                    await consumer.getmany(timeout_ms=100)
        if attempt:
            consumer.resume(*consumer.assignment())
        self._inflight = None
        self.stats.last_insert_s = time.perf_counter() - t0
        dead = batch.all_dead()
        if dead and self._dlq is not None:
            try:  # retried through broker outages, until the sink is told to stop
                await self._dlq.deliver(dead, self._stop)
            except PublishError as exc:
                log.warning("stopping with dead letters not published (%s); offsets not "
                            "committed", exc)
                return
        owned = consumer.assignment()
        offsets = {tp: OffsetAndMetadata(off + 1, "") for tp, off in batch.last_offset.items()
                   if tp in owned}
        self._remember(batch.ids)
        for tp, rows in batch.rows.items():
            if rows and tp in batch.last_offset:  # positions forgotten: another incarnation
                self.stored_upto[tp] = max(self.stored_upto.get(tp, -1), int(rows[-1][-1]))
        self.stats.inserted += sum(len(r) for r in batch.rows.values())
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1
        if offsets:
            log.debug("sink commits %s", {f"{tp.topic}/{tp.partition}": o.offset
                                          for tp, o in offsets.items()})
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - a rebalance mid-commit: the data is
                # stored and the next owner finds it stored and skips it.
                log.warning("offset commit failed after insert: %s", exc)

    def _remember(self, ids: set[int]) -> None:
        self.recent_ids |= ids
        self._recent_order.extend(ids)
        while len(self._recent_order) > self.recent_max:
            self.recent_ids.discard(self._recent_order.popleft())

    def _record_failure(self, exc: BaseException) -> None:
        self.stats.insert_failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
