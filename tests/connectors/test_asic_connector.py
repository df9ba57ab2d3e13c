"""The ASIC telemetry connector against simulated miners over real sockets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.base import Emitter, ListSink
from connectors.cgminer import AsicEndpoint, AsicTelemetry
from schemas.events import AsicTelemetryObserved, RecordDeadLettered, ShareCountsObserved
from sim.farm import Farm
from tests.sim.conftest import farm_config


@pytest.fixture
async def fast_farm(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = Farm(farm_config(tmp_path, asics=4, gpu_rigs=0, model_endpoints=0, speed=120.0))
    await f.start()
    yield f
    await f.stop()


def endpoints(farm: Farm) -> list[AsicEndpoint]:
    return [AsicEndpoint(a["id"], a["host"], a["port"]) for a in farm.endpoints()["asics"]]


async def test_sweeps_publish_telemetry_then_share_deltas(fast_farm: Farm) -> None:
    sink = ListSink()
    now = [datetime.now(UTC)]  # the connector's clock: an input, moved by the test
    conn = AsicTelemetry(endpoints(fast_farm), Emitter(sink, source="connector:asic",
                                                       site="site-1", clock=lambda: now[0]))
    assert await conn.sweep() == 4
    first = list(sink.events)
    assert [type(e) for e in first] == [AsicTelemetryObserved] * 4  # baseline, no deltas
    assert {e.model for e in first} >= {"Antminer S19j Pro"}  # type: ignore[attr-defined]
    await asyncio.sleep(1.0)  # two simulated minutes
    now[0] += timedelta(seconds=1.0)
    sink.events.clear()
    await conn.sweep()
    shares = [e for e in sink.events if isinstance(e, ShareCountsObserved)]
    assert len(shares) == 4 and all(s.accepted > 0 and not s.counter_reset for s in shares)
    assert shares[0].worker == "hashplane.asic00001"
    assert shares[0].interval_s == 1.0  # event time at the source (its clock)

    # A miner restarts: the next delta counts from zero, flagged, never negative.
    fast_farm.asics[1].restart(fast_farm.t())
    await asyncio.sleep(0.3)
    sink.events.clear()
    await conn.sweep()
    d = next(e for e in sink.events if isinstance(e, ShareCountsObserved)
             and e.device_id == "asic-00002")
    assert d.counter_reset and d.accepted >= 0


async def test_unreachable_and_garbage_devices_do_not_stop_the_sweep(fast_farm: Farm) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"<html>500 Internal Server Error</html>\x00")
        await writer.drain()
        writer.close()

    bad = await asyncio.start_server(garbage, "127.0.0.1", 0)
    bad_port = bad.sockets[0].getsockname()[1]
    sink = ListSink()
    eps = [*endpoints(fast_farm), AsicEndpoint("asic-garbage", "127.0.0.1", bad_port),
           AsicEndpoint("asic-gone", "127.0.0.1", 1)]
    emitter = Emitter(sink, source="connector:asic", site="site-1")
    conn = AsicTelemetry(eps, emitter, timeout_s=1.0)
    assert await conn.sweep() == 4
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert len(dead) == 1 and dead[0].device_id == "asic-garbage"
    assert "not CGMiner JSON" in dead[0].reason and dead[0].source_topic.startswith("cgminer://")
    assert emitter.stats.dlq == 1 and emitter.stats.errors == 1
    assert conn.unreachable == {"asic-gone": 1}
    bad.close()


async def test_sleeping_miner_reads_sleeping_with_near_zero_power(fast_farm: Farm) -> None:
    fast_farm.asics[0].sleep(fast_farm.t())
    sink = ListSink()
    conn = AsicTelemetry(endpoints(fast_farm)[:1], Emitter(sink, source="c", site="s"))
    await conn.sweep()
    tel = sink.events[0]
    assert isinstance(tel, AsicTelemetryObserved)
    assert tel.state == "sleeping" and tel.power_w < 20 and tel.hashrate_ths == 0
