"""Replay throughput: events/s from ClickHouse through the agents' step functions.

    .venv/bin/python bench/replay.py [--asics 1000] [--minutes 20]

Builds a site's log in the real ClickHouse engine (chdb, a temporary directory): ASIC
telemetry every 10 s, grid meter at 5 Hz, two supply feeds at 1 Hz, the headroom metric at
1 Hz, a grid dip with the scheduler's sleep/wake acks, an uplink probe every 5 s.  Then
times ``rebuild`` (read the log in event-time order, decode, fold through energy, scheduler,
failover, compute gate and alerts: every durable site agent of agents/registry.py), beside
the ClickHouse read alone.  Prints measured numbers.
Goal: >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.commands import CommandAcknowledged
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GridMeasured,
    UplinkStatusObserved,
)
from schemas.metrics import EnergyHeadroomComputed
from schemas.registry import topic_of
from schemas.settings import Settings
from streams.codec import decode, encode
from streams.history import HistoryStore
from streams.replay import SITE_TOPICS, SiteFold, read_log, rebuild

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def site_log(asics: int, minutes: int) -> list[Event]:
    out: list[Event] = []
    secs = minutes * 60

    def at(s: float) -> datetime:
        return T0 + timedelta(seconds=s)

    for s10 in range(0, secs, 10):
        for i in range(asics):
            asleep = secs / 3 <= s10 < secs / 2
            out.append(AsicTelemetryObserved(
                site="site-1", device_id=f"asic-{i:05d}", ts=at(s10 + (i % 100) / 10),
                source="bench", model="S19j Pro", state="sleeping" if asleep else "running",
                hashrate_ths=0.0 if asleep else 104.0, hashrate_avg_ths=104.0,
                power_w=12.0 if asleep else 3250.0, temp_chip_c=70.0, accepted=s10,
                rejected=0, stale=0, hardware_errors=0, elapsed_s=s10,
                pool_url="stratum+tcp://pool.example:3333"))
    for k in range(secs * 5):
        hz = 49.6 if secs / 3 <= k / 5 < secs / 2 else 50.0
        out.append(GridMeasured(site="site-1", device_id="meter", ts=at(k / 5), source="bench",
                                frequency_hz=hz, voltage_v=400, active_power_kw=3000,
                                reactive_power_kvar=10))
    for s in range(secs):
        for f in ("feed-a", "feed-b"):
            out.append(FeedPowerMeasured(site="site-1", device_id=f, ts=at(s), source="bench",
                                         feed_id=f, voltage_v=400, current_a=1000,
                                         power_kw=1600, capacity_kw=2000))
        out.append(EnergyHeadroomComputed(
            site="site-1", device_id="site-1", ts=at(s), source="agent:energy",
            supply_kw=4000, margin_kw=10, available_kw=3990, load_kw=3250, asic_load_kw=3250,
            gpu_load_kw=0, headroom_kw=740, frequency_hz=50.0, band="normal",
            target_load_kw=3990))
    for s in range(0, secs, 5):
        out.append(UplinkStatusObserved(site="site-1", device_id="uplink", ts=at(s),
                                        source="bench", target="pool.example:3333", up=True))
    for i in range(asics):
        for kind, t in (("SleepAsic", secs / 3), ("WakeAsic", secs / 2)):
            out.append(CommandAcknowledged(
                site="site-1", device_id=f"asic-{i:05d}", ts=at(t + 0.5), source="bench",
                command_id=uuid.uuid4(), command_kind=kind, status="applied", detail="ok",
                latency_ms=300.0, actuator="actuator:asic"))
    return out


def store_log(store: HistoryStore, events: list[Event]) -> None:
    now = datetime.now(UTC)
    rows: list[tuple[Any, ...]] = []
    for n, e in enumerate(events):
        rows.append((e.event_id, topic_of(type(e)).name, e.kind, e.schema_version, e.site,
                     e.device_id, e.ts, now, e.source, encode(e).decode(), 0, n))
        if len(rows) >= 50_000:
            store.insert_events(rows)
            rows = []
    if rows:
        store.insert_events(rows)


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off, as ``rebuild`` runs its fold."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--asics", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"# replay throughput ({platform.processor() or platform.machine()}, "
          f"python {platform.python_version()})")
    events = site_log(args.asics, args.minutes)
    with tempfile.TemporaryDirectory() as d:
        store = HistoryStore(f"chdb://{d}/ch").open()
        store.migrate()
        t0 = time.perf_counter()
        store_log(store, events)
        print(f"log: {len(events):,} events ({args.asics} ASICs, {args.minutes} min), stored "
              f"in {time.perf_counter() - t0:.1f}s")
        s = Settings(data_dir=Path(d))
        since, until = T0 - timedelta(seconds=1), T0 + timedelta(minutes=args.minutes + 1)
        results: dict[str, list[float]] = {"read": [], "decode": [], "fold": [], "fast": []}
        rows = list(read_log(store, since, until, SITE_TOPICS))
        per_agent: dict[str, float] = {}  # agent -> seconds per logged event, folded alone
        for _ in range(args.runs):
            t0 = time.perf_counter()
            n = sum(1 for _ in read_log(store, since, until, SITE_TOPICS))
            results["read"].append(n / (time.perf_counter() - t0))
            with paused_gc():  # as rebuild runs
                t0 = time.perf_counter()
                decoded = [decode(topic, payload) for topic, _, payload in rows]
                results["decode"].append(len(rows) / (time.perf_counter() - t0))
                alone = SiteFold(s)
                t0 = time.perf_counter()
                for e in decoded:
                    alone.feed(e)
                results["fold"].append(len(rows) / (time.perf_counter() - t0))
                if not per_agent:
                    for name in (a.name for a in alone.specs):
                        one = SiteFold(s, agents=[name])
                        t0 = time.perf_counter()
                        for e in decoded:
                            one.feed(e)
                        per_agent[name] = (time.perf_counter() - t0) / len(rows)
            del decoded
            t0 = time.perf_counter()
            fold = rebuild(store, s, since, until)
            results["fast"].append(fold.events / (time.perf_counter() - t0))
        assert n == len(events) == fold.events == alone.events
        assert alone.tables() == fold.tables()
        cycles = {v[0] for v in fold.tables()["scheduler_asics"].values()}
        store.close()
    print(f"rebuilt state: {len(fold.tables()['scheduler_asics'])} ASICs, cycles {cycles}, "
          f"{len(fold.tables()['failover_home_pools'])} home pools")
    print(f"{'path':46} {'events/s (min-max over runs)':>30}")
    for name, label in (("read", "ClickHouse read only (event-time order)"),
                        ("decode", "decode only (rows in memory)"),
                        ("fold", "step functions only (events in memory)"),
                        ("fast", "rebuild: read + decode + step functions")):
        v = results[name]
        print(f"{label:46} {min(v):>14,.0f} - {max(v):>12,.0f}")
    print("step functions, each agent folding the log alone (us per logged event): "
          + ", ".join(f"{name} {1e6 * t:.1f}" for name, t in per_agent.items()))
    best = max(results["fast"])
    print(f"goal >= 100,000 events/s through the step functions: "
          f"{'MET' if min(results['fast']) >= 100_000 else 'NOT MET'} "
          f"(min {min(results['fast']):,.0f}, max {best:,.0f})")


if __name__ == "__main__":
    main()
