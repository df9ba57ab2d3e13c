"""The site feed's forwarder: the site agents' partitioned input topics, validated, into the
single-partition internal topic ``hashplane.site-feed``, many records to one.

It is transport, not an agent: no state and no step, so it reads with aiokafka's batch
fetch (``getmany``) instead of Faust's per-record stream.  Faust hands a record to an agent
at ~5,000 a second here whatever the agent does (the benchmark's no-op agent), which capped
everything the site agents fold of a fleet's telemetry; a batch fetch, validating each
record, goes well past the 50,000 readings a second of issue 18.

Delivery: a batch's source offsets are committed only after the broker has acknowledged
the feed record holding them and the dead letters of the records refused; a crash before
leaves them to be forwarded again (at least once: the site agents' steps take a record
twice as once).  The forwarder has a consumer group of its own (``<app id>-site-feed``):
an aiokafka group cannot share Faust's, whose members speak Faust's assignor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from agents.spec import AgentSpec
from schemas.events import RecordDeadLettered
from schemas.registry import topic_of
from schemas.settings import Settings
from streams.app import BATCH_HEADER, pack
from streams.codec import DecodeError, dead_letter, decode_plausible, dlq_id, encode, encode_key
from streams.topics import BrokerUnavailable, start_client

log = logging.getLogger(__name__)

#: What the forwarder gathers into one feed record: at most ``FEED_BATCH`` records, sent at
#: the latest ``FEED_LINGER_S`` after the first of them arrived (the site agents then pay
#: Faust's per-record cost once per batch, not once per reading).
FEED_BATCH, FEED_LINGER_S = 1000, 0.005

#: Who the dead letters name as having refused a record.
SOURCE = "agent:site_feed"

#: Send one record: (topic, key, value, headers) -> a future the broker's ack resolves.
Send = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[Any]]


def group_id(app_id: str) -> str:
    """The forwarder's consumer group, beside its worker's Faust group."""
    return f"{app_id}-site-feed"


@dataclass
class Gathered:
    """One feed record's worth: the entries it carries (topic, JSON), the letters of the
    records refused, and the last offset of each source partition they came from."""

    entries: list[tuple[str, bytes]] = field(default_factory=list)
    letters: list[RecordDeadLettered] = field(default_factory=list)
    last: dict[TopicPartition, int] = field(default_factory=dict)
    records: int = 0


def gather(records: Iterable[ConsumerRecord[bytes, bytes]], readers: Sequence[AgentSpec[Any, Any]],
           site: str, now: datetime, into: Gathered | None = None) -> Gathered:
    """Validate fetched records: what a site agent folds becomes an entry, what does not
    decode or is implausible becomes a dead letter (its id from its position: a redelivered
    record is lettered once), and the rest (no reader wants it) is only passed.

    An entry is the record as received when it is of the current version and has no raw
    newline (``pack`` separates by newline), else the event encoded again."""
    out = into if into is not None else Gathered()
    for rec in records:
        name, raw = rec.topic, rec.value
        try:
            event, upcast = decode_plausible(name, raw, now)
        except DecodeError as exc:
            out.letters.append(dead_letter(
                source_topic=name, raw=raw, reason=exc.reason, site=site, source=SOURCE,
                ts=now, key=rec.key, partition=rec.partition, offset=rec.offset,
                event_id=dlq_id(name, rec.partition, rec.offset, rec.timestamp, raw)))
        else:
            if any(s.wants(event) for s in readers):
                plain = raw is not None and not upcast and b"\n" not in raw
                out.entries.append((topic_of(type(event)).name,
                                    raw if plain and raw is not None else encode(event)))
        out.last[TopicPartition(rec.topic, rec.partition)] = rec.offset
        out.records += 1
    return out


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        # an operator (and the scale-out test) sees which worker forwards what
        log.info("site feed assigned: %s", " ".join(
            f"{t}[{','.join(map(str, sorted(p)))}]" for t, p in sorted(by_topic.items()))
            or "(none)")


class SiteFeed:
    """Fetch the forwarded topics in batches, send each batch as one feed record (with the
    dead letters of what it refused), then commit its offsets."""

    def __init__(self, settings: Settings, app_id: str, topics: list[str],
                 readers: Sequence[AgentSpec[Any, Any]], send: Send, feed_topic: str,
                 dlq_topic: str = "dlq", clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 read_by_agents: Iterable[str] = ()):
        self.settings = settings
        self.group = group_id(app_id)
        #: until 2026-12-07 the worker's Faust group forwarded (a Faust agent): where this
        #: group has committed nothing, it starts where that one had got to, not at the
        #: start of the topics' retention
        self.previous_group = app_id
        #: ...except on topics the worker's Faust agents go on reading themselves (share
        #: ratios' ``shares``): there that group moves on, and a first start racing its
        #: commit would skip records; these start at the earliest
        self.carried = [t for t in topics if t not in set(read_by_agents)]
        self.topics = topics
        self.readers = list(readers)
        self.send = send
        self.feed_topic = feed_topic
        self.dlq_topic = dlq_topic
        self.clock = clock
        self.read = 0  # records forwarded, lettered or passed (none of the agents folds it)
        self.forwarded = 0
        self.dead_lettered = 0

    def _consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        c = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=self.group,
            client_id=f"{self.group}-forwarder", enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.worker_session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.worker_heartbeat_interval_s * 1000),
            rebalance_timeout_ms=int(s.worker_rebalance_timeout_s * 1000),
            max_poll_interval_ms=3_600_000)
        c.subscribe(self.topics, listener=_Assignments())
        return c

    async def carry_over(self) -> None:
        """Once, before joining: where this group has committed nothing, commit what the
        worker's Faust group had committed (an upgrade from the Faust forwarder), so that
        forwarding goes on from there and not from the start of the topics' retention."""
        mine = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                                group_id=self.group, enable_auto_commit=False)
        old = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                               group_id=self.previous_group, enable_auto_commit=False)
        try:
            await mine.start()
            await old.start()
            await mine.topics()
            tps = [TopicPartition(t, p) for t in self.carried
                   for p in sorted(mine.partitions_for_topic(t) or ())]
            carry: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp in tps:
                if (await mine.committed(tp)) is None and \
                        (off := await old.committed(tp)) is not None and off >= 0:
                    carry[tp] = OffsetAndMetadata(off, "")
            if carry:
                mine.assign(list(carry))
                await mine.commit(carry)
                log.info("site feed: %d partitions start where %s had committed", len(carry),
                         self.previous_group)
        except Exception as exc:  # noqa: BLE001 - nothing to carry over: the earliest
            log.warning("site feed: could not carry %s's offsets over (%s); partitions this "
                        "group never committed start at their earliest record",
                        self.previous_group, exc)
        finally:
            for c in (mine, old):
                with contextlib.suppress(Exception):
                    await c.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Forward until cancelled (the worker stopping) or ``stop`` is set."""
        stop = stop or asyncio.Event()
        await self.carry_over()
        try:
            consumer = await start_client(self._consumer, "site feed", stop)
        except BrokerUnavailable:
            return
        try:
            while not stop.is_set():
                batch = await self._fetch(consumer)
                if batch.last:
                    await self._forward(batch, stop)
                    await self._commit(consumer, batch)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _fetch(self, consumer: AIOKafkaConsumer) -> Gathered:
        """Wait up to 1 s for records, then up to ``FEED_LINGER_S`` for more, at most
        ``FEED_BATCH`` in all."""
        batch = Gathered()
        site = self.settings.site
        timeout_ms, n = 1000, 0
        while n < FEED_BATCH:
            fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=FEED_BATCH - n)
            if not fetched:
                break
            now = self.clock()
            for records in fetched.values():
                gather(records, self.readers, site, now, batch)
                n += len(records)
            timeout_ms = int(FEED_LINGER_S * 1000)
        return batch

    async def _forward(self, batch: Gathered, stop: asyncio.Event) -> None:
        """Send the batch's feed record and letters and wait for the broker's acks; retried
        through broker outages (the offsets wait)."""
        delay = 0.25
        while True:
            try:
                futures = [await self.send(self.dlq_topic, encode_key(letter), encode(letter), [])
                           for letter in batch.letters]
                if batch.entries:
                    futures.append(await self.send(
                        self.feed_topic, self.settings.site.encode(), pack(batch.entries),
                        [(BATCH_HEADER, b"1")]))
                await asyncio.gather(*futures)
            except Exception as exc:  # the broker's or the producer's: wait, retry
                if stop.is_set():
                    raise
                log.warning("site feed: forwarding %d records failed (%s); retrying in %.1fs",
                            len(batch.entries), exc, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            self.read += batch.records
            self.forwarded += len(batch.entries)
            self.dead_lettered += len(batch.letters)
            for letter in batch.letters:
                log.warning("dead-lettered %s@%s:%s: %s", letter.source_topic, letter.partition,
                            letter.offset, letter.reason)
            return

    async def _commit(self, consumer: AIOKafkaConsumer, batch: Gathered) -> None:
        owned = consumer.assignment()
        offsets = {tp: OffsetAndMetadata(off + 1, "") for tp, off in batch.last.items()
                   if tp in owned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - a rebalance mid-commit: the next owner
            # forwards these again, which the site agents fold as once
            log.warning("site feed: offset commit failed after forwarding: %s", exc)
