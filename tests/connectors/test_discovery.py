"""``hashplane site discover`` against a mixed simulated fleet on a real loopback network."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from pathlib import Path

import pytest

from connectors.discovery import Progress, hosts, scan
from schemas.site import merge_asics, parse_site
from sim.farm import Farm
from tests.sim.conftest import farm_config

ROOT = Path(__file__).resolve().parents[2]
MIX = {"luxos": 1, "braiins": 1, "antminer": 1, "whatsminer": 1}


@pytest.fixture
async def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = Farm(farm_config(tmp_path, asics=8, gpu_rigs=0, model_endpoints=0, firmware_mix=MIX))
    await f.start()
    yield f
    await f.stop()


async def run(cmd: list[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), err.decode()


def net(farm: Farm) -> str:
    return farm.asics[0].host.rsplit(".", 1)[0] + ".0/24"


async def test_scan_finds_every_miner_with_its_firmware_and_model(fleet: Farm) -> None:
    seen: list[Progress] = []
    found = await scan([net(fleet)], timeout_s=1.0, progress=seen.append)
    assert [(f.host, f.firmware) for f in found] == [(a.host, a.firmware) for a in fleet.asics]
    models = {f.host: f.model for f in found}
    for a in fleet.asics:
        assert models[a.host] == a.model.type, (a.firmware, models[a.host])
    assert seen and seen[-1].scanned == 254 and sum(seen[-1].found.values()) == 8


async def test_merge_is_idempotent_and_keeps_what_a_person_wrote(fleet: Farm,
                                                                 tmp_path: Path) -> None:
    inv = tmp_path / "site.toml"
    first = fleet.asics[0]
    inv.write_text(f'# our site\nsite = "site-1"\nasics = [\n  {{id = "rack9-top", host = '
                   f'"{first.host}", firmware = "auto", rack = "r9"}},  # checked by hand\n]\n')
    cmd = [sys.executable, "-m", "streams.cli", "site", "discover", net(fleet), "--merge",
           str(inv)]
    rc, err = await run(cmd)  # the farm answers from this event loop meanwhile
    assert rc == 0, err
    assert "discover: 254 addresses in " in err and "7 added, 1 already listed" in err
    text = inv.read_text()
    assert text.startswith("# our site") and "# checked by hand" in text
    site = parse_site(tomllib.loads(text), {})
    assert site.asics[0].id == "rack9-top" and site.asics[0].firmware == "auto"
    assert sorted(a.firmware for a in site.asics[1:]) == sorted(
        a.firmware for a in fleet.asics[1:])
    rc, err = await run(cmd)
    assert rc == 0 and "0 added, 8 already listed" in err, err
    assert inv.read_text() == text


def test_merge_into_tables_and_id_collisions() -> None:
    text = 'site = "s"\n\n[[asics]]\nid = "asic-10-0-0-2"\nhost = "10.0.0.9"\n'
    out, added, kept = merge_asics(text, [{"host": "10.0.0.2", "port": 4028,
                                           "firmware": "braiins", "model": "Antminer S19"}])
    assert (added, kept) == (1, 0)
    site = parse_site(tomllib.loads(out), {})
    assert [a.id for a in site.asics] == ["asic-10-0-0-2", "asic-10-0-0-2-2"]


def test_bad_networks_are_refused_before_scanning() -> None:
    with pytest.raises(ValueError, match="not an address or a network"):
        hosts(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="at most"):
        hosts(["10.0.0.0/8"])
    assert hosts(["10.0.0.5", "10.0.0.4/31"]) == ["10.0.0.5", "10.0.0.4"]
