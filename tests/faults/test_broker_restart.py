"""The broker restarts mid-stream (the embedded Tansu keeps topics in memory: it comes back
empty, offsets start again at 0 and collide with stored ones) and then the whole box: the
history sink, a real process on the real ClickHouse engine, must store every record
produced exactly once, and dead letters stay distinct across incarnations.

Records the old broker acknowledged but the sink had not consumed yet die with its memory
(a persistent Kafka keeps them); each phase therefore waits until the sink has committed
what was produced before the broker is killed, while the producers keep producing through
the outage into their outboxes."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID, uuid4

import pytest

from schemas.commands import CommandAcknowledged
from schemas.envelope import Event
from schemas.events import AsicTelemetryObserved, GridMeasured, ShareCountsObserved
from schemas.settings import Settings
from streams.history import HistoryStore
from streams.publish import Publisher
from streams.topics import committed_total
from tests.conftest import until
from tests.factories import T0
from tests.faults.conftest import Broker, Proc

pytestmark = pytest.mark.integration

TOPICS = ("shares", "asic.telemetry", "grid.readings", "commands.acks")
GARBAGE = b"\x00not an event"  # the same bytes in every incarnation


def site_events(n: int, start: int) -> list[Event]:
    """A mix of the site's topics, every event unique."""
    out: list[Event] = []
    for i in range(start, start + n):
        ts = T0 + timedelta(milliseconds=10 * i)
        match i % 4:
            case 0:
                out.append(ShareCountsObserved(site="site-1", device_id=f"w{i % 40}", ts=ts,
                                               source="t", worker=f"w{i % 40}", accepted=3,
                                               rejected=0, interval_s=1))
            case 1:
                out.append(AsicTelemetryObserved(
                    site="site-1", device_id=f"asic{i % 40:02d}", ts=ts, source="t",
                    state="running", hashrate_ths=100, hashrate_avg_ths=100, power_w=3000,
                    accepted=1, rejected=0, stale=0, hardware_errors=0, elapsed_s=i))
            case 2:
                out.append(GridMeasured(site="site-1", device_id="meter", ts=ts, source="t",
                                        frequency_hz=50.0, voltage_v=400, active_power_kw=90,
                                        reactive_power_kvar=1))
            case _:
                out.append(CommandAcknowledged(
                    site="site-1", device_id=f"asic{i % 40:02d}", ts=ts, source="t",
                    command_id=uuid4(), command_kind="SleepAsic", status="applied",
                    latency_ms=5, actuator="actuator:asic"))
    return out


async def committed_all(s: Settings, expected: Counter[str]) -> bool:
    have = {t: await committed_total(s.kafka_bootstrap, s.sink_group, t) for t in expected}
    print("committed", have, "expected", dict(expected))
    return all(have[t] >= n for t, n in expected.items())


async def produce(pub: Publisher, events: list[Event], per_s: float) -> None:
    """Offer events at a steady pace, as a connector does (never waits on the broker)."""
    for i in range(0, len(events), 50):
        await pub.offer(events[i:i + 50])
        await asyncio.sleep(50 / per_s)


def counts(store: HistoryStore) -> dict[str, tuple[int, int]]:
    rows = store.query("SELECT topic, count(), uniqExact(event_id) FROM hashplane.events "
                       "GROUP BY topic")
    return {t: (int(c), int(u)) for t, c, u in rows}


@pytest.mark.parametrize("outage_s", [0.0, 20.0], ids=["restart", "20s-outage"])
async def test_broker_restart_mid_stream_loses_nothing_and_stores_nothing_twice(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc],
        outage_s: float) -> None:
    s = fault_settings
    sink = spawn("sink", "sink")
    produced: list[Event] = []
    per_topic: Counter[str] = Counter()
    async with Publisher(s.kafka_bootstrap, client_id="first-producer") as first_pub:
        # Incarnation 1: a garbage record first (offset 0 of grid.readings), then events.
        await first_pub.send_raw("grid.readings", GARBAGE, key=b"meter")
        first = site_events(4000, 0)
        await produce(first_pub, first, 4000)
        produced += first
        inc1 = Counter(type_topic(e) for e in first) + Counter({"grid.readings": 1})
        await until(lambda: committed_all(s, inc1), 90, 0.5, what="incarnation 1 stored")
    async with Publisher(s.kafka_bootstrap, client_id="test-producer") as pub:
        # The broker dies with records it acknowledged and nobody read yet (the producer
        # sends those again to the new incarnation); the producer goes on producing into
        # its outbox meanwhile.
        # (grid readings wait for after the outage: the garbage record goes first there)
        unread = [e for e in site_events(100, 100_000) if type_topic(e) != "grid.readings"]
        await pub.publish_many(unread)
        later = site_events(4000, 4000)
        outage = [e for e in later[:2000] if type_topic(e) != "grid.readings"]
        after = [e for e in later if e not in outage]
        if outage_s:
            broker_proc.kill()  # the supervisor too: nothing restarts it for outage_s
            during = asyncio.create_task(produce(pub, outage, len(outage) / outage_s))
            await asyncio.sleep(outage_s)
            broker_proc.start()
        else:
            broker_proc.kill_tansu()  # its supervisor brings it back at once, empty
            during = asyncio.create_task(produce(pub, outage, 1000))
            await until(lambda: "tansu broker restarted" in broker_proc.tail(), 30,
                        what="broker restarted by its supervisor")
        # Incarnation 2: the same garbage bytes at the same offset, new events at offsets
        # that collide with stored ones.
        await pub.send_raw("grid.readings", GARBAGE, key=b"meter")
        await during
        await produce(pub, after, 1000)
        produced += unread + later
        await until(lambda: pub.stats.buffered == 0, 90, 0.5, what="outbox drained")
        inc2 = Counter(type_topic(e) for e in later)
        inc2["grid.readings"] += 1
        await until(lambda: committed_all(s, inc2), 120, 0.5, what="incarnation 2 stored")
        assert pub.stats.dropped == 0 and pub.stats.resent >= len(unread)
    assert sink.alive, sink.tail()
    assert sink.stop() == 0, sink.tail()

    per_topic.update(type_topic(e) for e in produced)
    store = HistoryStore(s.history_dsn).open()
    try:
        stored = counts(store)
        ids = {r[0] for r in store.query(
            "SELECT event_id FROM hashplane.events WHERE topic IN {t:Array(String)}",
            {"t": list(TOPICS)})}
        collisions = store.query(
            "SELECT count() FROM (SELECT topic, kafka_partition, kafka_offset FROM "
            "hashplane.events WHERE topic IN {t:Array(String)} GROUP BY topic, "
            "kafka_partition, kafka_offset HAVING uniqExact(event_id) > 1)",
            {"t": list(TOPICS)})[0][0]
        letters = store.query("SELECT event_id, offset FROM hashplane.dlq "
                              "WHERE source_topic = 'grid.readings'")
        typed = dict(store.query("SELECT 'shares', count() FROM hashplane.shares UNION ALL "
                                 "SELECT 'grid', count() FROM hashplane.grid_readings"))
    finally:
        store.close()
    print(f"outage {outage_s:g}s: produced {dict(per_topic)}; stored (rows, distinct) "
          f"{ {t: stored.get(t) for t in TOPICS} }; offsets reused by a new record: "
          f"{collisions}; dead letters {len(letters)}")
    for topic in TOPICS:
        assert stored.get(topic) == (per_topic[topic], per_topic[topic]), topic
    assert ids == {e.event_id for e in produced}
    assert collisions > 1000  # the new incarnation's offsets really did collide
    assert typed == {"shares": per_topic["shares"], "grid": per_topic["grid.readings"]}
    # one letter per garbage record, both at offset 0, distinct ids
    assert len(letters) == 2 and {o for _, o in letters} == {0}
    assert len({UUID(str(i)) for i, _ in letters}) == 2


def type_topic(e: Event) -> str:
    from schemas.registry import topic_of

    return topic_of(type(e)).name


async def test_whole_box_restart_on_the_same_clickhouse(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc]) -> None:
    """A power cut: broker and sink die at once; both start again on the same data."""
    s = fault_settings
    sink = spawn("sink", "sink")
    rng = random.Random(4)
    produced: list[Event] = []
    for round_ in range(3):
        async with Publisher(s.kafka_bootstrap, client_id="test-producer") as pub:
            batch = site_events(3000, 3000 * round_)
            await produce(pub, batch, 3000)
            produced += batch
            expected = Counter(type_topic(e) for e in batch)
            await until(lambda e=expected: committed_all(s, e), 90, 0.5,
                        what=f"round {round_} stored")
            # a few more that may or may not be stored when the power goes (an insert in
            # flight is stored or not; either way never twice)
            await pub.offer(site_events(200, 100_000 + 200 * round_))
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        sink.kill()
        broker_proc.kill()
        broker_proc.start()
        sink.start()
    await until(lambda: sink.log.read_text().count("sink assigned") >= 4, 60, what="last sink up")
    assert sink.stop() == 0, sink.tail()
    store = HistoryStore(s.history_dsn).open()
    try:
        rows = store.query("SELECT count(), uniqExact(event_id) FROM hashplane.events")[0]
        ids = {r[0] for r in store.query("SELECT event_id FROM hashplane.events")}
    finally:
        store.close()
    print(f"power cuts: 3; events produced and confirmed stored {len(produced)}; rows "
          f"{rows[0]}, distinct {rows[1]}")
    assert rows[0] == rows[1]  # nothing stored twice
    assert {e.event_id for e in produced} <= ids  # nothing confirmed was lost
