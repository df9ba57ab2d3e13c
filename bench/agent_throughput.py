"""Agent throughput benchmark: the share-ratio and headroom agents against the raw aiokafka
consume rate of the same records, in one run.  Prints measured numbers; not a test.

    .venv/bin/python bench/agent_throughput.py [--events 30000]

Each agent runs alone in a Faust worker (its own process) on a fresh Tansu broker, over records
produced beforehand, publishing its outputs to the real topics; throughput is input events
over the time from the agent's first event to its last (Faust's monitor counts them).  Also
printed, same run and same records: a no-op Faust agent (the ceiling Faust's per-event
machinery leaves) and the pure step functions alone (no Kafka; what replay runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faust
from faust.worker import Worker
from ingest import raw_consume  # bench/ is on the path of a script run from bench/

from agents import energy, share_ratio
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GridMeasured,
    ShareCountsObserved,
)
from schemas.registry import topic as topic_spec
from schemas.registry import topic_of
from schemas.settings import Settings
from streams import worker as runner
from streams.app import BATCH_HEADER, create_app, decoded, pack
from streams.broker import EmbeddedBroker
from streams.cli import long_running_gc
from streams.codec import encode, encode_key
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

    register(app)(app, counting)
    worker = Worker(app, loop=asyncio.get_running_loop(), loglevel="WARNING",
                    override_logging=False, quiet=True)
    task = asyncio.ensure_future(worker.start())
    first = None
    deadline = time.perf_counter() + 600
    while time.perf_counter() < deadline:
        seen = app.monitor.events_total
        if seen and first is None:
            first = time.monotonic()
        if shared is not None:
            shared.write_text(f"{first or 0} {seen}")
            if shared.with_suffix(".stop").exists():
                break
        elif seen >= n:
            break
        await asyncio.sleep(0.01)
    else:
        raise SystemExit(f"{name}: saw {app.monitor.events_total} of {n} events in 600 s")
    assert first is not None
    elapsed = time.monotonic() - first
    await worker.stop()
    task.cancel()
    return elapsed, sent[0]


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


AGENTS: dict[str, Callable[[Settings], Callable[[faust.App], Any]]] = {
    "share-ratio": lambda s: lambda app: lambda a, p: runner.register(a, s, share_ratio.SPEC, p),
    "energy": lambda s: lambda app: lambda a, p: runner.register(a, s, energy.SPEC, p),
    "noop-shares": lambda s: noop(("shares",)),
    "noop-site": lambda s: noop((SITE_FEED, "grid.readings", "power.readings")),
}


async def one(name: str, bootstrap: str, n: int, shared: Path | None = None) -> None:
    """Child mode: one agent in a fresh process (one Faust app per process), with the
    garbage collector set as ``hashplane worker`` sets it."""
    long_running_gc()
    s = Settings(data_dir=Path(tempfile.mkdtemp()), kafka_bootstrap=bootstrap)
    t, out = await run_agent(s, name, AGENTS[name](s), n, shared)
    print(f"RESULT {t} {out}", flush=True)


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
            got = [f.read_text().split() for f in files if f.exists()]
            got = [(float(a), int(b)) for a, b in (g for g in got if len(g) == 2)]
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


async def main(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="hashplane-bench-agents-"))
    s = Settings(data_dir=work)
    print(f"hashplane agent benchmark: {n:,} events per agent, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, faust-streaming {faust.__version__}")
    shares = share_events(n)
    site = site_events(n)
    rows = []
    t, out, raw_s, noop_s = await measure(work, as_records(shares, feed=False), ["shares"],
                                          "share-ratio", "noop-shares")
    t0 = time.perf_counter()
    share_ratio.fold(shares, scopes=("worker", "device"),  # type: ignore[arg-type]
                     windows=tuple(s.share_windows_s), grace_s=s.share_grace_s,
                     update_s=s.share_update_s)
    step_s = time.perf_counter() - t0
    rows.append(("share ratio (worker+device, 1m/15m/1h)", t, out, raw_s, noop_s, step_s))

    t, out, raw_s, noop_s = await measure(
        work, as_records(site, feed=True), [SITE_FEED, "grid.readings", "power.readings"],
        "energy", "noop-site")
    t0 = time.perf_counter()
    energy.fold(site, energy.params(s))  # type: ignore[arg-type]
    step_s = time.perf_counter() - t0
    rows.append(("energy headroom (telemetry, meter, feeds)", t, out, raw_s, noop_s, step_s))

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

    print(f"\n{'agent':42} {'agent ev/s':>11} {'outputs':>8} {'raw consume':>12} "
          f"{'ratio':>6} {'no-op Faust':>12} {'step only':>11}")
    for name, t, out, raw, nop, step in rows:
        print(f"{name:42} {n / t:>11,.0f} {out:>8,} {n / raw:>12,.0f} {raw / t:>6.3f} "
              f"{n / nop:>12,.0f} {n / step:>11,.0f}")
    one_w, two_w = (n / t for t in scaling)
    print(f"\nshare ratio, workers in one consumer group (shares has "
          f"{topic_spec('shares').partitions} partitions): 1 worker {one_w:,.0f} ev/s, "
          f"2 workers {two_w:,.0f} ev/s = {two_w / one_w:.2f}x one (goal >= 1.7x; "
          f"{os.cpu_count()} cores shared with the broker)")
    print("\nratio = agent / raw aiokafka consume of the same records (goal >= 0.25).  no-op "
          "Faust: an agent that only decodes, the ceiling Faust's per-event machinery leaves "
          "on this machine.  step only: the pure fold, no Kafka (what replay runs).")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--one", choices=sorted(AGENTS), help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--shared", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        asyncio.run(one(args.one, args.bootstrap, args.events,
                        Path(args.shared) if args.shared else None))
    else:
        asyncio.run(main(args.events))
