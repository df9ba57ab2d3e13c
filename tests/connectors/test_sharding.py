"""Connectors shard a fleet by device (``--shard i/n``): two shards of one inventory read
every simulated ASIC and rig over their real sockets, each exactly once; the site-wide
devices run with shard 0 only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from connectors.base import ListSink
from schemas.events import AsicTelemetryObserved, GpuTelemetryObserved
from schemas.settings import Settings
from schemas.site import load_site, parse_shard, shard_of
from sim.farm import Farm
from streams.runtime import site_connectors
from tests.sim.conftest import farm_config


def test_parse_shard_and_stable_membership() -> None:
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="want i/n"):
            parse_shard(bad)
    ids = [f"asic-{i:05d}" for i in range(1, 2001)]
    sizes = Counter(shard_of(d, 4) for d in ids)
    assert set(sizes) == {0, 1, 2, 3} and min(sizes.values()) > 400  # roughly even


async def test_two_shards_read_every_device_once(tmp_path: Path) -> None:
    farm = Farm(farm_config(tmp_path, asics=10, gpu_rigs=3, model_endpoints=1,
                            coordinator=False))
    await farm.start()
    try:
        site_file = farm.write_site(tmp_path / "site.toml")
        env = dict(line.split("=", 1) for line in
                   site_file.with_suffix(".env").read_text().splitlines() if "=" in line)
        site = load_site(site_file, env)
        s = Settings(data_dir=tmp_path / "data")
        seen: Counter[str] = Counter()
        kinds: list[set[str]] = []
        for i in range(2):
            sink = ListSink()
            conns = site_connectors(s, sink, site, frozenset(
                {"asic", "rigs", "meter", "power", "models", "asic-actuator", "local-pool"}),
                environ=env, shard=(i, 2))
            kinds.append(set(conns))
            await conns["asic"].sweep()
            if "rigs" in conns:  # a shard may hold no rig
                async with httpx.AsyncClient(timeout=5) as client:
                    await conns["rigs"].sweep(client)
            seen.update(e.device_id for e in sink.events
                        if isinstance(e, AsicTelemetryObserved | GpuTelemetryObserved))
            assert conns["asic-actuator"].group.endswith(f"-shard{i}of2")
            assert not conns["asic-actuator"].own_all  # the other shard's devices are not ours
    finally:
        await farm.stop()
    asics = {a["id"] for a in farm.endpoints()["asics"]}
    gpus = {f"{r['id']}-gpu{g}" for r in farm.endpoints()["rigs"] for g in range(2)}
    assert set(seen) == asics | gpus and set(seen.values()) == {1}, seen
    assert all("asic" in k for k in kinds)  # both shards hold ASICs
    assert {"meter", "power", "models", "local-pool"} <= kinds[0]
    assert not {"meter", "power", "models", "local-pool"} & kinds[1]
