"""The decision layer on the real broker: a recorded site stream -> exactly the commands.

A Faust worker (``hashplane worker``, every agent) runs as a child process on a real Tansu
broker.  The recorded stream (ten running ASICs, one supply feed, a grid dip through both
bands, an uplink outage) is published in phases, each after the worker has committed the
previous one, so the agents see it in the order the step functions are folded in here.  The
commands on ``commands.asic`` and ``commands.compute`` must be exactly the ones the pure
step functions compute (same ids, same content), and the alerts must fire.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import energy, failover, scheduler
from schemas.alerts import AlertFired
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GridMeasured,
    UplinkStatusObserved,
)
from schemas.registry import topic_of
from schemas.settings import Settings
from streams.codec import decode
from streams.feed import group_id as feed_group
from streams.publish import Publisher
from streams.topics import SITE_FEED, committed_total
from tests.conftest import until
from tests.factories import T0

pytestmark = pytest.mark.integration


def at(sec: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=sec)


def recorded() -> tuple[list[AsicTelemetryObserved], list[FeedPowerMeasured],
                        list[GridMeasured], list[UplinkStatusObserved]]:
    fleet = [AsicTelemetryObserved(
        site="site-1", device_id=f"asic{i:02d}", ts=at(0), source="rec", state="running",
        model="Antminer S19j Pro", hashrate_ths=104, hashrate_avg_ths=104,
        power_w=3000 + 10 * i, temp_chip_c=70, accepted=100, rejected=1, stale=0,
        hardware_errors=0, elapsed_s=600, pool_url="stratum+tcp://pool.example:3333")
        for i in range(10)]
    feeds = [FeedPowerMeasured(site="site-1", device_id="feed-a", ts=at(1), source="rec",
                               feed_id="feed-a", voltage_v=400, current_a=50, power_kw=30.5,
                               capacity_kw=40)]
    dip = [GridMeasured(site="site-1", device_id="meter", ts=at(2 + i), source="rec",
                        frequency_hz=hz, voltage_v=400, active_power_kw=30,
                        reactive_power_kvar=1) for i, hz in enumerate([50.0, 49.7, 49.4])]
    uplink = [UplinkStatusObserved(site="site-1", device_id="uplink", ts=at(10 + i),
                                   source="rec", target="pool.example:3333", up=False,
                                   detail="timeout") for i in range(2)]
    return fleet, feeds, dip, uplink


async def consume(bootstrap: str, topics: list[str], n: int, settle_s: float = 3.0,
                  timeout_s: float = 60) -> list[Any]:
    """At least ``n`` records of ``topics`` decoded, plus whatever arrives within
    ``settle_s`` after (so extra, unexpected commands are seen)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline, settled = loop.time() + timeout_s, None
        while loop.time() < deadline and (settled is None or loop.time() < settled):
            batch = await consumer.getmany(timeout_ms=300)
            for tp, records in batch.items():
                got.extend(decode(tp.topic, r.value) for r in records)
            if settled is None and len(got) >= n:
                settled = loop.time() + settle_s
    finally:
        await consumer.stop()
    return got


async def publish_phase(pub: Publisher, bootstrap: str, events: list[Event],
                        barrier: str, before: int) -> int:
    """Publish, then wait until the agents committed past these records of ``barrier``.

    ``SITE_FEED``: the records reach the agents in the feed's batches, so the barrier is the
    source topic committed by the feed to its end, then the feed committed to its end
    (``before`` is not used)."""
    await pub.publish_many(events)
    if barrier == SITE_FEED:
        source = topic_of(type(events[0])).name
        # the forwarder's own group on the source, then the agents' on the feed
        for name, group in ((source, feed_group("hashplane")), (SITE_FEED, "hashplane")):
            end = await records_on(bootstrap, name)
            await until(lambda name=name, end=end, group=group: committed_total_ge(
                bootstrap, name, end, group), 60, what=f"{group} committed {end} of {name}")
        return 0
    target = before + (len(events) if topic_of(type(events[0])).name == barrier else 0)
    await until(lambda: committed_total_ge(bootstrap, barrier, target), 60,
                what=f"agents committed {target} records of {barrier}")
    return target


async def records_on(bootstrap: str, topic_name: str) -> int:
    """How many records ``topic_name`` holds (the fetch high watermarks, which are exact
    on Tansu where ListOffsets is not)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic_name, p)
               for p in sorted(consumer.partitions_for_topic(topic_name) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total = 0
        for tp in tps:
            for _ in range(50):  # one fetch answers it, empty or not
                if consumer.highwater(tp) is not None:
                    break
                await consumer.getmany(tp, timeout_ms=200)
            total += consumer.highwater(tp) or 0
        return total
    finally:
        await consumer.stop()


async def committed_total_ge(bootstrap: str, topic_name: str, n: int,
                             group: str = "hashplane") -> bool:
    return await committed_total(bootstrap, group, topic_name) >= n


async def test_recorded_stream_yields_exactly_the_step_functions_commands(
        control_settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    s = control_settings
    fleet, feeds, dip, uplink = recorded()
    async with Publisher(s.kafka_bootstrap) as pub:
        await publish_phase(pub, s.kafka_bootstrap, list(fleet), SITE_FEED, 0)
        await publish_phase(pub, s.kafka_bootstrap, list(feeds), "power.readings", 0)
        await publish_phase(pub, s.kafka_bootstrap, list(dip), "grid.readings", 0)
        await publish_phase(pub, s.kafka_bootstrap, list(uplink), "uplink.status", 0)

    # What the pure functions say, folded in the same order.
    _, metrics = energy.fold([*fleet, *feeds, *dip], energy.params(s))
    _, sched = scheduler.fold([*fleet, *metrics], scheduler.params(s))
    _, switches = failover.fold([*fleet, *uplink], failover.FailoverParams(
        local_pool_url=s.local_pool_url, down_after=s.uplink_down_after,
        hold_down_s=s.uplink_hold_down_s, ttl_s=s.command_ttl_s))
    expected = sched + switches
    assert [type(c).__name__ for c in sched].count("SleepAsic") == 10  # 49.4 Hz: all off
    assert len(switches) == 10

    got = await consume(s.kafka_bootstrap, ["commands.asic", "commands.compute"],
                        len(expected))
    key = lambda c: str(c.command_id)  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
    # in the order decided: first the 49.7 Hz shed (to 20 kW), then the rest at 49.4 Hz
    first = [c for c in sched if c.ts == at(3)]
    assert len(first) == 4 and all("below-49.8Hz" in c.reason for c in first)

    alerts = await consume(s.kafka_bootstrap, ["alerts"], 2, settle_s=1.0)
    fired = {(a.rule, a.severity) for a in alerts if isinstance(a, AlertFired)}
    assert {("grid_frequency_low", "critical"), ("uplink_down", "critical")} <= fired
