"""RainbowMiner rigs and their NVML, the seed-002 coordinator, the seed-004 endpoints,
each over real HTTP with httpx."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import httpx
import pytest

from sim.farm import Farm
from sim.rainbowminer import REJECT_RESTART_RATIO


async def test_rig_api_has_rainbowminer_fields(farm: Farm) -> None:
    rig = farm.endpoints()["rigs"][0]
    async with httpx.AsyncClient(base_url=rig["api_url"]) as c:
        devices = (await c.get("/devices")).json()
        assert [d["Name"] for d in devices] == ["GPU#00", "GPU#01"]
        data = devices[0]["Data"]
        assert set(data) >= {"Temperature", "PowerDraw", "PowerLimit", "Clock", "ClockMem",
                             "FanSpeed"}
        miners = (await c.get("/activeminers")).json()
        m = miners[0]
        for key in ("Name", "BaseName", "DeviceName", "Algorithm", "Speed", "Speed_Live",
                    "PowerDraw", "Stratum", "RejectedShareRatio"):
            assert key in m, key
        assert set(m["Stratum"][0]) == {"Accepted", "Rejected", "Stale"}
        assert m["Speed"][0] > 150e6  # two RTX 3090 at ~103 MH/s each, in H/s
        stats = (await c.get("/minerstats")).json()
        assert [s["Device"] for s in stats] == ["GPU#00", "GPU#01"]
        assert {"Speed", "Speed_Live", "PowerDraw", "Stratum", "RejectedShareRatio",
                "Data"} <= set(stats[0])


async def test_oc_profile_applies_on_miner_restart_like_rainbowminer(farm: Farm) -> None:
    rig = farm.rigs[0]
    g = rig.gpus[1]
    cfg = rig.config_dir
    model = g.card.model_key
    profiles = json.loads((cfg / "ocprofiles.config.txt").read_text())
    # RainbowMiner's per-card profile: "<Name>-GPU#01" (the other card has no entry: nothing)
    profiles["hp-GPU#01"] = {"PowerLimit": 80, "MemoryClockBoost": "900",
                             "CoreClockBoost": "-100", "ThermalLimit": 0}
    (cfg / "ocprofiles.config.txt").write_text(json.dumps(profiles))
    rig.tick(farm.t(), farm.clock.now())
    assert g.s.mem_offset_mhz == 0  # an unassigned profile changes nothing

    miners = json.loads((cfg / "miners.config.txt").read_text())
    miners[f"TRex-{model}"] = [{"MainAlgorithm": "Etchash", "OCprofile": "hp",
                                "Params": "-i 20"}]
    tmp = cfg / "miners.config.txt.tmp"
    tmp.write_text(json.dumps(miners))
    os.replace(tmp, cfg / "miners.config.txt")
    restarts = rig.restarts
    rig.tick(farm.t() + 0.5, farm.clock.now())
    assert rig.restarts == restarts + 1  # changed miner config restarts the miner
    assert (g.s.mem_offset_mhz, g.s.core_offset_mhz, g.s.intensity) == (900, -100, 20)
    assert g.s.power_limit_w == pytest.approx(0.8 * g.card.pl_default_w)
    assert rig.gpus[0].s.mem_offset_mhz == 0  # the other card is untouched
    async with httpx.AsyncClient(base_url=rig.api_url) as c:
        dev = (await c.get("/devices")).json()[1]["Data"]
        assert dev["ClockMem"] == round(g.card.mem_clock_mhz + 900)
        # A profile value change alone waits for an OC reset (/applyoc).
        profiles["hp-GPU#01"]["MemoryClockBoost"] = "700"
        (cfg / "ocprofiles.config.txt").write_text(json.dumps(profiles))
        await asyncio.sleep(0.05)
        rig.tick(farm.t() + 1, farm.clock.now())
        assert g.s.mem_offset_mhz == 900
        assert "OC will be applied" in (await c.get("/applyoc")).text
        assert g.s.mem_offset_mhz == 700
    assert "Start miner TRex" in rig.log_path.read_text()


async def test_broken_config_file_keeps_the_last_good_settings(farm: Farm) -> None:
    rig = farm.rigs[0]
    (rig.config_dir / "miners.config.txt").write_text("{ not json")
    rig.tick(farm.t() + 1, farm.clock.now())
    assert rig.gpus[0].s.mem_offset_mhz == 0
    assert "could not be read" in rig.log_path.read_text()


async def test_reject_watchdog_restarts_and_logs(farm: Farm) -> None:
    rig = farm.rigs[1]
    g = rig.gpus[0]
    g.accepted, g.rejected = 80, 20
    assert g.rejected / 100 > REJECT_RESTART_RATIO
    rig.tick(farm.t() + 0.1, farm.clock.now())
    assert "too many rejected shares on GPU#00" in rig.log_path.read_text()
    assert g.accepted + g.rejected < 100


async def test_nvml_over_http_sets_power_limit_and_clamps(farm: Farm) -> None:
    rig = farm.endpoints()["rigs"][1]  # RTX 4090: 150..600 W
    async with httpx.AsyncClient(base_url=rig["nvml_url"]) as c:
        r = await c.post("/devices/0/power-limit", json={"watts": 300})
        assert r.status_code == 200 and r.json()["power_limit_w"] == 300
        r = await c.post("/devices/0/power-limit", json={"watts": 900})
        assert r.status_code == 422 and "INVALID_ARGUMENT" in r.json()["detail"]
        assert (await c.post("/devices/9/power-limit", json={"watts": 300})).status_code == 404
        r = await c.post("/devices/1/clock-offsets", json={"core_mhz": 100, "mem_mhz": 1200})
        assert r.status_code == 200
        assert r.json()["mem_clock_mhz"] == 10501 + 1200
        assert (await c.post("/devices/1/clock-offsets", json={"core_mhz": "x",
                                                                "mem_mhz": 0})).status_code == 422


async def test_coordinator_api_v1(farm: Farm) -> None:
    ep = farm.endpoints()["coordinator"]
    auth = {"Authorization": f"Bearer {ep['api_key']}"}
    async with httpx.AsyncClient(base_url=ep["url"]) as c:
        r = await c.post("/v1/miner/heartbeat", json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        r = await c.post("/v1/miner/heartbeat", json={}, headers={"Authorization": "Bearer no"})
        assert r.status_code == 403 and set(r.json()["error"]) == {"code", "message", "details"}
        r = await c.post("/v1/miner/heartbeat", headers=auth,
                         json={"miner_id": "m1", "wallet": "w1", "mode": "quantum"})
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "mode"
        r = await c.post("/v1/miner/heartbeat", headers=auth, content=b"{bad")
        assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_JSON"
        r = await c.get("/v1/miner/next", params={"miner": "m1"}, headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "UNKNOWN_MINER"
        hb = {"miner_id": "m1", "wallet": "w1", "mode": "cpu", "gpu": False}
        assert (await c.post("/v1/miner/heartbeat", json=hb, headers=auth)).status_code == 200
        job = (await c.get("/v1/miner/next", params={"miner": "m1"}, headers=auth)).json()
        assert job["workload"] == "torch_bench" and job["id"].startswith("job-")
        proof = {"id": job["id"], "miner_id": "m1", "mode": "cpu", "output_sha": "a" * 64,
                 "metrics": {"seconds": 1.0}}
        key = {"Idempotency-Key": str(uuid.uuid4()), **auth}
        first = await c.post("/v1/miner/proof", json=proof, headers=key)
        again = await c.post("/v1/miner/proof", json=proof, headers=key)
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json() and again.headers["Idempotent-Replayed"] == "true"
        conflict = await c.post("/v1/miner/proof", json={**proof, "output_sha": "b" * 64},
                                headers=key)
        assert conflict.status_code == 409
        dup = await c.post("/v1/miner/proof", json=proof, headers=auth)
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "ALREADY_SUBMITTED"
        r = await c.post("/v1/miner/proof", json={**proof, "id": "job-999999"}, headers=auth)
        assert r.status_code == 404
        bal = (await c.get("/v1/wallet/balance", params={"wallet": "w1"}, headers=auth)).json()
        assert bal == {"wallet": "w1", "balance": 1.0}  # credited once despite the replay


async def test_model_endpoints_seed004(farm: Farm) -> None:
    ep = farm.endpoints()["model_endpoints"][0]
    async with httpx.AsyncClient(base_url=ep["url"]) as c:
        h = (await c.get("/health")).json()
        assert h["status"] == "healthy" and h["model_loaded"] is True
        info = (await c.get("/info")).json()
        assert info["model_name"] == ep["name"] and "max_context_length" in info
        right = 0
        for _ in range(10):
            r = await c.post("/api/chat", json={"prompt": "What is 17 + 25?", "max_tokens": 20})
            if r.status_code == 200:
                body = r.json()
                assert {"response", "model", "timestamp", "processing_time"} <= set(body)
                right += "42" in body["response"]
        assert right >= 6  # quality 0.95 minus the failure rate
        assert (await c.post("/api/chat", json={"prompt": ""})).status_code == 400
        assert (await c.post("/api/chat", content=b"nope")).status_code == 400
        farm.models[0].down = True
        assert (await c.get("/health")).status_code == 503
