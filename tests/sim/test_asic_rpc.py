"""Simulated ASICs over the CGMiner RPC, read by an independent client: pyasic."""

from __future__ import annotations

import asyncio
import json

import pyasic
import pytest

from sim.asic import SLEEP_W
from sim.farm import Farm


async def rpc(host: str, request: bytes | str) -> bytes:
    reader, writer = await asyncio.open_connection(host, 4028)
    writer.write(request.encode() if isinstance(request, str) else request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def cmd(host: str, command: str, parameter: str | None = None) -> dict:  # type: ignore[type-arg]
    body = {"command": command, **({"parameter": parameter} if parameter else {})}
    raw = await rpc(host, json.dumps(body))
    assert raw.endswith(b"\x00")
    return json.loads(raw[:-1])  # type: ignore[no-any-return]


async def test_pyasic_identifies_luxos_and_reads_hashrate_pools_temperatures(farm: Farm) -> None:
    a = farm.asics[3]  # S21 in the mix
    miner = await pyasic.get_miner(a.host)
    assert miner is not None and "LuxOS" in str(miner) and "S21" in str(miner)
    data = await miner.get_data()
    assert float(data.hashrate) == pytest.approx(200.0, rel=0.05)  # TH/s
    assert data.wattage == pytest.approx(3500, rel=0.02)
    assert data.wattage_limit == 3500
    assert len(data.hashboards) == 3 and all(40 < hb.chip_temp < 100 for hb in data.hashboards)
    assert all(20 < hb.temp < hb.chip_temp for hb in data.hashboards)
    assert [p.url.port for p in data.pools] == [farm.pool.port] and data.pools[0].active
    assert len(data.fans) == 4 and all(f.speed > 1000 for f in data.fans)


async def test_sleep_wake_and_power_target_through_pyasic(farm: Farm) -> None:
    a = farm.asics[0]  # S19j Pro
    miner = await pyasic.get_miner(a.host)
    assert await miner.stop_mining()
    assert a.state == "sleeping"
    power = (await cmd(a.host, "power"))["POWER"][0]["Watts"]
    assert power == pytest.approx(SLEEP_W, abs=1)
    assert await miner.resume_mining()
    assert a.state == "waking"
    assert await miner.set_power_limit(2800)
    assert a.current_profile().watts <= 2800
    cfg = await cmd(a.host, "config")
    assert cfg["CONFIG"][0]["Profile"] == a.profile != "default"


async def test_multicommand_and_cgminer_summary_fields(farm: Farm) -> None:
    host = farm.asics[1].host
    reply = await cmd(host, "summary+pools+devs+stats+version")
    assert set(reply) >= {"summary", "pools", "devs", "stats", "version", "id"}
    s = reply["summary"][0]["SUMMARY"][0]
    for key in ("MHS av", "MHS 5s", "MHS 1m", "Accepted", "Rejected", "Stale",
                "Hardware Errors", "Difficulty Accepted", "Difficulty Rejected", "Elapsed"):
        assert key in s, key
    p = reply["pools"][0]["POOLS"][0]
    for key in ("URL", "Status", "Stratum Active", "Accepted", "Rejected", "Stale", "User"):
        assert key in p, key
    assert reply["version"][0]["VERSION"][0]["Type"] == farm.asics[1].model.type
    # cgminer's plain-text request form works too
    plain = json.loads((await rpc(host, "summary|"))[:-1])
    assert plain["STATUS"][0]["STATUS"] == "S"


@pytest.mark.parametrize(("request_", "code", "msg"), [
    (b"{not json", 23, "Invalid JSON"),
    (b'{"parameter": "0"}', 23, "Missing JSON 'command'"),
    (b'{"command": "selfdestruct"}', 14, "Invalid command"),
    (b'{"command": "switchpool"}', 15, "Missing pool id"),
    (b'{"command": "switchpool", "parameter": "7"}', 13, "Invalid pool id 7"),
    (b'{"command": "switchpool", "parameter": "x"}', 13, "Invalid pool id"),
    (b'{"command": "curtail", "parameter": "nosession,sleep"}', 110, "Invalid session"),
    (b'{"command": "addpool", "parameter": ""}', 109, "Missing addpool"),
    (b'{"command": "disablepool", "parameter": "0"}', 45, "last active pool"),
    (b"\x00\x00", 23, "Invalid JSON"),
])
async def test_malformed_requests_get_status_e_not_a_hang(farm: Farm, request_: bytes, code: int,
                                                          msg: str) -> None:
    raw = await rpc(farm.asics[2].host, request_)
    reply = json.loads(raw.rstrip(b"\x00"))
    status = reply["STATUS"][0]
    assert status["STATUS"] == "E" and status["Code"] == code and msg in status["Msg"]


async def test_pool_commands_and_real_stratum_session_on_switch(farm: Farm) -> None:
    from connectors.stratum_pool import StratumPool

    local = StratumPool("127.0.0.1", difficulty=2.0**-24)  # a target the sim reaches
    await local.start()
    farm.clock.speed = 60.0  # accelerate share production for the test
    try:
        a = farm.asics[2]
        added = await cmd(a.host, "addpool", f"{local.url},site.asic3,x")
        assert added["STATUS"][0]["STATUS"] == "S"
        await cmd(a.host, "switchpool", "1")
        for _ in range(50):
            await asyncio.sleep(0.2)
            if local.stats.accepted >= 3:
                break
        assert local.stats.by_worker["site.asic3"][0] >= 3  # the pool really got shares
        pools = (await cmd(a.host, "pools"))["POOLS"]
        assert pools[0]["URL"] == local.url and pools[0]["Stratum Active"] is True
        assert pools[0]["Accepted"] >= 3
        await cmd(a.host, "disablepool", "0")
        pools = (await cmd(a.host, "pools"))["POOLS"]
        assert pools[0]["Status"] == "Disabled" and pools[1]["Stratum Active"] is True
    finally:
        await local.stop()


async def test_crash_scenario_stops_answering_and_restart_resets_counters(farm: Farm) -> None:
    a = farm.asics[0]
    a.accepted = 500
    a.set_offline(farm.t())
    assert await rpc(a.host, '{"command": "summary"}') == b""
    a.restart(farm.t())
    s = (await cmd(a.host, "summary"))["SUMMARY"][0]
    assert s["Accepted"] < 500 and s["Elapsed"] <= 1 and a.state == "waking"
