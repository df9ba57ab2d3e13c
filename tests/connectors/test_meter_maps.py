"""The meter's register maps: the SEL-735's own map against a recorded poll (written from its
published map, tests/fixtures/meter/README.md), hostile variants of that poll, the read
plan, and the connector reading the simulated meter on each map over a real socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from connectors.base import Emitter, ListSink
from connectors.grid_meter import GridMeter, MeterDecodeError, parse_registers, read_plan
from schemas.events import GridMeasured, RecordDeadLettered
from schemas.site import REGISTER_MAPS, RegisterMap
from sim.meter import GridModel, MeterServer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "meter" / "sel735_poll.json"
SEL = REGISTER_MAPS["sel-735"]


def recorded() -> dict[str, Any]:
    return dict(json.loads(FIXTURE.read_text()))


async def poll(meter: GridMeter, times: int = 1) -> None:
    """Poll ``meter`` ``times`` over one real Modbus TCP connection."""
    client = AsyncModbusTcpClient(meter.host, port=meter.port)
    await client.connect()
    try:
        for _ in range(times):
            await meter.poll(client)
    finally:
        client.close()


def registers(doc: dict[str, Any]) -> dict[int, int]:
    return {r["start"] + i: v for r in doc["reads"] for i, v in enumerate(r["registers"])}


def test_the_sel735_map_reads_a_recorded_recorded() -> None:
    doc = recorded()
    values = parse_registers(registers(doc), SEL)
    for name, want in doc["expect"].items():
        assert values[name] == pytest.approx(want, abs=1e-9), name


def test_the_sel735_map_is_read_in_the_two_requests_the_recording_holds() -> None:
    plan = read_plan(SEL)
    assert plan == [(r["start"], len(r["registers"])) for r in recorded()["reads"]]
    assert all(count <= 125 for _, count in plan)  # the meter's limit per read


def test_the_read_plan_splits_at_the_meters_limit() -> None:
    spread = RegisterMap.model_validate({"max_read": 10, "fields": {
        "frequency_hz": {"address": 0}, "voltage_v": {"address": 8},
        "active_power_kw": {"address": 9}}})
    assert read_plan(spread) == [(0, 10), (9, 2)]
    assert read_plan(REGISTER_MAPS["ieee754-float"]) == [(0, 16)]


def _set(doc: dict[str, Any], addr: int, words: list[int]) -> dict[str, Any]:
    for r in doc["reads"]:
        off = addr - r["start"]
        if 0 <= off < len(r["registers"]):
            r["registers"][off:off + len(words)] = words
    return doc


def _drop_read(doc: dict[str, Any], start: int) -> dict[str, Any]:
    doc["reads"] = [r for r in doc["reads"] if r["start"] != start]
    return doc


def _truncate(doc: dict[str, Any], start: int, n: int) -> dict[str, Any]:
    for r in doc["reads"]:
        if r["start"] == start:
            r["registers"] = r["registers"][:n]
    return doc


HOSTILE = {
    "frequency 0 Hz (a dead PT)": lambda d: _set(d, 900, [0]),
    "frequency all ones": lambda d: _set(d, 900, [0xFFFF]),
    "frequency 39.99 Hz": lambda d: _set(d, 900, [3999]),
    "frequency 70.01 Hz": lambda d: _set(d, 900, [7001]),
    "frequency 1 Hz": lambda d: _set(d, 900, [100]),
    "frequency read missing": lambda d: _drop_read(d, 900),
    "instantaneous block missing": lambda d: _drop_read(d, 350),
    "block cut before W3": lambda d: _truncate(d, 350, 20),
    "block cut inside Q3": lambda d: _truncate(d, 350, 25),
    "negative line voltage": lambda d: _set(d, 364, [0xFFFF, 0xFF00]),
    "register over 16 bits": lambda d: _set(d, 370, [70000, 0]),
    "negative register": lambda d: _set(d, 374, [-1, 0]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_sel735_polls_are_refused(case: str) -> None:
    with pytest.raises(MeterDecodeError):
        parse_registers(registers(HOSTILE[case](recorded())), SEL)


@pytest.mark.parametrize("name", sorted(REGISTER_MAPS))
async def test_the_connector_reads_the_simulated_meter_on_each_map(name: str) -> None:
    load = 1234.56
    server = MeterServer(GridModel(nominal_hz=60.0, seed=3), load_kw=lambda: load,
                         register_map=name)
    await server.start()
    sink = ListSink()
    meter = GridMeter(server.host, server.port, Emitter(sink, source="t", site="s"),
                      rmap=REGISTER_MAPS[name])
    try:
        await poll(meter, 3)
    finally:
        await server.stop()
    readings = [e for e in sink.events if isinstance(e, GridMeasured)]
    assert len(readings) == 3, sink.events
    assert server.reads == 3 * len(read_plan(REGISTER_MAPS[name]))
    for r in readings:
        assert abs(r.frequency_hz - 60.0) < 0.1 and r.nominal_hz == 60.0
        assert r.active_power_kw == pytest.approx(load, abs=0.01)
        assert 390 < r.voltage_v < 410


async def test_a_meter_read_on_the_wrong_map_goes_to_dlq_not_to_a_decision() -> None:
    """An inventory that names the float map for an SEL-735: its reserved registers 0-15
    read 0, a frequency of 0 Hz, so the poll is dead-lettered with the reason."""
    server = MeterServer(GridModel(seed=1), load_kw=lambda: 500.0, register_map="sel-735")
    await server.start()
    sink = ListSink()
    meter = GridMeter(server.host, server.port, Emitter(sink, source="t", site="s"),
                      rmap=REGISTER_MAPS["ieee754-float"])
    try:
        await poll(meter)
    finally:
        await server.stop()
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert not any(isinstance(e, GridMeasured) for e in sink.events)
    assert len(dead) == 1 and "not a grid frequency" in dead[0].reason


async def test_a_site_whose_meter_is_an_sel735_runs_its_meter_on_that_map(
        tmp_path: Path) -> None:
    """The farm's meter speaks the SEL-735 map; the inventory it writes names it; the
    runtime's meter connector reads it from that file over the socket."""
    from schemas.settings import Settings
    from schemas.site import load_site
    from sim.farm import Farm
    from streams.runtime import site_connectors
    from tests.sim.conftest import farm_config

    farm = Farm(farm_config(tmp_path, asics=2, gpu_rigs=0, model_endpoints=0,
                            coordinator=False, meter_map="sel-735", nominal_hz=60.0))
    await farm.start()
    try:
        site_file = farm.write_site(tmp_path / "site.toml")
        assert 'register_map = "sel-735"' in site_file.read_text()
        site = load_site(site_file, {})
        sink = ListSink()
        conns = site_connectors(Settings(data_dir=tmp_path / "data"), sink, site,
                                frozenset({"meter"}))
        meter = conns["meter"]
        assert meter.rmap == SEL
        await poll(meter)
    finally:
        await farm.stop()
    (r,) = [e for e in sink.events if isinstance(e, GridMeasured)]
    assert abs(r.frequency_hz - 60.0) < 0.1 and r.nominal_hz == 60.0
    assert r.active_power_kw == pytest.approx(farm.load_kw(), rel=0.05)
