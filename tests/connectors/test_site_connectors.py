"""Grid meter, power sensors and uplink probe: against the simulated site over real sockets,
and against recorded malformed payloads."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from connectors.base import Emitter, ListSink
from connectors.grid_meter import (
    DEFAULT_MAP,
    GridMeter,
    MeterDecodeError,
    parse_registers,
)
from connectors.mqtt_power import PayloadError, PowerSensors, SensorMapping, parse_payload
from connectors.uplink import UplinkProbe
from schemas.events import FeedPowerMeasured, GridMeasured, RecordDeadLettered
from schemas.site import RegisterMap
from sim.farm import Farm
from sim.meter import encode_float
from tests.connectors.test_meter_maps import poll
from tests.factories import T0


def regs(**values: float) -> list[int]:
    base = {"frequency_hz": 50.0, "voltage_v": 400.0, "active_power_kw": 480.0,
            "reactive_power_kvar": 97.0, "nominal_hz": 50.0}
    base.update(values)
    out = [0] * 16
    for name, f in DEFAULT_MAP.fields.items():
        out[f.address:f.address + 2] = encode_float(base.get(name, 1.0))
    return out


def test_register_block_parses() -> None:
    v = parse_registers(regs(frequency_hz=49.87), DEFAULT_MAP)
    assert v["frequency_hz"] == pytest.approx(49.87, abs=1e-4) and v["nominal_hz"] == 50.0


def test_low_word_first_meters_are_a_map_setting() -> None:
    r = regs(frequency_hz=59.98, nominal_hz=60.0)
    swapped = [r[i + 1 - 2 * (i % 2)] for i in range(len(r))]
    v = parse_registers(swapped, DEFAULT_MAP.model_copy(update={"word_order": "little"}))
    assert v["frequency_hz"] == pytest.approx(59.98, abs=1e-4) and v["nominal_hz"] == 60.0


NAN = list(struct.unpack(">HH", struct.pack(">f", float("nan"))))
INF = list(struct.unpack(">HH", struct.pack(">f", float("inf"))))


@pytest.mark.parametrize(("name", "block"), [
    ("all zero", [0] * 16),
    ("short read", regs()[:6]),
    ("empty", []),
    ("frequency NaN", NAN + regs()[2:]),
    ("frequency inf", INF + regs()[2:]),
    ("frequency 0.5 Hz", regs(frequency_hz=0.5)),
    ("frequency 500 Hz", regs(frequency_hz=500.0)),
    ("negative voltage", regs(voltage_v=-400.0)),
    ("voltage NaN", regs()[:2] + NAN + regs()[4:]),
    ("power inf", regs()[:4] + INF + regs()[6:]),
    ("register > 16 bit", [70000, 0, *regs()[2:]]),
    ("negative register", [-1, 0, *regs()[2:]]),
])
def test_malformed_register_blocks_are_refused(name: str, block: list[int]) -> None:
    with pytest.raises(MeterDecodeError):
        parse_registers(block, DEFAULT_MAP)


async def test_meter_connector_reads_the_simulated_meter(farm: Farm) -> None:
    sink = ListSink()
    meter = GridMeter(farm.meter.host, farm.meter.port, Emitter(sink, source="t", site="s"))
    await poll(meter, 3)
    readings = [e for e in sink.events if isinstance(e, GridMeasured)]
    assert len(readings) == 3
    assert all(abs(r.frequency_hz - 50) < 0.1 and r.active_power_kw > 0 for r in readings)
    assert readings[0].active_power_kw == pytest.approx(farm.load_kw(), rel=0.02)


async def test_meter_connector_survives_exceptions_and_reconnects(farm: Farm) -> None:
    sink = ListSink()
    emitter = Emitter(sink, source="t", site="s")
    bad_map = RegisterMap.model_validate({"fields": {
        "frequency_hz": {"address": 30}, "voltage_v": {"address": 2},
        "active_power_kw": {"address": 4}, "nominal_hz": {"address": 14}}})
    meter = GridMeter(farm.meter.host, farm.meter.port, emitter, rmap=bad_map, period_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(meter.run(stop))
    await asyncio.sleep(0.5)
    assert meter.exceptions >= 3 and emitter.stats.errors >= 3  # exception 2, kept polling
    await farm.meter.stop()  # the meter goes away ...
    await asyncio.sleep(0.5)
    reconnects = emitter.stats.reconnects
    assert reconnects >= 1
    await farm.meter.start()  # ... and comes back on the same port
    meter.rmap = DEFAULT_MAP
    for _ in range(50):
        await asyncio.sleep(0.1)
        if any(isinstance(e, GridMeasured) for e in sink.events):
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    assert any(isinstance(e, GridMeasured) for e in sink.events)


FEED = SensorMapping(topic="site-1/power/feed-a/state", feed_id="feed-a")


def test_json_payload_parses() -> None:
    e = parse_payload(b'{"voltage_v": 401.5, "current_a": 690.1, "power_kw": 470.2, '
                      b'"capacity_kw": 800, "ts": "x"}', FEED, site="s", ts=T0)
    assert (e.feed_id, e.power_kw, e.capacity_kw) == ("feed-a", 470.2, 800.0)


def test_plain_number_and_scaled_mappings() -> None:
    watts = SensorMapping(topic="t", feed_id="gen-1", format="number",
                          scale={"power_kw": 0.001})
    e = parse_payload(b" 512000 \n", watts, site="s", ts=T0)
    assert e.power_kw == pytest.approx(512.0) and e.voltage_v == 400.0 and e.current_a > 0
    vi = SensorMapping(topic="t", feed_id="ct-2", fields={"voltage_v": "V", "current_a": "I"})
    e = parse_payload(b'{"V": 400, "I": 100}', vi, site="s", ts=T0)
    assert e.power_kw == pytest.approx(69.28, abs=0.01)


@pytest.mark.parametrize(("name", "payload"), [
    ("empty", b""),
    ("not json", b"{power: 5}"),
    ("json list", b"[1, 2]"),
    ("json string", b'"470"'),
    ("no power nor V and I", b'{"voltage_v": 400}'),
    ("power is text", b'{"power_kw": "lots"}'),
    ("power is bool", b'{"power_kw": true}'),
    ("power NaN", b'{"power_kw": NaN}'),
    ("power Infinity", b'{"power_kw": Infinity}'),
    ("negative power", b'{"power_kw": -5}'),
    ("negative capacity", b'{"power_kw": 5, "capacity_kw": -1}'),
    ("negative current", b'{"power_kw": 5, "current_a": -3}'),
    ("invalid utf-8", b'{"power_kw": 5, "x": "\xff\xfe"}'),
    ("nested object", b'{"power_kw": {"value": 5}}'),
])
def test_malformed_sensor_payloads_are_refused(name: str, payload: bytes) -> None:
    with pytest.raises((PayloadError, UnicodeDecodeError)):
        parse_payload(payload, FEED, site="s", ts=T0)


async def test_power_sensors_over_a_real_broker_with_dlq(farm: Farm) -> None:
    import aiomqtt

    c = farm.config
    mappings = [SensorMapping(topic=f.topic(c.site), feed_id=f.feed_id) for f in farm.feeds]
    sink = ListSink()
    emitter = Emitter(sink, source="t", site=c.site)
    sensors = PowerSensors(c.mqtt_host, c.mqtt_port, mappings, emitter)
    stop = asyncio.Event()
    task = asyncio.create_task(sensors.run(stop))
    for _ in range(50):
        await asyncio.sleep(0.1)
        if {e.feed_id for e in sink.events if isinstance(e, FeedPowerMeasured)} == \
                {"feed-a", "feed-b"}:
            break
    async with aiomqtt.Client(c.mqtt_host, c.mqtt_port) as pub:
        await pub.publish(mappings[0].topic, b"garbage", qos=1)
    for _ in range(30):
        await asyncio.sleep(0.1)
        if emitter.stats.dlq:
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    readings = [e for e in sink.events if isinstance(e, FeedPowerMeasured)]
    assert {r.feed_id for r in readings} == {"feed-a", "feed-b"}
    assert readings[0].capacity_kw in farm.feed_capacity0.values()
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert len(dead) == 1 and "not JSON" in dead[0].reason and dead[0].device_id == "feed-a"


async def test_uplink_probe_sees_the_outage(farm: Farm) -> None:
    import httpx

    sink = ListSink()
    probe = UplinkProbe(farm.endpoints()["uplink"]["url"], Emitter(sink, source="t", site="s"),
                        timeout_s=1.0)
    async with httpx.AsyncClient() as client:
        up = await probe.probe(client)
        await farm.set_uplink(False)
        down = await probe.probe(client)
        await farm.set_uplink(True)
        again = await probe.probe(client)
    assert up.up and up.latency_ms is not None and up.latency_ms < 1000
    assert not down.up and down.latency_ms is None and "ConnectError" in down.detail
    assert again.up
    assert json.loads(down.model_dump_json())["up"] is False
