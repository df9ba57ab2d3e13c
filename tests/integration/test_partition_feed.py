"""The partition feeds' forwarder (streams/feed.py ``PartitionFeed``) on a real broker: each
source partition's records, as received and in order, framed on the same partition of its
feed; offsets committed after forwarding; a restart forwarding nothing twice; an upgraded
worker starting where its Faust group had got to; and the frame format against hostile
bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from schemas.settings import Settings
from streams.feed import (
    FRAMES_HEADER,
    Fed,
    FrameError,
    PartitionFeed,
    frame,
    partition_group_id,
    unframe,
)
from streams.topics import committed_total, partition_feed
from tests.integration.test_site_feed import run_until_read

FEED = partition_feed("shares")


def record(offset: int, key: bytes | None, value: bytes | None,
           timestamp: int | None = 1_700_000_000_000) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("shares", 3, offset, timestamp, 0, key, value, None,
                          len(key or b""), len(value or b""), [])


def test_a_frame_gives_back_each_record_as_received() -> None:
    records = [record(7, b"asic-1", b'{"a": 1}'), record(8, None, b"line\nbreak \x00\xff"),
               record(9, b"k", None), record(10, b"", b"", timestamp=None)]
    assert unframe(frame(records)) == [
        Fed(7, 1_700_000_000_000, b"asic-1", b'{"a": 1}'),
        Fed(8, 1_700_000_000_000, None, b"line\nbreak \x00\xff"),
        Fed(9, 1_700_000_000_000, b"k", None), Fed(10, None, b"", b"")]
    assert unframe(b"") == []


@pytest.mark.parametrize("bad", [
    b"\x00" * 7,  # shorter than a record's header
    frame([record(1, b"k", b"value")])[:-1],  # its value cut short
    b"\x00" * 16 + (5).to_bytes(4, "big", signed=True) + (-1).to_bytes(4, "big", signed=True),
    b"\x00" * 16 + (-2).to_bytes(4, "big", signed=True) + (0).to_bytes(4, "big", signed=True),
    b"\x00" * 16 + (0).to_bytes(4, "big") + (2**31 - 1).to_bytes(4, "big"),
])
def test_bytes_that_are_not_a_frame_are_refused(bad: bytes) -> None:
    with pytest.raises(FrameError):
        unframe(bad)


async def read_feed(bootstrap: str) -> dict[int, list[tuple[bytes | None, list[Fed]]]]:
    """Each feed partition's records: (the source-partition header, the frame's records)."""
    c = AIOKafkaConsumer(FEED, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out: dict[int, list[tuple[bytes | None, list[Fed]]]] = {}
    try:
        while batch := await c.getmany(timeout_ms=1000):
            for tp, records in batch.items():
                out.setdefault(tp.partition, []).extend(
                    (dict(r.headers).get(FRAMES_HEADER), unframe(r.value)) for r in records)
    finally:
        await c.stop()
    return out


async def test_forwarder_frames_each_partition_in_order_commits_and_adopts_the_faust_group(
        settings: Settings) -> None:
    s = settings
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await producer.start()
    sent: dict[int, list[tuple[int, bytes | None, bytes]]] = {}
    try:
        # three partitions; anything at all is forwarded as it is (the agent decodes)
        for i in range(30):
            p, value, key = i % 3, f'{{"n": {i}}}'.encode(), (f"k{i}".encode() if i % 4 else None)
            if i == 13:
                value = b"{not json\n"
            md = await producer.send_and_wait("shares", value, key=key, partition=p)
            sent.setdefault(p, []).append((md.offset, key, value))

        # the worker's Faust group had read the first four of partition 0 itself (share
        # ratios before the partition feed)
        old = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id="hashplane",
                               enable_auto_commit=False)
        await old.start()
        try:
            old.assign([TopicPartition("shares", 0)])
            await old.commit({TopicPartition("shares", 0): OffsetAndMetadata(4, "")})
        finally:
            await old.stop()

        async def send(topic: str, partition: int, value: bytes,
                       headers: list[tuple[str, bytes]]) -> Any:
            return await producer.send(topic, value, partition=partition, headers=headers)

        first = PartitionFeed(s, "hashplane", ["shares"], send)
        await run_until_read(first, 30 - 4)
        assert await committed_total(s.kafka_bootstrap, partition_group_id("hashplane"),
                                     "shares") == 30

        # a restart forwards nothing again; a new record goes on its own
        md = await producer.send_and_wait("shares", b"{}", key=b"late", partition=2)
        sent[2].append((md.offset, b"late", b"{}"))
        second = PartitionFeed(s, "hashplane", ["shares"], send)
        await run_until_read(second, 1)
        await asyncio.sleep(0.5)  # nothing more on its way
        assert second.read == 1
    finally:
        await producer.stop()

    feed = await read_feed(s.kafka_bootstrap)
    assert set(feed) == {0, 1, 2}
    for p, frames in feed.items():
        assert {h for h, _ in frames} == {str(p).encode()}
        got = [(r.offset, r.key, r.value) for _, recs in frames for r in recs]
        assert got == sent[p][4 if p == 0 else 0:], p
