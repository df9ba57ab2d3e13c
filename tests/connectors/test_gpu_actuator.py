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
    gpu = farm.rigs[0].gpus[1]
    default = gpu.card.pl_default_w
    status, detail = await act(command(power_limit_w=default * 0.8, core_offset_mhz=100,
                                       mem_offset_mhz=1000))
    assert status == "applied", detail
    assert gpu.s.power_limit_w == pytest.approx(default * 0.8, abs=default * 0.01)
    assert (gpu.s.core_offset_mhz, gpu.s.mem_offset_mhz) == (100, 1000)
    assert farm.rigs[0].gpus[0].s.power_limit_w == gpu.card.pl_default_w  # the other card
    profiles = json.loads((cfg / "ocprofiles.config.txt").read_text())
    assert profiles["hashplane-GPU01"]["PowerLimit"] == 80
    assert "Profile1" in profiles  # the operator's own profile is kept
    devices = json.loads((cfg / "devices.config.txt").read_text())
    assert devices["GPU#01"]["DefaultOCprofile"] == "hashplane-GPU01"
    assert devices["GPU#01"]["PowerAdjust"] == "100"  # unknown keys kept
    assert farm.rigs[0].applied_profile[1] == "hashplane-GPU01"


async def test_intensity_goes_to_the_gpus_own_miner_entry_and_restarts_the_miner(
        farm: Farm) -> None:
    act, cfg = actuator(farm)
    restarts = farm.rigs[0].restarts
    status, detail = await act(command(intensity=30))
    assert status == "applied" and "intensity 30 clamped to 25" in detail
    miners = json.loads((cfg / "miners.config.txt").read_text())
    own = [k for k in miners if k.endswith("-GPU#01")]
    assert own and miners[own[0]][0]["Params"] == "-i 25"
    assert farm.rigs[0].gpus[1].s.intensity == 25 and farm.rigs[0].restarts > restarts


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
