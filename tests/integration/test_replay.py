"""Event sourcing end to end: a recorded scenario through the live Faust worker on a real
broker, every topic stored by the real sink in the real ClickHouse engine; then
``rebuild`` folds the stored log through the step functions and must give exactly the state
the live Faust tables hold (read from their changelog topics); ``replay`` re-publishes the
log into prefixed copies, record for record."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from api.live import consumer_lag
from schemas.commands import CapSiteLoad, CommandAcknowledged, SleepAsic, SwitchAsicPool
from schemas.events import HashpriceObserved, PowerPriceObserved
from schemas.registry import TOPICS
from schemas.settings import Settings
from streams.history import HistoryStore
from streams.progress import Progress
from streams.publish import Publisher
from streams.replay import SiteFold, read_log, rebuild, replay
from streams.sink import HistorySink
from streams.topics import SITE_FEED
from tests.conftest import until
from tests.integration.test_control_loop import at, consume, publish_phase, recorded

pytestmark = pytest.mark.integration

TABLES = ("scheduler_asics", "failover_home_pools", "alerts_firing", "energy_caps",
          "compute_gate", "profit_units")


async def changelog(bootstrap: str, app_id: str, table: str) -> dict[str, Any]:
    """A Faust table's live content: the last value per key of its changelog topic."""
    consumer = AIOKafkaConsumer(f"{app_id}-{table}-changelog", bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: dict[str, Any] = {}
    try:
        for _ in range(6):
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    out[json.loads(r.key)] = None if r.value is None else json.loads(r.value)
    finally:
        await consumer.stop()
    return {k: v for k, v in out.items() if v not in (None, False)}


async def test_rebuild_from_clickhouse_equals_the_live_faust_tables(
        control_settings: Settings, worker: subprocess.Popen[bytes],
        store: HistoryStore) -> None:
    s = control_settings
    fleet, feeds, dip, uplink = recorded()
    sink_stop = asyncio.Event()
    sink = asyncio.create_task(HistorySink(s, store).run(sink_stop))
    # the day-ahead price and the hashprice first: the energy agent's price state and the
    # profit agent's are rebuilt too (45/MWh: every miner pays, no price-driven command)
    prices = [PowerPriceObserved(site="site-1", device_id="price", ts=at(-30), source="rec",
                                 interval_start=at(-60), interval_end=at(3600),
                                 price_per_mwh=45.0, currency="USD"),
              HashpriceObserved(site="site-1", device_id="hashprice", ts=at(-30), source="rec",
                                hashprice_per_th_day=0.05, currency="USD")]
    async with Publisher(s.kafka_bootstrap) as pub:
        await publish_phase(pub, s.kafka_bootstrap, prices, "prices", 0)
        await publish_phase(pub, s.kafka_bootstrap, list(fleet), SITE_FEED, 0)
        await publish_phase(pub, s.kafka_bootstrap, list(feeds), "power.readings", 0)
        await publish_phase(pub, s.kafka_bootstrap, list(dip), "grid.readings", 0)
        await publish_phase(pub, s.kafka_bootstrap, list(uplink), "uplink.status", 0)
        commands = [c for c in await consume(s.kafka_bootstrap, ["commands.asic"], 20)
                    if isinstance(c, SleepAsic | SwitchAsicPool)]
        assert len(commands) == 20
        # the actuator's acks (applied), then an operator's load cap
        acks = [CommandAcknowledged(
            site=c.site, device_id=c.device_id, ts=c.ts + timedelta(seconds=1), source="rec",
            command_id=c.command_id, command_kind=c.kind, status="applied",
            detail="applied", latency_ms=200.0, actuator="actuator:asic") for c in commands]
        await publish_phase(pub, s.kafka_bootstrap, acks, SITE_FEED, 10)
        cap = CapSiteLoad(site="site-1", device_id="site-1", ts=at(20), source="api",
                          issued_at=at(20), expires_at=at(80), reason="test",
                          issued_by="operator:key-x", limit_kw=12.0, duration_s=3600)
        await publish_phase(pub, s.kafka_bootstrap, [cap], "commands.site", 0)
    # the worker has folded everything; the sink has stored every topic
    await until(lambda: lag_zero(s), 60, every_s=1, what="sink caught up")
    sink_stop.set()
    await sink

    live = {t: await changelog(s.kafka_bootstrap, s.app_id, t) for t in TABLES}
    assert len(live["scheduler_asics"]) == 10 and len(live["failover_home_pools"]) == 10
    assert live["energy_caps"] and live["alerts_firing"]
    assert live["energy_caps"]["site-1/price"]["hashprice"][0] == 0.05
    assert live["profit_units"]["site-1"]["intervals"] == [
        [at(-60).timestamp(), at(3600).timestamp(), 45.0, False]]

    bar = Progress("rebuild", stream=io.StringIO(), tty=False)
    fold = rebuild(store, s, at(-60), at(3600), progress=bar)
    assert fold.tables() == live
    assert bar.done == fold.events and bar.total is not None and bar.total >= fold.events

    # every stored record back out, in event-time order, into prefixed copies
    stored = list(read_log(store, at(-60), at(3600)))
    bar = Progress("replay", stream=io.StringIO(), tty=False)
    sent = await replay(store, s.kafka_bootstrap, at(-60), at(3600), prefix="replay.",
                        progress=bar)
    assert sent == len(stored) > 60
    assert bar.done == bar.total == sent
    copies = await raw_records(s.kafka_bootstrap, [f"replay.{t.name}" for t in TOPICS],
                               len(stored))
    assert sorted(copies) == sorted((f"replay.{t}", d, p) for t, d, p in stored)


async def raw_records(bootstrap: str, topics: list[str], n: int) -> list[tuple[str, str, bytes]]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[tuple[str, str, bytes]] = []
    try:
        for _ in range(100):
            for tp, records in (await consumer.getmany(timeout_ms=300)).items():
                got += [(tp.topic, r.key.decode(), r.value) for r in records]
            if len(got) >= n:
                await asyncio.sleep(1.0)  # and nothing more arrives
                for tp, records in (await consumer.getmany(timeout_ms=300)).items():
                    got += [(tp.topic, r.key.decode(), r.value) for r in records]
                break
    finally:
        await consumer.stop()
    return got


async def lag_zero(s: Settings) -> bool:
    lag = await consumer_lag(s.kafka_bootstrap, [s.sink_group])
    return bool(lag) and not any(lag.values())


def test_the_fold_routes_like_the_agents() -> None:
    fleet, feeds, dip, uplink = recorded()
    fold = SiteFold(Settings(energy_emit_s=0.0))
    for e in [*fleet, *feeds, *dip, *uplink]:
        fold.feed(e)
    t = fold.tables()
    assert set(t["failover_home_pools"].values()) == {"stratum+tcp://pool.example:3333"}
    assert any(k.startswith("site-1/uplink_down") for k in t["alerts_firing"])
