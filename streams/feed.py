"""The feeds' forwarders: Faust agents' input topics, many records to one.

* The site feed (``SiteFeed``): the site agents' partitioned input topics, validated, into
  the single-partition internal topic ``hashplane.site-feed``.
* The partition feeds (``PartitionFeed``): each fed topic's partitions (``streams.topics.FED``:
  share counts), as received, into the same partitions of ``hashplane.<topic>.feed``, which
  its partition-scoped agents (share ratios) read.

It is transport, not an agent: no state and no step, so it reads with aiokafka's batch
fetch (``getmany``) instead of Faust's per-record stream.  Faust hands a record to an agent
at ~5,000 a second here whatever the agent does (the benchmark's no-op agent), which capped
everything the site agents fold of a fleet's telemetry; a batch fetch, validating each
record, goes well past the 50,000 readings a second of issue 18.

Delivery: a batch's source offsets are committed only after the broker has acknowledged
the feed record holding them and the dead letters of the records refused; a crash before
leaves them to be forwarded again (at least once: the site agents' steps take a record
twice as once; the partition agents by the records' own positions).  Each forwarder has a
consumer group of its own (``<app id>-site-feed``, ``<app id>-partition-feed``): an aiokafka
group cannot share Faust's, whose members speak Faust's assignor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from agents.spec import AgentSpec
from schemas.events import RecordDeadLettered
from schemas.registry import topic_of
from schemas.settings import Settings
from streams.app import BATCH_HEADER, pack
from streams.codec import DecodeError, decode_plausible, encode, encode_key, record_letter
from streams.topics import BrokerUnavailable, partition_feed, start_client

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
            out.letters.append(record_letter(
                topic=name, partition=rec.partition, offset=rec.offset,
                timestamp_ms=rec.timestamp, raw=raw, key=rec.key, reason=exc.reason,
                site=site, source=SOURCE, ts=now))
        else:
            if any(s.wants(event) for s in readers):
                plain = raw is not None and not upcast and b"\n" not in raw
                out.entries.append((topic_of(type(event)).name,
                                    raw if plain and raw is not None else encode(event)))
        out.last[TopicPartition(rec.topic, rec.partition)] = rec.offset
        out.records += 1
    return out


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, label: str) -> None:
        self.label = label

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        # an operator (and the scale-out test) sees which worker forwards what
        log.info("%s assigned: %s", self.label, " ".join(
            f"{t}[{','.join(map(str, sorted(p)))}]" for t, p in sorted(by_topic.items()))
            or "(none)")


class Forwarder:
    """What the feeds' forwarders share: a consumer group of their own, fetching with
    aiokafka's ``getmany``, each batch forwarded (``_forward``, waiting for the broker's
    acks) before its source offsets are committed (``_commit``)."""

    label = "forwarder"  # in the logs

    def __init__(self, settings: Settings, group: str, previous_group: str, topics: list[str],
                 carried: list[str], clock: Callable[[], datetime]):
        self.settings = settings
        self.group = group
        #: where this group has committed nothing, it starts where ``previous_group`` had got
        #: to on the ``carried`` topics (an upgrade: that group read them before), not at the
        #: start of the topics' retention
        self.previous_group = previous_group
        self.carried = carried
        self.topics = topics
        self.clock = clock
        self.read = 0  # records forwarded, lettered or passed

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
        c.subscribe(self.topics, listener=_Assignments(self.label))
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
                log.info("%s: %d partitions start where %s had committed", self.label,
                         len(carry), self.previous_group)
        except Exception as exc:  # noqa: BLE001 - nothing to carry over: the earliest
            log.warning("%s: could not carry %s's offsets over (%s); partitions this "
                        "group never committed start at their earliest record",
                        self.label, self.previous_group, exc)
        finally:
            for c in (mine, old):
                with contextlib.suppress(Exception):
                    await c.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Forward until cancelled (the worker stopping) or ``stop`` is set."""
        stop = stop or asyncio.Event()
        await self.carry_over()
        try:
            consumer = await start_client(self._consumer, self.label, stop)
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

    async def _fetch(self, consumer: AIOKafkaConsumer) -> Gathered | Frames:
        raise NotImplementedError

    async def _forward(self, batch: Any, stop: asyncio.Event) -> None:
        raise NotImplementedError

    async def _acked(self, send: Callable[[], Awaitable[list[Any]]], records: int,
                     stop: asyncio.Event) -> None:
        """Run ``send`` (it hands records to the producer and returns their futures) until
        the broker has acknowledged every record; retried through broker outages (the
        offsets wait)."""
        delay = 0.25
        while True:
            try:
                await asyncio.gather(*await send())
                return
            except Exception as exc:  # the broker's or the producer's: wait, retry
                if stop.is_set():
                    raise
                log.warning("%s: forwarding %d records failed (%s); retrying in %.1fs",
                            self.label, records, exc, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _commit(self, consumer: AIOKafkaConsumer, batch: Gathered | Frames) -> None:
        owned = consumer.assignment()
        offsets = {tp: OffsetAndMetadata(off + 1, "") for tp, off in batch.last.items()
                   if tp in owned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - a rebalance mid-commit: the next owner
            # forwards these again, which the site agents fold as once
            log.warning("%s: offset commit failed after forwarding: %s", self.label, exc)


class SiteFeed(Forwarder):
    """Fetch the forwarded topics in batches, send each batch as one feed record (with the
    dead letters of what it refused), then commit its offsets."""

    label = "site feed"

    def __init__(self, settings: Settings, app_id: str, topics: list[str],
                 readers: Sequence[AgentSpec[Any, Any]], send: Send, feed_topic: str,
                 dlq_topic: str = "dlq", clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 read_by_agents: Iterable[str] = ()):
        # until 2026-12-07 the worker's Faust group forwarded (a Faust agent); it is carried
        # over except on topics the worker's Faust agents go on reading themselves: there
        # that group moves on, and a first start racing its commit would skip records
        super().__init__(settings, group_id(app_id), app_id, topics,
                         [t for t in topics if t not in set(read_by_agents)], clock)
        self.readers = list(readers)
        self.send = send
        self.feed_topic = feed_topic
        self.dlq_topic = dlq_topic
        self.forwarded = 0
        self.dead_lettered = 0

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
        """Send the batch's feed record and letters and wait for the broker's acks."""
        async def send() -> list[Any]:
            futures = [await self.send(self.dlq_topic, encode_key(letter), encode(letter), [])
                       for letter in batch.letters]
            if batch.entries:
                futures.append(await self.send(
                    self.feed_topic, self.settings.site.encode(), pack(batch.entries),
                    [(BATCH_HEADER, b"1")]))
            return futures

        await self._acked(send, len(batch.entries), stop)
        self.read += batch.records
        self.forwarded += len(batch.entries)
        self.dead_lettered += len(batch.letters)
        for letter in batch.letters:
            log.warning("dead-lettered %s@%s:%s: %s", letter.source_topic, letter.partition,
                        letter.offset, letter.reason)


# -- the partition feeds ----------------------------------------------------------------------

#: Header of a partition-feed record: the source partition its records came from (decimal).
FRAMES_HEADER = "hashplane-frames"
#: Each record of a frame: its offset, its timestamp (ms, -1: none), the lengths of its key
#: and value (-1: none), then the key's and the value's bytes.
_FRAME = struct.Struct(">qqii")


class FrameError(ValueError):
    """A partition-feed record that is not a well-formed ``frame``."""


class Fed(NamedTuple):
    """One source record as a partition agent gets it from its partition feed."""

    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


def frame(records: Iterable[ConsumerRecord[bytes, bytes]]) -> bytes:
    """Records of one source partition as one partition-feed record, as received (any
    bytes: the agent decodes, and dead-letters, each one)."""
    parts: list[bytes] = []
    for r in records:
        k, v = r.key, r.value
        parts.append(_FRAME.pack(r.offset, -1 if r.timestamp is None else r.timestamp,
                                 -1 if k is None else len(k), -1 if v is None else len(v)))
        parts += [b for b in (k, v) if b]
    return b"".join(parts)


def unframe(value: bytes) -> list[Fed]:
    """The records of a ``frame``; ``FrameError`` if it is not one (truncated, a length
    past its end)."""
    out: list[Fed] = []
    i, n, head = 0, len(value), _FRAME.size
    while i < n:
        if i + head > n:
            raise FrameError(f"truncated record header at byte {i} of {n}")
        offset, ts, kl, vl = _FRAME.unpack_from(value, i)
        i += head
        if kl < -1 or vl < -1 or i + max(kl, 0) + max(vl, 0) > n:
            raise FrameError(f"record at byte {i - head} of {n} claims {kl}+{vl} bytes")
        key = None if kl < 0 else value[i:i + kl]
        i += max(kl, 0)
        out.append(Fed(offset, None if ts < 0 else ts, key, None if vl < 0 else value[i:i + vl]))
        i += max(vl, 0)
    return out


def partition_group_id(app_id: str) -> str:
    """The partition feeds' forwarder's consumer group, beside its worker's Faust group."""
    return f"{app_id}-partition-feed"


#: Send one record to a partition: (topic, partition, value, headers) -> a future the
#: broker's ack resolves.
SendTo = Callable[[str, int, bytes, list[tuple[str, bytes]]], Awaitable[Any]]


@dataclass
class Frames:
    """One fetch: each source partition's records, and the last offset of each."""

    records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = field(
        default_factory=dict)
    last: dict[TopicPartition, int] = field(default_factory=dict)
    count: int = 0


class PartitionFeed(Forwarder):
    """Forward the fed topics (``streams.topics.FED``) to their partition feeds: each
    source partition's records, as received and in order, as one record (``frame``) on the
    same partition of ``partition_feed(topic)``, whose partition agents then pay Faust's
    per-record cost once per frame.

    No validation here: the agent decodes each record and dead-letters what does not
    decode under the record's own topic, partition and offset, and it folds by those
    positions, so a frame forwarded twice (a crash before the commit) is folded once."""

    label = "partition feed"

    def __init__(self, settings: Settings, app_id: str, topics: list[str], send: SendTo,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        # until 2026-12-07 the worker's Faust group read these topics itself, and no longer
        # does: forwarding starts where it had stopped
        super().__init__(settings, partition_group_id(app_id), app_id, topics, list(topics),
                         clock)
        self.send = send
        self.frames = 0

    async def _fetch(self, consumer: AIOKafkaConsumer) -> Frames:
        """Wait up to 1 s for records, then up to ``FEED_LINGER_S`` for more, at most
        ``FEED_BATCH`` in all."""
        batch = Frames()
        timeout_ms = 1000
        while batch.count < FEED_BATCH:
            fetched = await consumer.getmany(timeout_ms=timeout_ms,
                                             max_records=FEED_BATCH - batch.count)
            if not fetched:
                break
            for tp, records in fetched.items():
                if records:
                    batch.records.setdefault(tp, []).extend(records)
                    batch.last[tp] = records[-1].offset
                    batch.count += len(records)
            timeout_ms = int(FEED_LINGER_S * 1000)
        return batch

    async def _forward(self, batch: Frames, stop: asyncio.Event) -> None:
        """Send a frame per source partition and wait for the broker's acks."""
        frames = [(partition_feed(tp.topic), tp.partition, frame(records),
                   [(FRAMES_HEADER, str(tp.partition).encode())])
                  for tp, records in batch.records.items()]

        async def send() -> list[Any]:
            return [await self.send(*f) for f in frames]

        await self._acked(send, batch.count, stop)
        self.read += batch.count
        self.frames += len(frames)
