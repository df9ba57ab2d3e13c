"""``streams.worker.send_records`` on a real broker: a step's many outputs go out as the
producer's record batches, each record in the partition a plain ``send`` would have chosen,
in order within its partition, none lost, none twice, after what the partition held."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from schemas.registry import topic
from streams.broker import EmbeddedBroker
from streams.worker import BATCH_FROM, send_records


class FaustProducer:
    """The two calls ``send_records`` makes of Faust's aiokafka producer, over a real one."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None,
                   timestamp: float | None, headers: Any) -> Any:
        return await self.producer.send(topic, value, key=key, partition=partition)

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self.producer


async def read_all(bootstrap: str, name: str, n: int) -> dict[int, list[tuple[bytes, bytes]]]:
    c = AIOKafkaConsumer(name, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    got: dict[int, list[tuple[bytes, bytes]]] = {}
    try:
        for _ in range(100):  # reads to what was sent; more would come in the last getmany
            if sum(map(len, got.values())) >= n:
                break
            for tp, recs in (await c.getmany(timeout_ms=300)).items():
                got.setdefault(tp.partition, []).extend((r.key, r.value) for r in recs)
        for tp, recs in (await c.getmany(timeout_ms=300)).items():  # nothing twice
            got.setdefault(tp.partition, []).extend((r.key, r.value) for r in recs)
    finally:
        await c.stop()
    return got


async def test_many_records_go_in_batches_where_send_would_put_them(
        broker: EmbeddedBroker) -> None:
    name = "commands.asic"
    partitions = list(range(topic(name).partitions))
    assert len(partitions) > 1
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                max_batch_size=16 * 1024)  # small: batches fill mid-call
    await producer.start()
    app = SimpleNamespace(producer=FaustProducer(producer))
    try:
        few = [(name, None, b"asic-0007", b"before-0"), (name, None, b"asic-0007", b"before-1")]
        assert len(few) < BATCH_FROM
        await send_records(app, few)  # type: ignore[arg-type]
        many = [(name, None, f"asic-{i % 250:04d}".encode(), f"cmd-{i:05d}".encode() * 20)
                for i in range(2_000)]
        many.append((name, 1, b"pinned", b"to partition 1"))  # a partition given is kept
        await send_records(app, many)  # type: ignore[arg-type]
        await producer.flush()
    finally:
        await producer.stop()
    got = await read_all(broker.bootstrap, name, len(few) + len(many))
    sent = few + many
    assert sorted(v for recs in got.values() for _, v in recs) == sorted(v for *_, v in sent)
    choose = DefaultPartitioner()
    for p, recs in got.items():
        expected = [(k, v) for _, given, k, v in sent
                    if (given if given is not None else choose(k, partitions, partitions)) == p]
        assert recs == expected, p  # the partition send chooses, in the order given
    assert (b"pinned", b"to partition 1") in got[1]
    assert got[choose(b"asic-0007", partitions, partitions)][:2] == [
        (b"asic-0007", b"before-0"), (b"asic-0007", b"before-1")]
