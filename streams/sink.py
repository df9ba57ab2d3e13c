"""The history sink: every contract topic into ClickHouse, at least once, without duplicates.

Offsets are committed only after the insert that holds them succeeded.  Rows carry their
Kafka position; after a restart or rebalance the sink asks the log which offsets past the
committed one it already holds (``HistoryStore.stored_offsets``) and skips exactly those, so
a batch redelivered after a crash mid-insert is not stored twice.  A ClickHouse outage pauses
consumption and retries with capped exponential backoff; nothing is committed meanwhile, so
nothing is lost.
Undecodable records are published to ``dlq`` with the reason and their offsets committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from schemas.envelope import Event
from schemas.events import RecordDeadLettered
from schemas.registry import TOPICS
from streams.codec import DecodeError, dead_letter, decode_record, dlq_id, encode
from streams.history import HistoryStore, StoredOffsets
from streams.publish import Publisher
from streams.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


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
    size: int = 0

    def drop(self, tps: set[TopicPartition]) -> None:
        """Forget partitions this sink no longer owns (their new owner re-reads them)."""
        for tp in tps:
            self.size -= len(self.rows.pop(tp, ())) + len(self.dead.pop(tp, ()))
            self.last_offset.pop(tp, None)

    def all_rows(self) -> list[tuple[Any, ...]]:
        return [r for rows in self.rows.values() for r in rows]

    def all_dead(self) -> list[RecordDeadLettered]:
        return [d for dead in self.dead.values() for d in dead]


def to_row(topic: str, rec: ConsumerRecord[bytes, bytes], event: Event, upcast: bool,
           ingested_at: datetime) -> tuple[Any, ...]:
    """The raw-log row of a decoded record (payload as received unless it was upcast, in
    which case the log stores the current version)."""
    payload = encode(event) if upcast or rec.value is None else rec.value
    return (
        event.event_id, topic, event.kind, event.schema_version, event.site, event.device_id,
        event.ts, ingested_at, event.source, payload.decode("utf-8", "replace"),
        rec.partition, rec.offset,
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: HistorySink):
        self.sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.sink.batch.drop(set(revoked))
        self.sink.unchecked -= set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.sink.settle()  # what is stored must include the insert in flight
        # Checked at the first fetched record of each partition (that offset is where the
        # group's committed position put us; asking the broker here would deadlock).
        self.sink.unchecked |= set(assigned)
        log.info("sink assigned %d partitions", len(assigned))


class HistorySink:
    """Consume the contract topics and insert them into the raw log in batches."""

    def __init__(self, settings: Settings, store: HistoryStore, *,
                 topics: list[str] | None = None, clock: Clock = utc_now,
                 bootstrap: str | None = None):
        self.settings = settings
        self.store = store
        self.topics = topics or [t.name for t in TOPICS]
        self.clock = clock
        self.bootstrap = bootstrap or settings.kafka_bootstrap
        self.stats = SinkStats()
        self.batch = Batch()
        self.stored: dict[TopicPartition, StoredOffsets] = {}
        self.unchecked: set[TopicPartition] = set()
        self._dlq: Publisher | None = None
        self._inflight: tuple[Batch, asyncio.Task[None], float] | None = None

    async def load_stored(self, tp: TopicPartition, from_offset: int) -> None:
        """Which offsets of a newly assigned partition, from where consumption resumes, the
        log already holds."""
        while True:
            try:
                found = await asyncio.to_thread(self.store.stored_offsets, tp.topic,
                                                tp.partition, from_offset)
                break
            except Exception as exc:  # noqa: BLE001 - store down: wait, never guess
                self._record_failure(exc)
                await asyncio.sleep(1.0)
        if found:
            self.stored[tp] = found
            repaired = await asyncio.to_thread(self.store.repair_typed, tp.topic,
                                               tp.partition, found)
            log.info("sink: %s has records from offset %d already stored; skipping them "
                     "(%d typed rows its view had missed were added)", tp, from_offset,
                     repaired)
        else:
            self.stored.pop(tp, None)

    def add(self, tp: TopicPartition, rec: ConsumerRecord[bytes, bytes],
            ingested: datetime) -> None:
        """Decode one record into the batch (row, dead letter, or skipped duplicate)."""
        self.batch.last_offset[tp] = rec.offset
        stored = self.stored.get(tp)
        if stored is not None and rec.offset in stored:
            self.stats.duplicates_skipped += 1
            return
        try:
            event, upcast = decode_record(tp.topic, rec.value)
        except DecodeError as exc:
            if tp.topic == "dlq":
                log.error("undecodable record on dlq itself at %s@%d: %s", tp, rec.offset,
                          exc.reason)
                return
            self.batch.dead.setdefault(tp, []).append(dead_letter(
                source_topic=tp.topic, raw=rec.value, reason=exc.reason,
                site=self.settings.site, source="history-sink", ts=ingested, key=rec.key,
                partition=rec.partition, offset=rec.offset,
                # Same record, same letter: a redelivery does not dead-letter it twice.
                event_id=dlq_id(tp.topic, tp.partition, rec.offset)))
            self.batch.size += 1
            return
        self.batch.rows.setdefault(tp, []).append(to_row(tp.topic, rec, event, upcast, ingested))
        self.batch.size += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; store what was gathered, then leave the group.

        One insert is in flight while the next batch is gathered (the engine works in a
        thread); a batch's offsets are committed only after its own insert succeeded.
        """
        s = self.settings
        consumer = AIOKafkaConsumer(
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
        self._dlq = Publisher(self.bootstrap, client_id="hashplane-history-sink-dlq")
        await self._dlq.start()
        consumer.subscribe(self.topics, listener=_Rebalance(self))
        await consumer.start()
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
                if tp in self.unchecked and records:
                    await self.load_stored(tp, records[0].offset)
                    self.unchecked.discard(tp)
                for rec in records:
                    self.add(tp, rec, ingested)

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
                    owned = consumer.assignment()
                    rows = [r for tp, rs in batch.rows.items() if tp in owned for r in rs]
                    await asyncio.to_thread(self.store.insert_events, rows)
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
            await self._dlq.publish_many(dead)
        owned = consumer.assignment()
        offsets = {tp: OffsetAndMetadata(off + 1, "") for tp, off in batch.last_offset.items()
                   if tp in owned}
        self.stats.inserted += sum(len(r) for r in batch.rows.values())
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1
        if offsets:
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - a rebalance mid-commit: the data is
                # stored and the next owner finds it stored and skips it.
                log.warning("offset commit failed after insert: %s", exc)

    def _record_failure(self, exc: BaseException) -> None:
        self.stats.insert_failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
