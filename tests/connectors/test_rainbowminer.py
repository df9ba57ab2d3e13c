"""The RainbowMiner connector: simulated rigs over HTTP, recorded and malformed payloads."""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest

from connectors.base import Emitter, ListSink
from connectors.rainbowminer import (
    RainbowMinerRigs,
    RigEndpoint,
    RigPayloadError,
    parse_log_line,
    parse_rig,
    rigs_from,
)
from schemas.events import (
    GpuTelemetryObserved,
    MinerEventObserved,
    RecordDeadLettered,
    ShareCountsObserved,
)
from sim.farm import Farm
from sim.rainbowminer import make_rig
from tests.factories import T0

RIG = RigEndpoint("rig07", "http://rig07:4000")


def recorded(tmp_path) -> tuple[list, list]:  # type: ignore[no-untyped-def,type-arg]
    """/devices and /minerstats as a simulated rig answers them."""
    rig = make_rig(6, tmp_path / "rig07", ["RTX 4090", "RTX 4090"])
    rig.init_files()
    rig.tick(30.0, T0)
    return rig.devices(), rig.miner_stats(30.0)


def test_recorded_rig_payloads_parse(tmp_path) -> None:  # type: ignore[no-untyped-def]
    devices, stats = recorded(tmp_path)
    tel, counts = parse_rig(devices, stats, RIG, site="s", ts=T0)
    assert [t.device_id for t in tel] == ["rig07-gpu0", "rig07-gpu1"]
    t = tel[0]
    assert t.card == "NVIDIA GeForce RTX 4090" and t.miner.startswith("TRex")
    assert 100 < t.hashrate_mhs < 140 and t.power_w > 100 and t.power_limit_w == 450
    assert counts[0].worker == "rig07-gpu0"


@pytest.mark.parametrize("mutate", [
    lambda d, s: (None, s),
    lambda d, s: ({"Name": "GPU#00"}, s),
    lambda d, s: (d, "not a list"),
    lambda d, s: ([{**d[0], "Name": "card zero"}], s),
    lambda d, s: ([{**d[0], "Data": None}], s),
    lambda d, s: ([{**d[0], "Data": {**d[0]["Data"], "Temperature": "hot"}}], s),
    lambda d, s: ([{**d[0], "Data": {**d[0]["Data"], "PowerDraw": None}}], s),
    lambda d, s: ([{**d[0], "Data": {**d[0]["Data"], "PowerLimit": float("nan")}}], s),
    lambda d, s: ([{**d[0], "Data": {**d[0]["Data"], "Clock": True}}], s),
    lambda d, s: (d, [{**s[0], "Speed_Live": "fast"}]),
    lambda d, s: (d, [{**s[0], "Stratum": {"Accepted": "many"}}]),
    lambda d, s: ([{**d[0], "Data": {**d[0]["Data"], "FanSpeed": [50]}}], s),
], ids=["devices null", "devices object", "stats string", "bad name", "no Data",
        "temperature text", "power null", "limit NaN", "clock bool", "speed text",
        "accepted text", "fan list"])
def test_malformed_rig_payloads_are_refused(tmp_path, mutate) -> None:  # type: ignore[no-untyped-def]
    devices, stats = recorded(tmp_path)
    d, s = mutate(copy.deepcopy(devices), copy.deepcopy(stats))
    with pytest.raises(RigPayloadError):
        parse_rig(d, s, RIG, site="s", ts=T0)


@pytest.mark.parametrize(("line", "kind", "worker"), [
    ("[2026-11-21 12:00:00] WARN: Miner TRex-RTX3090 has too many rejected shares on GPU#03 "
     "(12.5%), restarting", "too_many_rejected", "rig07-gpu3"),
    ("[2026-11-21 12:00:00] INFO: Start miner TRex-RTX3090 (Etchash) on GPU#00,GPU#01: "
     "configuration changed", "restart", "rig07-gpu0"),
    ("[2026-11-21 12:00:00] WARN: Restarting TRex-RTX3090 because of stale shares",
     "stale_restart", "rig07"),
    ("[2026-11-21 12:00:00] INFO: OC profiles applied", None, None),
    ("garbage without a timestamp", None, None),
])
def test_log_lines_become_miner_events(line: str, kind: str | None, worker: str | None) -> None:
    ev = parse_log_line(line, RIG, site="s", ts=T0)
    if kind is None:
        assert ev is None
    else:
        assert ev is not None and (ev.event_type, ev.worker) == (kind, worker)


async def test_rigs_over_http_publish_telemetry_shares_and_log_events(farm: Farm) -> None:
    sink = ListSink()
    conn = RainbowMinerRigs(rigs_from(farm.endpoints()), Emitter(sink, source="t", site="s"))
    farm.clock.speed = 60.0
    async with httpx.AsyncClient() as client:
        await conn.sweep(client)
        tel = [e for e in sink.events if isinstance(e, GpuTelemetryObserved)]
        assert len(tel) == 4 and {t.rig_id for t in tel} == {"rig01", "rig02"}
        await asyncio.sleep(1.0)
        # The rig's watchdog restarts a miner: the log says so, counters reset.
        rig = farm.rigs[0]
        rig.gpus[0].accepted, rig.gpus[0].rejected = 90, 30
        rig.tick(farm.t(), farm.clock.now())
        sink.events.clear()
        await conn.sweep(client)
    shares = [e for e in sink.events if isinstance(e, ShareCountsObserved)]
    assert shares and all(s.accepted >= 0 for s in shares)
    assert any(s.counter_reset for s in shares if s.device_id.startswith("rig01"))
    events = [e for e in sink.events if isinstance(e, MinerEventObserved)]
    assert {e.event_type for e in events} >= {"too_many_rejected", "restart"}


async def test_a_rig_answering_garbage_is_dead_lettered(farm: Farm) -> None:
    from fastapi import FastAPI

    from streams.httpserve import HttpService

    app = FastAPI()

    @app.get("/devices")
    def devices() -> dict:  # type: ignore[type-arg]
        return {"error": "not a list"}

    @app.get("/minerstats")
    def stats() -> list:  # type: ignore[type-arg]
        return []

    svc = HttpService(app)
    await svc.start()
    sink = ListSink()
    emitter = Emitter(sink, source="t", site="s")
    conn = RainbowMinerRigs([RigEndpoint("bad", svc.url), RigEndpoint("gone", "http://127.0.0.1:1"),
                             *rigs_from(farm.endpoints())], emitter)
    async with httpx.AsyncClient() as client:
        await conn.sweep(client)
    await svc.stop()
    assert [e.device_id for e in sink.events if isinstance(e, RecordDeadLettered)] == ["bad"]
    assert emitter.stats.errors == 1
    assert len([e for e in sink.events if isinstance(e, GpuTelemetryObserved)]) == 4


async def test_gpu_telemetry_through_the_simulated_nvml(farm: Farm) -> None:
    from connectors.gpu_backend import GpuBackendError
    from connectors.gpu_telemetry import GpuTelemetry, HttpNvmlBackend

    rigs = farm.endpoints()["rigs"]
    backends = {r["id"]: HttpNvmlBackend(r["nvml_url"]) for r in rigs}
    backends["gone"] = HttpNvmlBackend("http://127.0.0.1:1/nvml", timeout_s=0.5)
    sink = ListSink()
    emitter = Emitter(sink, source="t", site="s")
    await GpuTelemetry(backends, emitter).sweep()
    tel = [e for e in sink.events if isinstance(e, GpuTelemetryObserved)]
    assert [t.device_id for t in tel] == ["rig01-gpu0", "rig01-gpu1", "rig02-gpu0",
                                         "rig02-gpu1"]
    assert tel[0].card == "NVIDIA GeForce RTX 3090" and tel[0].power_limit_w == 350
    assert emitter.stats.errors == 1 and "gone" in emitter.stats.last_error
    nv = backends["rig02"]  # a blocking client: off the loop that serves the simulation
    await asyncio.to_thread(nv.set_power_limit, 1, 300)
    assert (await asyncio.to_thread(nv.read, 1)).power_limit_w == 300
    with pytest.raises(GpuBackendError, match="INVALID_ARGUMENT"):
        await asyncio.to_thread(nv.set_power_limit, 1, 5000)
    for b in backends.values():
        b.close()
