"""The ASIC actuator against simulated LuxOS miners over real sockets, and its command
consumer on a real broker (one ack per command, duplicates and expiry)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from connectors.asic_actuator import SOURCE, AsicActuator, SafetyLimits
from connectors.base import Emitter
from connectors.cgminer import AsicEndpoint
from connectors.commands import CommandConsumer
from schemas.commands import (
    CommandAcknowledged,
    SetAsicPowerTarget,
    SleepAsic,
    SwitchAsicPool,
    WakeAsic,
)
from sim.farm import Farm
from streams.broker import EmbeddedBroker
from streams.codec import decode
from streams.publish import Publisher
from tests.sim.conftest import farm_config


@pytest.fixture
async def farm(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = Farm(farm_config(tmp_path, asics=4, gpu_rigs=0, model_endpoints=0, speed=60.0))
    await f.start()
    yield f
    await f.stop()


def endpoints(farm: Farm) -> list[AsicEndpoint]:
    return [AsicEndpoint(a["id"], a["host"], a["port"]) for a in farm.endpoints()["asics"]]


def command(kind: Any, device: str, ttl_s: float = 30, **kw: Any) -> Any:
    now = datetime.now(UTC)
    return kind(site="site-1", device_id=device, ts=now, source="test", issued_at=now,
                expires_at=now + timedelta(seconds=ttl_s), reason="test", issued_by="test", **kw)


async def test_sleep_wake_power_target_and_pool_switch_reach_the_miner(farm: Farm) -> None:
    act = AsicActuator(endpoints(farm))
    dev = "asic-00001"
    asic = farm.asics[0]
    assert await act(command(SleepAsic, dev)) == ("applied", "Curtail sleep")
    assert asic.state == "sleeping"
    status, _ = await act(command(WakeAsic, dev))
    assert status == "applied" and asic.state in ("waking", "running")

    watts = sorted(p.watts for p in asic.profiles.values())
    status, detail = await act(command(SetAsicPowerTarget, dev, power_target_w=watts[1] + 1))
    assert status == "applied" and asic.current_profile().watts == watts[1], detail

    local = "stratum+tcp://127.0.0.1:3333"
    status, detail = await act(command(SwitchAsicPool, dev, pool_url=local))
    assert status == "applied", detail
    assert asic.pools[0].url == local and asic.pools[0].user == "hashplane.asic00001"
    home = asic.pools[1].url
    status, _ = await act(command(SwitchAsicPool, dev, pool_url=home))  # already configured
    assert status == "applied" and asic.pools[0].url == home and len(asic.pools) == 2


async def test_refusals_are_typed_rejections_and_transport_errors_failures(farm: Farm) -> None:
    eps = [*endpoints(farm), AsicEndpoint("ghost", "127.0.0.1", 9)]  # nothing listens on :9
    act = AsicActuator(eps, timeout_s=1.0, limits=SafetyLimits(
        min_power_w=1000, max_power_w=4000, maintenance=frozenset({"asic-00004"})))
    status, detail = await act(command(SetAsicPowerTarget, "asic-00001", power_target_w=9000))
    assert status == "rejected" and "safety band" in detail
    status, detail = await act(command(SetAsicPowerTarget, "asic-00001", power_target_w=1100))
    assert status == "rejected" and "no profile at or under" in detail
    farm.asics[1].atm_enabled = True
    status, detail = await act(command(SetAsicPowerTarget, "asic-00002", power_target_w=3900))
    assert status == "rejected" and "ATM" in detail  # the miner's own refusal, worded
    assert (await act(command(SleepAsic, "asic-00004")))[0] == "rejected"  # maintenance
    assert farm.asics[3].state == "running"
    assert (await act(command(SleepAsic, "nobody")))[0] == "rejected"
    status, detail = await act(command(SleepAsic, "ghost"))
    assert status == "failed" and "127.0.0.1:9" in detail


async def test_an_open_session_is_reused_not_fought(farm: Farm) -> None:
    farm.apis[farm.asics[0].host].session_id = "deadbeef"  # another tool left one open
    act = AsicActuator(endpoints(farm))
    assert (await act(command(SleepAsic, "asic-00001")))[0] == "applied"


async def test_consumer_acks_every_command_exactly_once(farm: Farm, tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log")
    await broker.start()
    try:
        from streams.topics import ensure_topics

        await ensure_topics(broker.bootstrap)
        act = AsicActuator(endpoints(farm))
        async with Publisher(broker.bootstrap) as pub:
            consumer = CommandConsumer(
                broker.bootstrap, "commands.asic", "test-actuator", act.targets, act,
                Emitter(pub, source=SOURCE, site="site-1"), actuator=SOURCE, concurrency=8,
                timeout_s=5.0, own_all=True)
            sleeps = [command(SleepAsic, f"asic-0000{i}") for i in range(1, 5)]
            stale = command(SleepAsic, "asic-00001", ttl_s=0.001)
            await asyncio.sleep(0.01)
            unknown = command(WakeAsic, "asic-99999")
            await pub.publish_many([*sleeps, sleeps[0], stale, unknown])
            await pub.send_raw("commands.asic", b"{garbage", key=b"asic-00001")
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.run(stop))
            acks = await consume_acks(broker.bootstrap, 6)
            stop.set()
            await task
        by_id = {str(a.command_id): a for a in acks}
        assert len(acks) == 6 == len(by_id)  # the duplicate was not acked twice
        assert {by_id[str(c.command_id)].status for c in sleeps} == {"applied"}
        assert by_id[str(stale.command_id)].status == "expired"
        assert by_id[str(unknown.command_id)].status == "rejected"
        assert all(a.latency_ms >= 0 and a.actuator == SOURCE for a in acks)
        assert all(a.state == "sleeping" for a in farm.asics)
    finally:
        await broker.stop()


async def consume_acks(bootstrap: str, n: int) -> list[CommandAcknowledged]:
    c = AIOKafkaConsumer("commands.acks", bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest")
    await c.start()
    got: list[CommandAcknowledged] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        settle = None
        while loop.time() < deadline and (settle is None or loop.time() < settle):
            batch = await c.getmany(timeout_ms=200)
            for records in batch.values():
                got += [decode("commands.acks", r.value) for r in records]  # type: ignore[misc]
            if settle is None and len(got) >= n:
                settle = loop.time() + 1.5  # anything extra would show now
    finally:
        await c.stop()
    return got


async def test_the_session_is_kept_and_renewed_when_the_miner_drops_it(farm: Farm) -> None:
    act = AsicActuator(endpoints(farm))
    api = farm.apis[farm.asics[0].host]
    assert (await act(command(SleepAsic, "asic-00001")))[0] == "applied"
    first = api.session_id
    assert first and act.sessions[farm.asics[0].host] == first  # kept for the next command
    api.session_id = ""  # the miner rebooted or timed the session out
    assert (await act(command(WakeAsic, "asic-00001")))[0] == "applied"
    assert api.session_id and api.session_id != first
