"""Memory against the size of the site: the worker's and the sink's resident memory at 1,000,
5,000 and 10,000 ASICs, in one run.  Prints measured numbers; not a test.

    .venv/bin/python bench/memory.py [--asics 1000 5000 10000] [--polls 6]

Each size gets a fresh Tansu broker and data directory, and ``hashplane worker`` and
``hashplane sink`` as their own processes, as in production.  The site's readings are
produced as the connectors publish them: every ASIC's telemetry and share counts once per
10 s of event time for ``--polls`` polls (ending now), the grid meter at 5 Hz and one feed
at 1 Hz whose capacity is above the fleet's draw (nothing is curtailed; the scheduler still
weighs every ASIC at each headroom).  Once both groups have committed every record (the
worker's internal site feed too), their resident memory (``VmRSS``) and peak (``VmHWM``)
are read from /proc.

Goal (#18): printed at 10,000 ASICs, growing no faster than linearly with devices: the
memory each added ASIC costs between the two largest sizes is at most what it costs between
the two smallest (+25 % for the allocator's steps).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.live import high_watermarks
from bench.profiling import status_kib
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GridMeasured,
    ShareCountsObserved,
)
from schemas.registry import TOPICS, topic_of
from schemas.settings import Settings
from streams.broker import EmbeddedBroker
from streams.codec import encode, encode_key
from streams.feed import group_id as feed_group
from streams.feed import partition_group_id
from streams.runtime import settings_env
from streams.topics import FED, SITE_FEED, ensure_topics, partition_feed

POLL_S = 10.0
DRAW_W = 3050.0


def site_events(asics: int, polls: int, end: datetime) -> list[Event]:
    """Telemetry and shares of every ASIC each poll, the meter at 5 Hz, one feed at 1 Hz."""
    start = end - timedelta(seconds=polls * POLL_S)
    out: list[Event] = []
    for k in range(int(polls * POLL_S * 5)):
        ts = start + timedelta(seconds=k / 5)
        out.append(GridMeasured(site="site-1", device_id="meter", ts=ts, source="bench",
                                frequency_hz=50.0, voltage_v=400, active_power_kw=1000,
                                reactive_power_kvar=10))
        if k % 5 == 0:
            out.append(FeedPowerMeasured(
                site="site-1", device_id="feed-a", ts=ts, source="bench", feed_id="feed-a",
                voltage_v=400, current_a=1000, power_kw=asics * DRAW_W / 1000,
                capacity_kw=2 * asics * DRAW_W / 1000))
    for poll in range(polls):
        for i in range(asics):
            ts = start + timedelta(seconds=poll * POLL_S + POLL_S * i / asics)
            d = f"asic-{i:05d}"
            out.append(AsicTelemetryObserved(
                site="site-1", device_id=d, ts=ts, source="bench", model="S19j Pro",
                state="running", hashrate_ths=104.0, hashrate_avg_ths=104.0, power_w=DRAW_W,
                temp_chip_c=70.0, accepted=20 * poll, rejected=poll // 3, stale=0,
                hardware_errors=0, elapsed_s=600 + int(poll * POLL_S),
                pool_url="stratum+tcp://pool:3333"))
            out.append(ShareCountsObserved(
                site="site-1", device_id=d, ts=ts, source="bench", worker=f"acct.{d}",
                pool="stratum+tcp://pool:3333", accepted=20, rejected=poll % 3 == 0, stale=0,
                difficulty_accepted=65536.0 * 20, interval_s=POLL_S))
    return sorted(out, key=lambda e: e.ts)


async def produce(bootstrap: str, events: list[Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=1024 * 1024)
    await producer.start()
    try:
        futs = [await producer.send(topic_of(type(e)).name, encode(e), key=encode_key(e))
                for e in events]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of ``topics`` the group has not committed yet (against the high watermarks a
    fetch reports: Tansu's ListOffsets alone answers short).  Unlike the API's
    ``consumer_lag``, a partition the group has not committed at all counts whole: here
    "nothing committed yet" means behind, not unknown."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in c.partitions_for_topic(t) or ()]
        ends = await high_watermarks(c, tps)
        left = 0
        for tp in tps:
            left += max(0, ends[tp] - (await c.committed(tp) or 0))
        return left
    finally:
        await c.stop()


def start(command: str, settings: Settings, work: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "streams.cli", command], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{command}.log", "wb"))


async def one_size(asics: int, polls: int, work: Path) -> dict[str, tuple[int, int]]:
    """Resident and peak KiB of the worker and the sink once a site of ``asics`` is folded."""
    broker = EmbeddedBroker(log_file=work / "broker.log")
    await broker.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        s = Settings(data_dir=work, kafka_bootstrap=broker.bootstrap)
        await ensure_topics(broker.bootstrap)
        events = site_events(asics, polls, datetime.now(UTC))
        procs = {name: start(name, s, work) for name in ("worker", "sink")}
        await produce(broker.bootstrap, events)
        # the worker's forwarders first (streams/feed.py: groups of their own), then what
        # its Faust agents read of the feeds they filled
        groups = [("worker", feed_group(s.app_id), ["asic.telemetry", "shares"]),
                  ("worker", partition_group_id(s.app_id), list(FED)),
                  ("worker", s.app_id, [*map(partition_feed, FED), "grid.readings",
                                        "power.readings", SITE_FEED]),
                  ("sink", s.sink_group, [t.name for t in TOPICS])]
        deadline = time.monotonic() + 900
        for name, group, topics in groups:
            # twice at zero, a second apart: the site feed's last batch may still linger
            settled = False
            while (left := await lag(broker.bootstrap, group, topics)) > 0 or not settled:
                settled = left == 0
                if procs[name].poll() is not None:
                    raise SystemExit(f"{name} exited ({procs[name].returncode}); see "
                                     f"{work / (name + '.log')}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"{asics} ASICs: {name} still {left:,} records behind "
                                     f"after 900 s")
                await asyncio.sleep(1.0)
        return {name: (status_kib(p.pid), status_kib(p.pid, "VmHWM"))
                for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        await broker.stop()


async def main(sizes: list[int], polls: int) -> int:
    print(f"hashplane memory benchmark: worker and sink resident memory against ASICs, "
          f"{polls} polls each ({polls * 2:,} records an ASIC), {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    results: dict[int, dict[str, tuple[int, int]]] = {}
    for n in sizes:
        t0 = time.perf_counter()
        results[n] = await one_size(n, polls, Path(tempfile.mkdtemp(prefix="hashplane-mem-")))
        print(f"  {n:>6,} ASICs folded in {time.perf_counter() - t0:5.1f} s: " + ", ".join(
            f"{name} {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f})"
            for name, (rss, hwm) in results[n].items()), flush=True)
    print(f"\n{'process':8} " + " ".join(f"{f'{n:,} ASICs':>13}" for n in sizes)
          + f" {'KiB per added ASIC, by step':>30}")
    ok = True
    for name in ("worker", "sink"):
        rss = [results[n][name][0] for n in sizes]
        per = [(rss[k + 1] - rss[k]) / (sizes[k + 1] - sizes[k]) for k in range(len(sizes) - 1)]
        print(f"{name:8} " + " ".join(f"{r / 1024:>9.0f} MiB" for r in rss) + "   "
              + " -> ".join(f"{p:.1f}" for p in per))
        if len(per) >= 2 and per[-1] > max(per[0], 1.0) * 1.25:
            ok = False
    print(f"goal: printed at {max(sizes):,} ASICs and no faster than linear "
          f"(the last step's KiB per ASIC <= 1.25x the first's): {'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--asics", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--polls", type=int, default=6)
    args = ap.parse_args()
    raise SystemExit(asyncio.run(main(sorted(args.asics), args.polls)))
