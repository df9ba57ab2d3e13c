"""A corpus of hostile device answers, per protocol, over real sockets.

Each device here is a real server on loopback that answers the way a broken or malicious
device would: nesting 200,000 levels deep, megabytes of reply, a byte every 50 ms, nothing at
all, NaN and infinities, wrong types, values no real device reads, timestamps a year ahead.
For every case the connector's read returns (the sweep never raises, the process goes on),
a good device read in the same sweep is still published, the bad input is in ``dlq`` with
its reason (or counted as an error when there was nothing to dead-letter: silence, a drip
past the timeout), and the events published make no decision: folded through the energy
agent and the scheduler beside a steady site they issue no command.

The valid replies the corpus starts from follow the vendors' published formats, not our
simulator: CGMiner's API-README (``summary``/``pools`` sections, ``STATUS`` objects, ``MHS
5s``), LuxOS's ``power`` command (``POWER[0].Watts``) and ``config`` (``CurtailMode``); the
Modbus TCP application protocol (MBAP header, function 3); the seed-002 coordinator API and
the model endpoints' ``/api/chat`` reply (``response``, ``processing_time``).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from agents import energy, scheduler
from connectors.base import Emitter, ListSink, utc_now
from connectors.cgminer import AsicEndpoint, AsicTelemetry
from connectors.coordinator import CoordinatorClient, CoordinatorMiner
from connectors.grid_meter import GridMeter
from connectors.model_probe import ModelProbe
from connectors.rainbowminer import RainbowMinerRigs, RigEndpoint
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GridMeasured,
    RecordDeadLettered,
)
from schemas.plausibility import implausible

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
DEEP = b"[" * 200_000
HUGE = 20 * 1024 * 1024  # bytes a hostile device offers


class Device:
    """A TCP server on loopback whose every connection is handled by ``serve``."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Device:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await self.serve(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client gave up on us: that is the point
            finally:
                w.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def send(w: asyncio.StreamWriter, body: bytes | None, drip_s: float = 0.0,
               size: int = 0) -> None:
    """Answer ``body``; or ``size`` bytes of filler; dripped a byte per ``drip_s``; or
    nothing (None: hold the connection open and say nothing)."""
    if size:
        chunk = b"[" + b"1," * 32767
        sent = 0
        while sent < size:
            w.write(chunk)
            await w.drain()
            sent += len(chunk)
        return
    if body is None:
        await asyncio.sleep(3600)
        return
    if drip_s:
        for i in range(len(body)):
            w.write(body[i:i + 1])
            await w.drain()
            await asyncio.sleep(drip_s)
        return
    w.write(body)
    await w.drain()


# -- the site the published events are folded into ------------------------------------------

def commands_from(events: list[Event]) -> list[Any]:
    """Fold ``events`` beside a steady site (one 100-kW feed, a 50-Hz meter, one 3-kW
    ASIC) through the energy agent and the scheduler; the commands they issue."""
    now = utc_now()
    site = [FeedPowerMeasured(site="site-1", device_id="f1", ts=now, source="t", feed_id="f1",
                              voltage_v=400, current_a=100, power_kw=40, capacity_kw=100),
            AsicTelemetryObserved(site="site-1", device_id="good", ts=now, source="t",
                                  state="running", hashrate_ths=100, hashrate_avg_ths=100,
                                  power_w=3000, accepted=0, rejected=0, stale=0,
                                  hardware_errors=0, elapsed_s=60)]
    grid = [GridMeasured(site="site-1", device_id="meter", ts=now + timedelta(seconds=i),
                         source="t", frequency_hz=50.0, voltage_v=400, active_power_kw=40,
                         reactive_power_kvar=0) for i in range(1, 4)]
    p = energy.EnergyParams(margin_kw=0, emit_s=0, feeds=("f1",), meter_stale_s=5.0)
    sp = scheduler.SchedulerParams(min_on_s=0, min_off_s=0, hysteresis_kw=0)
    es, ss = energy.EnergyState(), scheduler.SchedulerState()
    out: list[Any] = []
    for e in [*site, *events, *grid]:
        if isinstance(e, AsicTelemetryObserved):
            scheduler.step(ss, e, sp)
        if isinstance(e, energy.EnergyInput):
            for m in energy.step(es, e, p)[1]:
                if not isinstance(m, RecordDeadLettered):
                    out += scheduler.step(ss, m, sp)[1]  # type: ignore[arg-type]
    return out


def check_outcome(sink: ListSink, emitter: Emitter, device: str, expect: str) -> None:
    """``expect``: ``dlq:<words of the reason>`` or ``error:<words of the error>``."""
    letters = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    published = [e for e in sink.events if not isinstance(e, RecordDeadLettered)]
    kind, _, words = expect.partition(":")
    if kind == "dlq":
        assert len(letters) == 1, (expect, [x.reason for x in letters], emitter.stats)
        assert letters[0].device_id == device
        assert words.lower() in letters[0].reason.lower(), letters[0].reason
    else:
        assert not letters, [x.reason for x in letters]
        assert emitter.stats.errors >= 1 and words.lower() in emitter.stats.last_error.lower(), \
            emitter.stats.last_error
    assert all(implausible(e, utc_now()) is None for e in published)
    assert commands_from(published) == []


# -- CGMiner / LuxOS (TCP 4028) ---------------------------------------------------------

def cgminer(watts: Any = 3250, mhs: Any = 104_000_000.0, when: int | None = None,
            summary: Any = None) -> bytes:
    """A ``summary+pools+power+config+version`` reply in the documented CGMiner/LuxOS
    shape (NUL-terminated, as the firmware sends it)."""
    def status(msg: str) -> list[dict[str, Any]]:
        return [{"STATUS": "S", "When": when or 1700000000, "Code": 11, "Msg": msg,
                 "Description": "LUXminer 2024.5.1"}]
    body = {
        "summary": [{"STATUS": status("Summary"), "id": 1, "SUMMARY": summary if summary
                     is not None else [{"Elapsed": 3600, "MHS 5s": mhs, "MHS av": mhs,
                                        "Accepted": 1200, "Rejected": 3, "Stale": 1,
                                        "Hardware Errors": 2, "Difficulty Accepted": 1.2e9,
                                        "Difficulty Rejected": 3e6}]}],
        "pools": [{"STATUS": status("1 Pool(s)"), "id": 1, "POOLS": [
            {"POOL": 0, "URL": "stratum+tcp://pool.example:3333", "Status": "Alive",
             "Stratum Active": True, "User": "farm.w1", "Priority": 0}]}],
        "power": [{"STATUS": status("Power"), "id": 1, "POWER": [{"Watts": watts}]}],
        "config": [{"STATUS": status("Config"), "id": 1, "CONFIG": [{"CurtailMode": "None"}]}],
        "version": [{"STATUS": status("Version"), "id": 1, "VERSION": [
            {"Type": "Antminer S19j Pro", "LUXminer": "2024.5.1"}]}]}
    text = json.dumps(body).replace('"__nan__"', "nan").replace('"__inf__"', "inf")
    return text.encode() + b"\x00"


CGMINER_CORPUS: list[tuple[str, Serve, str]] = []


def cg_case(name: str, expect: str, body: bytes | None = b"", drip_s: float = 0.0,
            size: int = 0) -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(4096)
        await send(w, body, drip_s, size)
    CGMINER_CORPUS.append((name, serve, expect))


cg_case("200,000 open brackets", "dlq:nested too deep", DEEP)  # closed by the repairs
cg_case("nested 200,000 deep", "dlq:nested too deep", DEEP + b"]" * 200_000)
cg_case("20 MB reply", "dlq:reply over", size=HUGE)
cg_case("a byte every 50 ms", "error:TimeoutError", cgminer(), drip_s=0.05)
cg_case("silent", "error:TimeoutError", None)
cg_case("binary noise", "dlq:not CGMiner JSON", bytes(range(256)) * 8)
cg_case("NaN watts", "dlq:Watts", cgminer(watts="__nan__"))
cg_case("infinite watts", "dlq:Watts", cgminer(watts="__inf__"))
cg_case("watts as a string of words", "dlq:Watts", cgminer(watts="lots"))
cg_case("SUMMARY is a string", "dlq:no SUMMARY", cgminer(summary="running fine"))
cg_case("a terawatt miner", "dlq:power_w 1e+12", cgminer(watts=1e12))
cg_case("an exahash miner", "dlq:hashrate_ths", cgminer(mhs=1e15))


@pytest.mark.parametrize(("name", "serve", "expect"), CGMINER_CORPUS,
                         ids=[c[0] for c in CGMINER_CORPUS])
async def test_hostile_cgminer_replies(name: str, serve: Serve, expect: str) -> None:
    async def good(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(4096)
        await send(w, cgminer())

    async with Device(serve) as bad, Device(good) as ok:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:asic", site="site-1")
        conn = AsicTelemetry([AsicEndpoint("bad", "127.0.0.1", bad.port),
                              AsicEndpoint("good", "127.0.0.1", ok.port)], emitter,
                             timeout_s=0.5)
        answered = await conn.sweep()
    assert answered >= 1  # the good one (a bad one that answered nonsense counts too)
    tel = [e for e in sink.events if isinstance(e, AsicTelemetryObserved)]
    assert [t.device_id for t in tel] == ["good"] and tel[0].power_w == 3250
    check_outcome(sink, emitter, "bad", expect)


async def test_a_miner_clock_a_year_ahead_does_not_date_the_reading() -> None:
    """CGMiner's ``When`` is the miner's clock; the reading is stamped with the reader's."""
    ahead = int((utc_now() + timedelta(days=365)).timestamp())

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(4096)
        await send(w, cgminer(when=ahead))

    async with Device(serve) as dev:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:asic", site="site-1")
        before = utc_now()
        await AsicTelemetry([AsicEndpoint("a", "127.0.0.1", dev.port)], emitter).sweep()
    (tel,) = sink.events
    assert before <= tel.ts <= utc_now()


async def test_a_stuck_miner_makes_one_letter_a_minute_not_one_a_sweep() -> None:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(4096)
        await send(w, cgminer(watts="__nan__"))

    async with Device(serve) as dev:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:asic", site="site-1")
        conn = AsicTelemetry([AsicEndpoint("a", "127.0.0.1", dev.port)], emitter)
        for _ in range(5):
            await conn.sweep()
    assert emitter.stats.dlq == 1 and emitter.stats.dlq_suppressed == 4


# -- Modbus TCP (the grid meter) ---------------------------------------------------------

def floats(*values: float) -> list[int]:
    out: list[int] = []
    for v in values:
        hi, lo = struct.unpack(">HH", struct.pack(">f", v))
        out += [hi, lo]
    return out


def meter(registers: list[int] | None = None, raw: bytes | None = None,
          drip_s: float = 0.0, silent: bool = False) -> Serve:
    """A Modbus TCP server answering function 3 with ``registers`` (16 from address 0),
    or ``raw`` bytes after the MBAP header's transaction id."""
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readexactly(7)  # MBAP: transaction, protocol, length, unit
            tid, _, length, unit = struct.unpack(">HHHB", head)
            pdu = await r.readexactly(length - 1)
            if silent:
                await send(w, None)
            if raw is not None:
                await send(w, struct.pack(">H", tid) + raw, drip_s)
                continue
            regs = registers or []
            body = struct.pack(">BB", pdu[0], 2 * len(regs)) + struct.pack(
                f">{len(regs)}H", *regs)
            await send(w, struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body, drip_s)
    return serve


SANE = [50.0, 400.0, 40.0, 1.0, 0.99, 57.0, 1e5, 50.0]  # Hz, V, kW, kvar, pf, A, kWh, Hz
MODBUS_CORPUS: list[tuple[str, Serve, str]] = [
    ("a 1 Hz grid", meter(floats(1.0, *SANE[1:])), "dlq:not a grid frequency"),
    ("NaN frequency", meter(floats(float("nan"), *SANE[1:])), "dlq:not a number"),
    ("infinite power", meter(floats(*SANE[:2], float("inf"), *SANE[3:])), "dlq:not a number"),
    ("a terawatt import", meter(floats(*SANE[:2], 1e12, *SANE[3:])),
     "dlq:active_power_kw 1e+12"),
    ("too few registers", meter(floats(*SANE[:3])), "dlq:not in the block"),
    ("silent", meter(silent=True), "error:meter"),
    ("a byte every 50 ms", meter(floats(*SANE), drip_s=0.05), "error:meter"),
    ("garbage frame", meter(raw=b"\x00\x00\xff\xff\x01\x03" + b"\xff" * 600), "error:meter"),
]


@pytest.mark.parametrize(("name", "serve", "expect"), MODBUS_CORPUS,
                         ids=[c[0] for c in MODBUS_CORPUS])
async def test_hostile_meter_answers(name: str, serve: Serve, expect: str) -> None:
    async with Device(serve) as dev:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:grid-meter", site="site-1")
        gm = GridMeter("127.0.0.1", dev.port, emitter, meter_id="meter", period_s=0.1,
                       timeout_s=0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(gm.run(stop))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if emitter.stats.dlq or emitter.stats.errors:
                break
        await asyncio.sleep(0.3)  # a few more polls: still running, no second letter
        assert not task.done(), "the meter connector stopped"
        stop.set()
        await asyncio.wait_for(task, 10)
    check_outcome(sink, emitter, "meter", expect)


async def test_a_sane_meter_through_the_same_server_is_read() -> None:
    """The corpus' server, answering sanely, is read: the cases above fail for their
    payload, not for the test's Modbus framing."""
    async with Device(meter(floats(*SANE))) as dev:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:grid-meter", site="site-1")
        gm = GridMeter("127.0.0.1", dev.port, emitter, meter_id="meter", period_s=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(gm.run(stop))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if sink.events:
                break
        stop.set()
        await asyncio.wait_for(task, 10)
    (g, *_) = sink.events
    assert isinstance(g, GridMeasured) and g.frequency_hz == 50.0 and g.active_power_kw == 40


# -- HTTP devices: RainbowMiner rigs, the coordinator, model endpoints ----------------------

def http(body: bytes | None, status: int = 200, drip_s: float = 0.0, size: int = 0) -> Serve:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if length:
                await r.readexactly(length)
            if body is None and not size:
                await send(w, None)  # silence: not even a status line
            n = size or len(body or b"")
            w.write(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {n}\r\n\r\n".encode())
            await send(w, body, drip_s, size)
    return serve


HTTP_CORPUS: list[tuple[str, Serve, str]] = [
    ("nested 200,000 deep", http(DEEP), "dlq:not JSON"),
    ("20 MB reply", http(None, size=HUGE), "dlq:byte limit"),
    ("a byte every 50 ms", http(b'{"response": "4", "processing_time": 0.1}' * 4, drip_s=0.05),
     "error:within"),
    ("silent", http(None), "error:within"),
    ("NaN", http(b'{"response": NaN, "processing_time": NaN}'), "dlq:not JSON"),
    ("wrong types", http(b'{"response": [1, 2], "processing_time": "soon"}'), "dlq:"),
]


@pytest.mark.parametrize(("name", "serve", "expect"), HTTP_CORPUS,
                         ids=[c[0] for c in HTTP_CORPUS])
async def test_hostile_rig_api(name: str, serve: Serve, expect: str) -> None:
    async with Device(serve) as dev:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:rainbowminer", site="site-1")
        rigs = RainbowMinerRigs([RigEndpoint("rig1", f"http://127.0.0.1:{dev.port}")],
                                emitter, timeout_s=0.5)
        async with httpx.AsyncClient() as client:
            await rigs.sweep(client)
    want = "error:" if expect.startswith("error") else expect
    check_outcome(sink, emitter, "rig1", want)


@pytest.mark.parametrize(("name", "serve", "expect"), HTTP_CORPUS,
                         ids=[c[0] for c in HTTP_CORPUS])
async def test_hostile_model_endpoint(name: str, serve: Serve, expect: str) -> None:
    async with Device(serve) as dev:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:model-probe", site="site-1")
        probe = ModelProbe([("m1", f"http://127.0.0.1:{dev.port}")], emitter, prompts=1,
                           timeout_s=0.5)
        async with httpx.AsyncClient() as client:
            await probe.sweep(client)
    letters = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    health = [e for e in sink.events if not isinstance(e, RecordDeadLettered)]
    # a probe always reports the endpoint's health: a hostile one scores nothing
    assert len(health) == 1 and health[0].participation == 0.0  # type: ignore[attr-defined]
    chat = [e for e in letters if e.source_topic.endswith("/api/chat")]
    if expect.startswith("dlq"):
        assert len(chat) == 1 and expect[4:].lower() in chat[0].reason.lower(), letters
        # the same garbage on /info is refused there too, with its own reason
        assert all(e.source_topic.endswith("/info") and "bad info reply" in e.reason
                   for e in letters if e not in chat)
    else:
        assert not letters
    assert commands_from(health) == []


@pytest.mark.parametrize(("name", "serve", "expect"), HTTP_CORPUS,
                         ids=[c[0] for c in HTTP_CORPUS])
async def test_hostile_coordinator(name: str, serve: Serve, expect: str) -> None:
    async with Device(serve) as dev:
        sink = ListSink()
        emitter = Emitter(sink, source="connector:compute", site="site-1")
        miner = CoordinatorMiner(CoordinatorClient(f"http://127.0.0.1:{dev.port}", "key",
                                                   timeout_s=0.5),
                                 emitter, miner_id="m1", wallet="w", heartbeat_s=1e9)
        miner._last_heartbeat = float("inf")  # the job intake alone
        stop = asyncio.Event()
        task = asyncio.create_task(miner.run(stop))
        for _ in range(60):
            await asyncio.sleep(0.05)
            if emitter.stats.dlq or emitter.stats.errors:
                break
        assert not task.done(), "the compute miner stopped"
        stop.set()
        await asyncio.wait_for(task, 10)
    want = "error:" if expect.startswith("error") else "dlq:"
    check_outcome(sink, emitter, "m1", want)


# -- MQTT (the feeds' power sensors) ------------------------------------------------------

MQTT_CORPUS: list[tuple[str, bytes, str]] = [
    ("nested 30,000 deep", b"[" * 30_000 + b"]" * 30_000, "depth limit"),
    ("200,000 open brackets", DEEP, "over"),
    ("1 MB payload", b'{"power_kw": 1' + b"0" * (1 << 20) + b"}", "over"),
    ("NaN power", b'{"power_kw": NaN, "capacity_kw": 56}', "not JSON"),
    ("power as a string of words", b'{"power_kw": "lots", "capacity_kw": 56}', "not a number"),
    ("power as an object", b'{"power_kw": {"value": 5}}', "not a number"),
    ("capacity 0", b'{"power_kw": 40, "capacity_kw": 0}', "capacity_kw 0"),
    ("capacity 1e12", b'{"power_kw": 40, "capacity_kw": 1e12}', "capacity_kw 1e+12"),
    ("a JSON list", b"[40, 56]", "not an object"),
]


@pytest.fixture
async def mqtt_broker() -> Any:
    from sim.feeds import start_embedded_broker
    from streams.broker import free_port

    port = free_port()
    broker = await start_embedded_broker("127.0.0.1", port)
    yield port
    await broker.shutdown()


@pytest.mark.parametrize(("name", "payload", "reason"), MQTT_CORPUS,
                         ids=[c[0] for c in MQTT_CORPUS])
async def test_hostile_sensor_messages_retained_on_the_broker(
        mqtt_broker: int, name: str, payload: bytes, reason: str) -> None:
    """The hostile message is retained: the connector gets it on every (re)subscribe.  It is
    dead-lettered once, the connector stays connected (no reconnect loop), and the next
    sane message is read."""
    import aiomqtt

    from connectors.mqtt_power import PowerSensors, SensorMapping

    topic = "site-1/feeds/feed-a/power"
    async with aiomqtt.Client("127.0.0.1", mqtt_broker) as pub:
        await pub.publish(topic, payload, qos=1, retain=True)
    sink = ListSink()
    emitter = Emitter(sink, source="connector:power", site="site-1")
    sensors = PowerSensors("127.0.0.1", mqtt_broker, [SensorMapping(topic, "feed-a")], emitter)
    stop = asyncio.Event()
    task = asyncio.create_task(sensors.run(stop))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if emitter.stats.dlq:
            break
    async with aiomqtt.Client("127.0.0.1", mqtt_broker) as pub:
        await pub.publish(topic, b'{"power_kw": 40, "capacity_kw": 56}', qos=1)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if any(isinstance(e, FeedPowerMeasured) for e in sink.events):
            break
    assert not task.done(), "the power connector stopped"
    stop.set()
    await asyncio.wait_for(task, 10)
    assert emitter.stats.errors == 0, emitter.stats.last_error  # never reconnected
    letters = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert len(letters) == 1 and reason.lower() in letters[0].reason.lower(), \
        [x.reason for x in letters]
    readings = [e for e in sink.events if isinstance(e, FeedPowerMeasured)]
    assert [(r.power_kw, r.capacity_kw) for r in readings] == [(40.0, 56.0)]
