"""The site feed's forwarder (streams/feed.py) on a real broker: batches on the feed, dead
letters once, offsets committed after forwarding, a restart forwarding nothing twice, and
an upgraded worker starting where its Faust group had got to."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.registry import site_agents
from schemas.events import AsicTelemetryObserved, RecordDeadLettered
from schemas.settings import Settings
from streams.app import BATCH_HEADER, unpack
from streams.codec import decode, encode
from streams.feed import Forwarder, SiteFeed, group_id
from streams.topics import SITE_FEED, committed_total
from tests.conftest import until
from tests.factories import T0

#: the forwarder's clock (its plausibility check's "now"): an input, not the wall clock
NOW = T0 + timedelta(minutes=5)


def reading(i: int) -> AsicTelemetryObserved:
    return AsicTelemetryObserved(
        site="site-1", device_id=f"asic-{i:03d}", ts=NOW - timedelta(seconds=30 - i),
        source="t", state="running", hashrate_ths=100, hashrate_avg_ths=100, power_w=3000,
        accepted=i, rejected=0, stale=0, hardware_errors=0, elapsed_s=60,
        pool_url="stratum+tcp://pool:3333")


async def read_all(bootstrap: str, topic: str) -> list[tuple[bytes, Any]]:
    """(value, headers) of every record on ``topic`` (read to its end)."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out: list[tuple[bytes, Any]] = []
    try:
        while batch := await c.getmany(timeout_ms=1000):
            out += [(r.value, dict(r.headers)) for rs in batch.values() for r in rs]
    finally:
        await c.stop()
    return out


async def run_until_read(feed: Forwarder, n: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    try:
        await until(lambda: feed.read >= n, 60, what=f"the forwarder reading {n} records")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)  # it stops between batches (a fetch waits <= 1 s)


async def test_forwarder_batches_letters_once_commits_and_adopts_the_faust_group(
        settings: Settings) -> None:
    s = settings
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await producer.start()
    try:
        # partition 0: ten readings, one record that is not JSON at offset 7
        for i in range(10):
            value = b"{not json" if i == 7 else encode(reading(i))
            await producer.send_and_wait("asic.telemetry", value, key=f"asic-{i:03d}".encode(),
                                         partition=0)

        # the worker's Faust group had forwarded the first four (the Faust forwarder)
        old = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id="hashplane",
                               enable_auto_commit=False)
        await old.start()
        try:
            old.assign([TopicPartition("asic.telemetry", 0)])
            await old.commit({TopicPartition("asic.telemetry", 0): OffsetAndMetadata(4, "")})
        finally:
            await old.stop()

        async def send(topic: str, key: bytes | None, value: bytes,
                       headers: list[tuple[str, bytes]]) -> Any:
            return await producer.send(topic, value, key=key, headers=headers or None)

        readers = [a for a in site_agents() if a.enabled(s)]

        def forwarder() -> SiteFeed:
            return SiteFeed(s, "hashplane", ["asic.telemetry"], readers, send, SITE_FEED,
                            clock=lambda: NOW)

        first = forwarder()
        await run_until_read(first, 6)
        assert (first.forwarded, first.dead_lettered) == (5, 1)
        assert await committed_total(s.kafka_bootstrap, group_id("hashplane"),
                                     "asic.telemetry") == 10

        # a restart forwards nothing again; a new reading goes on its own
        await producer.send_and_wait("asic.telemetry", encode(reading(10)), key=b"asic-010",
                                     partition=0)
        second = forwarder()
        await run_until_read(second, 1)
        await asyncio.sleep(0.5)  # nothing more on its way
        assert (second.read, second.forwarded, second.dead_lettered) == (1, 1, 0)
    finally:
        await producer.stop()

    feed = await read_all(s.kafka_bootstrap, SITE_FEED)
    assert all(h == {BATCH_HEADER: b"1"} for _, h in feed)
    forwarded = [decode(t, raw) for v, _ in feed for t, raw in unpack(v)]
    assert [e.device_id for e in forwarded] == [f"asic-{i:03d}" for i in (4, 5, 6, 8, 9, 10)]
    letters = [decode("dlq", v) for v, _ in await read_all(s.kafka_bootstrap, "dlq")]
    assert [(x.source_topic, x.offset, x.reason[:8]) for x in letters
            if isinstance(x, RecordDeadLettered)] == [("asic.telemetry", 7, "not JSON")]
