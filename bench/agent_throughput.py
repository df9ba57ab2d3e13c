"""Agent throughput benchmark: the share-ratio and headroom agents and the site feed's
forwarder against the raw aiokafka consume rate of the same records, in one run.  Prints
measured numbers; not a test.

    .venv/bin/python bench/agent_throughput.py [--events 30000] [--site-events 150000]
        [--live-rates 0 25000 50000] [--live-seconds 20]

Each agent runs alone in a Faust worker (its own process) on a fresh Tansu broker, over records
produced beforehand, publishing its outputs to the real topics; throughput is input events
over the time from the agent's first event to its last (Faust's monitor counts them; the
forwarder counts its own; the share-ratio agent, which reads frames of its partition feed
with the feed's forwarder in its process as ``hashplane worker`` runs it, is counted by the
runner: ``streams.worker.FOLDED``).  Also printed, same run and same records: a no-op Faust agent
(the ceiling Faust's per-event machinery leaves) and the pure step functions alone (no
Kafka; what replay runs).  Then share-ratio workers in one consumer group, and the headroom
agent under live telemetry (``loaded``): how long a meter reading takes to become a
headroom while 0 / 25,000 / 50,000 readings a second arrive, on the site feed already
batched and as one record a reading through the forwarder in the agent's process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faust
from faust.worker import Worker
from ingest import raw_consume  # bench/ is on the path of a script run from bench/

from agents import energy, share_ratio
from agents.registry import site_agents
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GridMeasured,
    ShareCountsObserved,
)
from schemas.metrics import EnergyHeadroomComputed
from schemas.registry import topic as topic_spec
from schemas.registry import topic_of
from schemas.settings import Settings
from streams import worker as runner
from streams.app import BATCH_HEADER, create_app, decoded, pack
from streams.broker import EmbeddedBroker
from streams.cli import long_running_gc
from streams.codec import encode, encode_key
from streams.feed import SiteFeed, gather
from streams.topics import SITE_FEED, ensure_topics

T0 = datetime(2026, 11, 21, tzinfo=UTC)


def share_events(n: int, workers_n: int = 2000) -> list[Event]:
    """Each worker reports every 10 s of event time (an ASIC fleet's cadence)."""
    out: list[Event] = []
    for i in range(n):
        w = i % workers_n
        out.append(ShareCountsObserved(
            site="site-1", device_id=f"asic{w:05d}",
            ts=T0 + timedelta(seconds=10 * (i // workers_n)),
            source="bench", worker=f"acct.asic{w:05d}", pool="stratum+tcp://pool:3333",
            accepted=20 + i % 7, rejected=i % 3 == 0, stale=0, difficulty_accepted=65536.0,
            interval_s=10))
    return out


def site_events(n: int, asics: int = 2000) -> list[Event]:
    """Telemetry of ``asics`` every 10 s, a meter reading every 0.2 s, a feed every 1 s."""
    out: list[Event] = []
    t = 0.0
    i = 0
    while len(out) < n:
        ts = T0 + timedelta(seconds=t)
        if i % 50 == 0:
            out.append(GridMeasured(site="site-1", device_id="meter", ts=ts, source="bench",
                                    frequency_hz=50 - 0.3 * ((i // 5000) % 2), voltage_v=400,
                                    active_power_kw=6000, reactive_power_kvar=10))
        elif i % 250 == 1:
            out.append(FeedPowerMeasured(site="site-1", device_id="feed-a", ts=ts, source="bench",
                                         feed_id="feed-a", voltage_v=400, current_a=9000,
                                         power_kw=6000, capacity_kw=8000))
        else:
            d = i % asics
            out.append(AsicTelemetryObserved(
                site="site-1", device_id=f"asic{d:05d}", ts=ts, source="bench",
                state="running", hashrate_ths=104, hashrate_avg_ths=104, power_w=3050,
                temp_chip_c=70, accepted=i, rejected=0, stale=0, hardware_errors=0,
                elapsed_s=600, pool_url="stratum+tcp://pool:3333"))
        i += 1
        t += 10.0 / asics  # telemetry spread over the 10 s sweep
    return out


async def produce(bootstrap: str, records: list[tuple[str, bytes, bytes, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=1024 * 1024)
    await producer.start()
    try:
        futs = [await producer.send(t, v, key=k, headers=h) for t, k, v, h in records]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


#: Records per site-feed batch here: what the feed gathers in its 5 ms linger at 50,000
#: readings/s (streams/worker.py FEED_LINGER_S).
FEED_BATCH = 250


def as_records(events: list[Event], feed: bool) -> list[tuple[str, bytes, bytes, Any]]:
    """Telemetry goes to the site feed in batches, as site_feed forwards it; the rest to
    its topic."""
    out: list[tuple[str, bytes, bytes, Any]] = []
    batch: list[tuple[str, bytes]] = []

    def flush() -> None:
        if batch:
            out.append((SITE_FEED, b"site-1", pack(batch), [(BATCH_HEADER, b"1")]))
            batch.clear()

    for e in events:
        name = topic_of(type(e)).name
        if feed and name == "asic.telemetry":
            batch.append((name, encode(e)))
            if len(batch) >= FEED_BATCH:
                flush()
        else:
            out.append((name, encode_key(e), encode(e), None))
    flush()
    return out


async def run_agent(settings: Settings, name: str, register: Callable[[faust.App], Any],
                    n: int, shared: Path | None = None) -> tuple[float, int]:
    """Run one agent until its stream has seen ``n`` events; (seconds, outputs sent).

    ``shared``: one of several workers of one group (``group``): write "first-event-time
    events-seen" (system-wide monotonic clock) to that file every 10 ms and run until the
    parent creates ``<shared>.stop``."""
    app = create_app(settings, app_id=f"bench-{name}", broker_commit_interval=1.0,
                     broker_client_id=f"bench-{name}")
    sent = [0]
    publish = runner.topic_publisher(app)

    async def counting(e: Event) -> None:
        sent[0] += 1
        await publish(e)

    handle = register(app)(app, counting)

    # Faust's monitor counts what its agents take; the site feed's forwarder is not one
    def forwarded() -> int:
        return handle.read if isinstance(handle, SiteFeed) else 0

    def read() -> int:
        if isinstance(handle, Fed):  # frames: the runner counts the records they held
            return runner.FOLDED[handle.agent]
        return int(app.monitor.events_total) + forwarded()
    worker = Worker(app, loop=asyncio.get_running_loop(), loglevel="WARNING",
                    override_logging=False, quiet=True)
    task = asyncio.ensure_future(worker.start())
    first = None
    deadline = time.perf_counter() + 600
    while time.perf_counter() < deadline:
        seen = read()
        if seen and first is None:
            first = time.monotonic()
        if shared is not None:
            shared.write_text(f"{first or 0} {seen} {forwarded()}")
            if shared.with_suffix(".stop").exists():
                break
        elif seen >= n:
            break
        await asyncio.sleep(0.01)
    else:
        raise SystemExit(f"{name}: saw {read()} of {n} events in 600 s")
    assert first is not None
    elapsed = time.monotonic() - first
    await worker.stop()
    task.cancel()
    return elapsed, sent[0] + (runner.PUBLISHED[handle.agent] if isinstance(handle, Fed) else 0)


@dataclass(frozen=True)
class Fed:
    """A partition agent run as ``hashplane worker`` runs it: through its partition feed
    (the forwarder in the same process), publishing straight to the producer."""

    agent: str


def fed(s: Settings, spec: Any) -> Callable[[faust.App], Any]:
    def register(app: faust.App) -> Any:
        def wire(app: faust.App, publish: Any) -> Fed:
            runner.register(app, s, spec)
            runner.register_partition_feed(app, s, runner.input_topics(spec))
            return Fed(spec.name)
        return wire
    return register


def noop(topics: tuple[str, ...]) -> Callable[[faust.App], Any]:
    def register(app: faust.App) -> Any:
        def wire(app: faust.App, publish: Any) -> Any:
            @app.agent(app.topic(*topics, key_serializer="raw", value_serializer="raw"),
                       name="noop")
            async def noop_agent(stream: faust.StreamT[Any]) -> None:
                async for _ in decoded(stream, None, publish, "site-1", "bench"):
                    pass
            return noop_agent
        return wire
    return register


#: The loaded run's child: (reading's time, seconds from it to its headroom being handed to
#: the producer, the ASIC load the headroom counted), one per headroom the agent published.
HEADROOM_LAGS: list[tuple[float, float, float]] = []


def energy_timed(s: Settings, forwarder: bool) -> Callable[[faust.App], Any]:
    """The headroom agent, timing each headroom from the reading that decided it; with
    ``forwarder``, the site feed's forwarder in the same process, as in the control lane's
    worker."""
    def register(app: faust.App) -> Any:
        def wire(app: faust.App, publish: Any) -> Any:
            async def timed(e: Event) -> None:
                if isinstance(e, EnergyHeadroomComputed):
                    at = e.ts.timestamp()
                    HEADROOM_LAGS.append((at, time.time() - at, e.asic_load_kw))
                await publish(e)
            runner.register(app, s, energy.SPEC, timed)
            return runner.register_site_feed(app, s) if forwarder else None
        return wire
    return register


AGENTS: dict[str, Callable[[Settings], Callable[[faust.App], Any]]] = {
    "share-ratio": lambda s: fed(s, share_ratio.SPEC),
    "energy": lambda s: lambda app: lambda a, p: runner.register(a, s, energy.SPEC, p),
    "energy-live": lambda s: energy_timed(s, forwarder=False),
    "energy-live-topic": lambda s: energy_timed(s, forwarder=True),
    "site-feed": lambda s: lambda app: lambda a, p: runner.register_site_feed(a, s),
    "noop-telemetry": lambda s: noop(("asic.telemetry",)),
    "noop-shares": lambda s: noop(("shares",)),
    "noop-site": lambda s: noop((SITE_FEED, "grid.readings", "power.readings")),
}


async def one(name: str, bootstrap: str, n: int, shared: Path | None = None) -> None:
    """Child mode: one agent in a fresh process (one Faust app per process), with the
    garbage collector set as ``hashplane worker`` sets it."""
    long_running_gc()
    # the records are stamped on a past day: without these guards (a restarted worker's
    # warm-up, no decision on a reading older than 30 s) the headroom agent would publish
    # nothing here, where it publishes a headroom a second of event time live
    s = Settings(data_dir=Path(tempfile.mkdtemp()), kafka_bootstrap=bootstrap,
                 energy_warmup_s=0, energy_max_age_s=0,
                 # the loaded run: a headroom on every meter reading, as on a band crossing
                 energy_emit_s=0 if name.startswith("energy-live") else 1.0,
                 supply_feeds=["feed-a"])  # the loaded run's only feed: supply known at once
    t, out = await run_agent(s, name, AGENTS[name](s), n, shared)
    if shared is not None:
        shared.with_suffix(".lags").write_text(json.dumps(HEADROOM_LAGS))
    print(f"RESULT {t} {out}", flush=True)


#: The loaded run's site: telemetry of this many ASICs (a reading each every 10 s is 5,000
#: a second; the goal's 50,000 a second is that site with room to spare), the meter every
#: 0.2 s and one feed every 1 s, all stamped when sent.
LIVE_DEVICES = 50_000


def telemetry_template() -> bytes:
    """A telemetry record with ``%s`` for its event id, device and time (formatting one is
    a fraction of a microsecond: the producer keeps up with 50,000 a second)."""
    raw = encode(AsicTelemetryObserved(
        event_id=UUID(int=0), site="site-1", device_id="asic#####", ts=T0, source="bench",
        state="running", hashrate_ths=104, hashrate_avg_ths=104, power_w=3050,
        temp_chip_c=70, accepted=1, rejected=0, stale=0, hardware_errors=0, elapsed_s=600,
        pool_url="stratum+tcp://pool:3333"))
    ts = orjson.loads(raw)["ts"].encode()
    assert b"%" not in raw and raw.count(ts) == 1
    return (raw.replace(str(UUID(int=0)).encode(), b"%s").replace(b"asic#####", b"%s")
            .replace(ts, b"%s"))


def _stamp() -> tuple[datetime, bytes]:
    now = datetime.now(UTC)
    return now, now.isoformat().replace("+00:00", "Z").encode()


async def loaded(work: Path, rate: int, seconds: float, topic: bool) -> dict[str, float]:
    """The headroom agent in its own worker while telemetry arrives live at ``rate``
    readings a second: how long each meter and feed reading takes to become a headroom, and
    how long the worker needed after the load stopped to have read everything.

    ``topic`` False: the telemetry comes on the site feed already batched (what 5 ms
    gathers), the agent alone.  True: one record per reading on ``asic.telemetry``, as the
    connectors publish it, with the site feed's forwarder in the agent's process, as in the
    control lane's worker."""
    tag = f"{'topic' if topic else 'feed'}-{rate}"
    broker = EmbeddedBroker(log_file=work / f"broker-live-{tag}.log")
    await broker.start()
    progress = work / f"live-{tag}.progress"
    child_log = (work / f"live-{tag}.log").open("wb")
    proc = None
    try:
        await ensure_topics(broker.bootstrap)
        proc = subprocess.Popen([sys.executable, __file__, "--one",
                                 "energy-live-topic" if topic else "energy-live",
                                 "--bootstrap", broker.bootstrap, "--events", "0",
                                 "--shared", str(progress)],
                                stdout=subprocess.DEVNULL, stderr=child_log)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    linger_ms=2, max_batch_size=1024 * 1024)
        await producer.start()
        tmpl = telemetry_template()
        sent = {"records": 0, "readings": 0}
        pending: list[Any] = []

        async def send(topic: str, key: bytes, value: bytes, headers: Any = None) -> None:
            pending.append(await producer.send(topic, value, key=key, headers=headers))
            sent["records"] += 1

        async def control(now: datetime, meter: bool, feed: bool) -> None:
            if meter:
                g = GridMeasured(site="site-1", device_id="meter", ts=now, source="bench",
                                 frequency_hz=50.0, voltage_v=400, active_power_kw=6000,
                                 reactive_power_kvar=10)
                await send("grid.readings", b"meter", encode(g))
            if feed:
                f = FeedPowerMeasured(site="site-1", device_id="feed-a", ts=now, source="bench",
                                      feed_id="feed-a", voltage_v=400, current_a=9000,
                                      power_kw=60_000, capacity_kw=80_000)
                await send("power.readings", b"feed-a", encode(f))

        def seen(field: int = 1) -> int:
            try:
                return int(progress.read_text().split()[field])
            except (OSError, IndexError, ValueError):
                return 0

        def caught_up() -> bool:  # everything sent read (by the forwarder: the telemetry)
            return (seen(2) >= sent["readings"] if topic else seen() >= sent["records"])

        async def run(until: float, telemetry: int, stop_when: Callable[[], bool]) -> None:
            """Meter every 0.2 s, feed every 1 s, ``telemetry`` readings a second."""
            t0 = time.monotonic()
            ticks, next_meter, next_feed = 0, 0.0, 0.0
            while (m := time.monotonic()) < until and not stop_when():
                now, ts = _stamp()
                # by the clock, not by turns of this loop: a turn that sent many readings
                # takes longer than its 5 ms
                meter, feed = m - t0 >= next_meter, m - t0 >= next_feed
                if meter:
                    next_meter = (int((m - t0) / 0.2) + 1) * 0.2
                if feed:
                    next_feed = float(int(m - t0) + 1)
                await control(now, meter=meter, feed=feed)
                due = int((m - t0) * telemetry) - sent["readings"] if telemetry else 0
                while due > 0 and topic:
                    i = sent["readings"]
                    await send("asic.telemetry", f"asic{i % LIVE_DEVICES:05d}".encode(),
                               tmpl % (f"00000000-0000-4000-8000-{i:012x}".encode(),
                                       f"asic{i % LIVE_DEVICES:05d}".encode(), ts))
                    sent["readings"] += 1
                    due -= 1
                while due > 0:
                    n = min(due, FEED_BATCH)
                    base = sent["readings"]
                    lines = [(b"asic.telemetry", tmpl % (
                        f"00000000-0000-4000-8000-{base + i:012x}".encode(),
                        f"asic{(base + i) % LIVE_DEVICES:05d}".encode(), ts)) for i in range(n)]
                    await send(SITE_FEED, b"site-1",
                               b"\n".join(t + b" " + v for t, v in lines), [(BATCH_HEADER, b"1")])
                    sent["readings"] += n
                    due -= n
                ticks += 1
                await asyncio.sleep(max(0.0, t0 + ticks * 0.005 - time.monotonic()))

        # warm-up: the worker joins its group and reads the control topics
        await run(time.monotonic() + 90, 0, lambda: seen() > 0)
        if not seen():
            raise SystemExit("loaded run: the agent read nothing in 90 s")
        await run(time.monotonic() + 2, 0, lambda: False)
        start_wall, start = time.time(), time.monotonic()
        await run(start + seconds, rate, lambda: False)
        load_s = time.monotonic() - start
        readings = sent["readings"]
        # control readings only, until the agent has read every record sent
        await run(time.monotonic() + 120, 0, caught_up)
        drained = time.monotonic() - start - load_s
        await asyncio.gather(*pending)
        await producer.stop()
    finally:
        progress.with_suffix(".stop").touch()
        if proc is not None:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        child_log.close()
        await broker.stop()
    timed = [(at, lag, kw) for at, lag, kw in json.loads(
        progress.with_suffix(".lags").read_text()) if start_wall <= at <= start_wall + load_s]
    if not timed:
        raise SystemExit(f"loaded run at {rate}/s: no headroom during the load")
    lags = sorted(lag for _, lag, _ in timed)
    return {"offered": readings / load_s, "p50": lags[len(lags) // 2],
            "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))], "max": lags[-1],
            "n": len(lags), "drained": drained,
            # readings a second the worker took in, the tail it still had when the load
            # stopped included: the offered rate when it kept up
            "sustained": readings / (load_s + drained),
            # the ASICs the last headroom of the load counted (each draws 3.05 kW here):
            # what the agent had folded of the telemetry by then
            "asics": max(timed)[2] / 3.05}


def group(name: str, bootstrap: str, n: int, workers: int, work: Path) -> float:
    """``workers`` processes of one agent in one consumer group over the same records:
    seconds from the first event any of them saw until together they have seen ``n``."""
    files = [work / f"{name}-{i}.progress" for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, __file__, "--one", name, "--bootstrap",
                               bootstrap, "--events", str(n), "--shared", str(f)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for f in files]
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            fields = [f.read_text().split() for f in files if f.exists()]
            got = [(float(g[0]), int(g[1])) for g in fields if len(g) >= 2]
            if sum(seen for _, seen in got) >= n:
                done = time.monotonic()
                return done - min(first for first, seen in got if seen)
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"{name}: a worker of the group exited early")
            time.sleep(0.01)
        raise SystemExit(f"{name}: {workers} workers did not see {n} events in 900 s")
    finally:
        for f in files:
            f.with_suffix(".stop").touch()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def child(name: str, bootstrap: str, n: int) -> tuple[float, int]:
    proc = subprocess.run([sys.executable, __file__, "--one", name, "--bootstrap", bootstrap,
                           "--events", str(n)], capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if "RESULT " in line:  # Faust may prefix terminal escapes
            t, out = line.split("RESULT ", 1)[1].split()
            return float(t), int(out)
    raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


async def measure(work: Path, records: list[tuple[str, bytes, bytes, Any]], topics: list[str],
                  agent: str, noop_agent: str) -> tuple[float, int, float, float]:
    """Raw consume, the agent and the no-op agent over the same records.  Each Faust app
    gets a fresh broker: on Tansu a second Faust group after a first one fails to join
    (InconsistentGroupProtocol), which no single deployment meets (one app id)."""
    results: dict[str, Any] = {}
    for name in (agent, noop_agent):
        broker = EmbeddedBroker(log_file=work / f"broker-{name}.log")
        await broker.start()
        try:
            await ensure_topics(broker.bootstrap)
            await produce(broker.bootstrap, records)
            if name == agent:
                results["raw"] = await raw_consume(broker.bootstrap, len(records), tuple(topics))
            results[name] = await asyncio.to_thread(child, name, broker.bootstrap, len(records))
        finally:
            await broker.stop()
    t, out = results[agent]
    return t, out, results["raw"], results[noop_agent][0]


async def main(n: int, site_n: int, live_rates: list[int], live_s: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="hashplane-bench-agents-"))
    s = Settings(data_dir=work)
    print(f"hashplane agent benchmark: {n:,} share events, {site_n:,} site events, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"faust-streaming {faust.__version__}")
    shares = share_events(n)
    site = site_events(site_n)
    rows = []
    t, out, raw_s, noop_s = await measure(work, as_records(shares, feed=False), ["shares"],
                                          "share-ratio", "noop-shares")
    t0 = time.perf_counter()
    share_ratio.fold(shares, scopes=("worker", "device"),  # type: ignore[arg-type]
                     windows=tuple(s.share_windows_s), grace_s=s.share_grace_s,
                     update_s=s.share_update_s)
    step_s = time.perf_counter() - t0
    rows.append(("share ratio (worker+device, 1m/15m/1h)", t, out, raw_s, noop_s, step_s, n))

    t, out, raw_s, noop_s = await measure(
        work, as_records(site, feed=True), [SITE_FEED, "grid.readings", "power.readings"],
        "energy", "noop-site")
    t0 = time.perf_counter()
    energy.fold(site, energy.params(s))  # type: ignore[arg-type]
    step_s = time.perf_counter() - t0
    rows.append(("energy headroom (telemetry, meter, feeds)", t, out, raw_s, noop_s, step_s,
                 site_n))

    # the site feed's forwarder over telemetry published one record per reading, as the
    # connectors do; "step only": its validation (``streams.feed.gather``) alone
    tele: list[Event] = [e for e in site if isinstance(e, AsicTelemetryObserved)]
    t, out, raw_s, noop_s = await measure(work, as_records(tele, feed=False),
                                          ["asic.telemetry"], "site-feed", "noop-telemetry")
    fetched = [ConsumerRecord("asic.telemetry", 0, i, 0, 0, key, value, None, len(key),
                              len(value), []) for i, (_, key, value, _) in
               enumerate(as_records(tele, feed=False))]
    t0 = time.perf_counter()
    gather(fetched, site_agents(), "site-1", datetime.now(UTC))
    step_s = time.perf_counter() - t0
    rows.append(("site feed forwarder (telemetry records)", t, out, raw_s, noop_s, step_s,
                 len(tele)))

    scaling = []
    for workers in (1, 2):
        broker = EmbeddedBroker(log_file=work / f"broker-group-{workers}.log")
        await broker.start()
        try:
            await ensure_topics(broker.bootstrap)
            await produce(broker.bootstrap, as_records(shares, feed=False))
            scaling.append(await asyncio.to_thread(group, "share-ratio", broker.bootstrap, n,
                                                   workers, work))
        finally:
            await broker.stop()

    live = [(topic, await loaded(work, rate, live_s, topic))
            for topic in (False, True) for rate in live_rates]

    print(f"\n{'agent':42} {'agent ev/s':>11} {'outputs':>8} {'raw consume':>12} "
          f"{'ratio':>6} {'no-op Faust':>12} {'step only':>11}")
    for name, t, out, raw, nop, step, events in rows:
        print(f"{name:42} {events / t:>11,.0f} {out:>8,} {events / raw:>12,.0f} "
              f"{raw / t:>6.3f} {events / nop:>12,.0f} {events / step:>11,.0f}")
    one_w, two_w = (n / t for t in scaling)
    print(f"\nshare ratio, workers in one consumer group (shares has "
          f"{topic_spec('shares').partitions} partitions): 1 worker {one_w:,.0f} ev/s, "
          f"2 workers {two_w:,.0f} ev/s = {two_w / one_w:.2f}x one (goal >= 1.7x; "
          f"{os.cpu_count()} cores shared with the broker)")
    print(f"\nheadroom agent under live telemetry ({LIVE_DEVICES:,} ASICs, {live_s:g} s each; "
          "lag: a meter or feed reading stamped and sent -> its headroom handed to the "
          "producer; read/s: readings taken in over the load and the tail left when it "
          "stopped; ASICs: what the load's last headroom counted; all read: how long after "
          "the load the worker had read everything):")
    print(f"{'telemetry arrives':44} {'offered/s':>9} {'read/s':>7} {'headrooms':>9} "
          f"{'lag p50':>9} {'lag p99':>9} {'lag max':>9} {'ASICs':>7} {'all read':>8}")
    for topic, r in live:
        how = ("one record a reading, forwarder in the process" if topic else
               f"on the site feed, {FEED_BATCH} a record")
        print(f"{how:44} {r['offered']:>9,.0f} {r['sustained']:>7,.0f} {r['n']:>9} "
              f"{r['p50'] * 1000:>7.1f}ms "
              f"{r['p99'] * 1000:>7.1f}ms {r['max'] * 1000:>7.1f}ms {r['asics']:>7,.0f} "
              f"{r['drained']:>6.2f} s after")
    print("\nratio = agent / raw aiokafka consume of the same records (goal >= 0.25).  no-op "
          "Faust: an agent that only decodes, the ceiling Faust's per-event machinery leaves "
          "on this machine.  step only: the pure fold, no Kafka (what replay runs).")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=30_000)
    # the headroom agent folds 30,000 readings in well under a second, most of it the
    # consumer's start: its sustained rate is measured over more
    ap.add_argument("--site-events", type=int, default=150_000)
    ap.add_argument("--live-rates", type=int, nargs="*", default=[0, 25_000, 50_000],
                    help="telemetry readings/s of the loaded runs (0: control readings only)")
    ap.add_argument("--live-seconds", type=float, default=20.0)
    ap.add_argument("--one", choices=sorted(AGENTS), help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--shared", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        asyncio.run(one(args.one, args.bootstrap, args.events,
                        Path(args.shared) if args.shared else None))
    else:
        asyncio.run(main(args.events, args.site_events, args.live_rates, args.live_seconds))
