"""Meter (pymodbus client), feeds (aiomqtt on a real broker), uplink, scenarios."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient

from sim.farm import Farm
from sim.meter import REGISTERS, decode_float


async def read_meter(farm: Farm) -> dict[str, float]:
    client = AsyncModbusTcpClient(farm.meter.host, port=farm.meter.port)
    await client.connect()
    try:
        rr = await client.read_holding_registers(0, count=16)
        assert not rr.isError()
        return {name: decode_float(rr.registers[a:a + 2]) for name, a in REGISTERS.items()}
    finally:
        client.close()


async def test_meter_register_map_over_modbus_tcp(farm: Farm) -> None:
    v = await read_meter(farm)
    assert v["nominal_hz"] == 50.0 and abs(v["frequency_hz"] - 50.0) < 0.1
    assert 380 < v["voltage_v"] < 420 and 0.9 < v["power_factor"] <= 1.0
    assert v["active_power_kw"] == pytest.approx(farm.load_kw(), rel=0.02)
    assert v["current_a"] > 0 and v["reactive_power_kvar"] > 0


async def test_meter_answers_modbus_exceptions_like_the_device(farm: Farm) -> None:
    client = AsyncModbusTcpClient(farm.meter.host, port=farm.meter.port)
    await client.connect()
    try:
        past = await client.read_holding_registers(14, count=4)  # 14..17: past the map
        assert past.isError() and past.exception_code == 2  # illegal data address
        write = await client.write_register(0, 1234)
        assert write.isError()
        coils = await client.read_coils(0, count=1)
        assert coils.isError() and coils.exception_code == 2
        ok = await client.read_input_registers(0, count=2)  # the mirror still answers
        assert not ok.isError() and abs(decode_float(ok.registers) - 50.0) < 0.1
    finally:
        client.close()


async def test_grid_dip_scenario_moves_the_meter_frequency(farm: Farm) -> None:
    farm.clock.speed = 20.0
    task = asyncio.create_task(farm.run_scenario("grid-dip"))
    low = 50.0
    for _ in range(60):
        await asyncio.sleep(0.1)
        low = min(low, (await read_meter(farm))["frequency_hz"])
        if low < 49.45:
            break
    assert low < 49.5, "frequency never fell below 49.5 Hz"
    await asyncio.wait_for(task, 10)
    assert [e["what"] for e in farm.events] == ["frequency falls to 49.4 Hz",
                                                "frequency recovers"]


async def test_feed_sensors_publish_over_mqtt_and_supply_drop_cuts_capacity(farm: Farm) -> None:
    c = farm.config
    topics = [f.topic(c.site) for f in farm.feeds]
    seen: dict[str, dict] = {}  # type: ignore[type-arg]
    async with aiomqtt.Client(c.mqtt_host, c.mqtt_port) as client:
        for t in topics:
            await client.subscribe(t)

        async def collect(n: int) -> None:
            async for msg in client.messages:
                seen[str(msg.topic)] = json.loads(msg.payload)  # type: ignore[arg-type]
                if len(seen) == n:
                    return

        await asyncio.wait_for(collect(len(topics)), 10)
        a = seen[topics[0]]
        assert set(a) == {"voltage_v", "current_a", "power_kw", "capacity_kw", "ts"}
        assert a["power_kw"] > 0 and a["capacity_kw"] == farm.feed_capacity0["feed-a"]
        total = sum(v["power_kw"] for v in seen.values())
        assert total == pytest.approx(farm.load_kw(), rel=0.05)

        # The supply-drop scenario, accelerated: the sensor reports the reduced capacity
        # while it lasts and the full one afterwards.
        farm.clock.speed = 20.0
        scenario = asyncio.create_task(farm.run_scenario("supply-drop"))
        caps: list[float] = []

        async def watch() -> None:
            async for msg in client.messages:
                if str(msg.topic) == topics[0]:
                    caps.append(json.loads(msg.payload)["capacity_kw"])  # type: ignore[arg-type]
                if scenario.done() and caps and caps[-1] == farm.feed_capacity0["feed-a"]:
                    return

        await asyncio.wait_for(watch(), 20)
        full = farm.feed_capacity0["feed-a"]
        assert any(c == pytest.approx(0.6 * full) for c in caps)
        assert caps[-1] == full


async def test_supply_drop_reports_the_reduced_capacity(farm: Farm) -> None:
    from sim.scenarios import SCENARIOS

    SCENARIOS["supply-drop"][0].action(farm)
    assert farm.feeds[0].capacity_kw == pytest.approx(0.6 * farm.feed_capacity0["feed-a"])
    SCENARIOS["supply-drop"][1].action(farm)
    assert farm.feeds[0].capacity_kw == farm.feed_capacity0["feed-a"]


async def test_uplink_outage_cuts_the_check_endpoint_and_the_upstream_pool(farm: Farm) -> None:
    url = farm.endpoints()["uplink"]["url"]
    async with httpx.AsyncClient(timeout=2) as client:
        assert (await client.get(url)).status_code == 204
        await farm.set_uplink(False)
        with pytest.raises(httpx.ConnectError):
            await client.get(url)
        with pytest.raises(OSError):
            await asyncio.open_connection(farm.pool.host, farm.pool.port)
        from tests.sim.test_asic_rpc import cmd

        pools = (await cmd(farm.asics[0].host, "pools"))["POOLS"]
        assert pools[0]["Status"] == "Dead" and pools[0]["Stratum Active"] is False
        await farm.set_uplink(True)
        assert (await client.get(url)).status_code == 204
        pools = (await cmd(farm.asics[0].host, "pools"))["POOLS"]
        assert pools[0]["Status"] == "Alive" and pools[0]["Stratum Active"] is True
