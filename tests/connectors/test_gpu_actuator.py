"""The GPU actuator against a simulated RainbowMiner rig: its Config/ files, its API and its
NVML over HTTP, as on a real rig host."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.gpu_actuator import GpuActuator, GpuLimits, Rig, update_json
from connectors.gpu_telemetry import HttpNvmlBackend
from schemas.commands import ApplyGpuProfile, SleepAsic
from sim.farm import Farm
from tests.sim.conftest import farm_config


@pytest.fixture
async def farm(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = Farm(farm_config(tmp_path, asics=0, gpu_rigs=1, gpus_per_rig=2, model_endpoints=0))
    await f.start()
    yield f
    await f.stop()


def actuator(farm: Farm, **kw: Any) -> tuple[GpuActuator, Path]:
    ep = farm.endpoints()["rigs"][0]
    rig = Rig(ep["id"], Path(ep["config_dir"]), ep["api_url"], HttpNvmlBackend(ep["nvml_url"]))
    return GpuActuator([rig], **kw), Path(ep["config_dir"])


def command(**kw: Any) -> ApplyGpuProfile:
    now = datetime.now(UTC)
    where = {"rig_id": "rig01", "gpu_index": 1, **kw}
    return ApplyGpuProfile(site="site-1", device_id="rig01-gpu1", ts=now, source="test",
                           issued_at=now, expires_at=now + timedelta(seconds=30),
                           reason="test", issued_by="test", **where)


async def test_profile_reaches_the_card_through_rainbowminer_files(farm: Farm) -> None:
    act, cfg = actuator(farm)
    rig = farm.rigs[0]
    gpu, model = rig.gpus[1], rig.gpus[1].card.model_key
    default = gpu.card.pl_default_w
    status, detail = await act(command(power_limit_w=default * 0.8, core_offset_mhz=100,
                                       mem_offset_mhz=1000))
    assert status == "applied", detail
    assert gpu.s.power_limit_w == pytest.approx(default * 0.8, abs=default * 0.01)
    assert (gpu.s.core_offset_mhz, gpu.s.mem_offset_mhz) == (100, 1000)
    assert rig.gpus[0].s.power_limit_w == gpu.card.pl_default_w  # the other card
    profiles = json.loads((cfg / "ocprofiles.config.txt").read_text())
    # the model's default profile is RainbowMiner's first ("Profile1"); the card's own
    # entry under that name, in RainbowMiner's types
    own = profiles["Profile1-GPU#01"]
    assert (own["PowerLimit"], own["CoreClockBoost"], own["MemoryClockBoost"]) == (
        80, "100", "1000")
    assert profiles[f"Profile1-{model}"]["PowerLimit"] == 0  # the model's kept as it was
    devices = json.loads((cfg / "devices.config.txt").read_text())
    assert set(devices) == {model} and devices[model]["DefaultOCprofile"] == ""  # untouched
    assert rig.applied_profile[1] == "Profile1" and "Profile1-GPU#01 on rig01" in detail


async def test_keys_rainbowminer_does_not_read_change_nothing(farm: Farm) -> None:
    """What the actuator used to write (a GPU#01 device entry, a TRex-GPU#01 miner): the
    simulated rig, like RainbowMiner, ignores it."""
    import asyncio

    act, cfg = actuator(farm)
    rig, gpu = farm.rigs[0], farm.rigs[0].gpus[1]
    before = (gpu.s.power_limit_w, gpu.s.mem_offset_mhz, gpu.s.intensity)
    update_json(cfg / "ocprofiles.config.txt", lambda d: d.update(
        {"hashplane-GPU01": {"PowerLimit": 60, "MemoryClockBoost": "900"}}))
    update_json(cfg / "devices.config.txt", lambda d: d.update(
        {"GPU#01": {"DefaultOCprofile": "hashplane-GPU01"}}))
    update_json(cfg / "miners.config.txt", lambda d: d.update(
        {"TRex-GPU#01": [{"MainAlgorithm": "Etchash", "Params": "-i 10"}]}))
    await asyncio.sleep(0.01)
    rig.poll_config(1.0)
    rig.apply_oc(1.0)
    assert (gpu.s.power_limit_w, gpu.s.mem_offset_mhz, gpu.s.intensity) == before
    assert (await act(command(mem_offset_mhz=800)))[0] == "applied"  # the right keys work
    assert gpu.s.mem_offset_mhz == 800


async def test_intensity_goes_to_the_models_miner_entry_and_restarts_the_miner(
        farm: Farm) -> None:
    act, cfg = actuator(farm)
    rig = farm.rigs[0]
    model = rig.gpus[1].card.model_key
    restarts = rig.restarts
    status, detail = await act(command(intensity=30))
    assert status == "applied" and "intensity 30 clamped to 25" in detail
    assert f"every {model} on the rig" in detail and "the miner restarts" in detail
    miners = json.loads((cfg / "miners.config.txt").read_text())
    assert miners[f"TRex-{model}"][0]["Params"] == "-i 25"
    assert not [k for k in miners if "GPU#" in k]
    assert rig.gpus[1].s.intensity == 25 and rig.restarts > restarts
    assert rig.gpus[0].s.intensity == 25  # the same model: the same miner parameters


async def test_oc_profiles_off_are_turned_on_and_apply_from_the_miners_next_start(
        farm: Farm) -> None:
    import asyncio

    act, cfg = actuator(farm)
    rig, gpu = farm.rigs[0], farm.rigs[0].gpus[1]
    update_json(cfg / "config.txt", lambda d: d.update(EnableOCProfiles="0",
                                                       OCResetInterval="0"))
    await asyncio.sleep(0.01)
    rig.poll_config(1.0)
    rig.restart_miner(1.0, "operator restart")  # the miner now runs with OC profiles off
    status, detail = await act(command(mem_offset_mhz=700))
    assert status == "applied"
    assert "EnableOCProfiles was off" in detail and "next start" in detail
    assert "OCResetInterval was 0: set to 3600 s" in detail
    config = json.loads((cfg / "config.txt").read_text())
    assert (config["EnableOCProfiles"], config["OCResetInterval"]) == ("1", "3600")
    assert gpu.s.mem_offset_mhz == 0  # not while this miner runs
    rig.poll_config(2.0)
    rig.restart_miner(2.0, "next start")
    assert gpu.s.mem_offset_mhz == 700


async def test_limits_clamp_and_bad_files_or_targets_are_refused(farm: Farm) -> None:
    act, cfg = actuator(farm, limits=GpuLimits(core_offset_mhz=(-100, 100)))
    gpu = farm.rigs[0].gpus[1]
    status, detail = await act(command(power_limit_w=5000, core_offset_mhz=400))
    assert status == "applied"
    assert f"power limit W 5000 clamped to {gpu.card.pl_max_w:g}" in detail
    assert "core offset MHz 400 clamped to 100" in detail and gpu.s.core_offset_mhz == 100
    (cfg / "devices.config.txt").write_text("{broken")
    status, detail = await act(command(core_offset_mhz=50))
    assert status == "rejected" and "not valid JSON" in detail
    assert (cfg / "devices.config.txt").read_text() == "{broken"  # not overwritten
    assert (await act(command(rig_id="rig99")))[0] == "rejected"
    assert (await act(command(gpu_index=7)))[0] == "rejected"
    now = datetime.now(UTC)
    sleep = SleepAsic(site="s", device_id="x", ts=now, source="t", issued_at=now,
                      expires_at=now + timedelta(seconds=1), reason="", issued_by="t")
    assert (await act(sleep))[0] == "rejected"


def test_update_json_is_atomic_and_keeps_other_keys(tmp_path: Path) -> None:
    p = tmp_path / "x.config.txt"
    p.write_text(json.dumps({"keep": {"a": 1}, "edit": 1}))
    update_json(p, lambda d: d.update(edit=2))
    assert json.loads(p.read_text()) == {"keep": {"a": 1}, "edit": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["x.config.txt"]  # no temp file left

    def boom(d: dict[str, Any]) -> None:
        raise RuntimeError("mid-change")
    with pytest.raises(RuntimeError):
        update_json(p, boom)
    assert json.loads(p.read_text())["edit"] == 2
