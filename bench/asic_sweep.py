"""ASIC telemetry sweep benchmark: hashplane's CGMiner connector reads N simulated miners
and publishes their telemetry and share deltas to the broker.  Prints measured numbers; not
a test.

    .venv/bin/python bench/asic_sweep.py [--asics 1000 10000] [--concurrency 512]

The simulated farm runs in its own process (``hashplane sim``); the connector and an
embedded Tansu broker run here.  Each sweep sends one ``summary+pools+stats+power+config+
version`` request per miner and publishes every event (acks=all) before it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.base import Emitter
from connectors.cgminer import SOURCE, AsicEndpoint, AsicTelemetry
from streams.broker import EmbeddedBroker
from streams.publish import Publisher
from streams.topics import ensure_topics


def start_farm(n: int, work: Path) -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    ep_file = work / "endpoints.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HASHPLANE_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "sim", "--asics", str(n), "--gpu-rigs", "0",
         "--data-dir", str(work), "--endpoints-file", str(ep_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    while "simulated farm up" not in (line := proc.stdout.readline()):
        if not line and proc.poll() is not None:
            raise SystemExit(f"sim exited with {proc.returncode}")
    return proc, json.loads(ep_file.read_text())["asics"]


async def run(n: int, concurrency: int, broker: EmbeddedBroker) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"hashplane-sweep{n}-"))
    proc, asics = start_farm(n, work)
    try:
        eps = [AsicEndpoint(str(a["id"]), str(a["host"]), int(a["port"]))  # type: ignore[call-overload]
               for a in asics]
        async with Publisher(broker.bootstrap, linger_ms=20) as pub:
            emitter = Emitter(pub, source=SOURCE, site="bench")
            conn = AsicTelemetry(eps, emitter, concurrency=concurrency, timeout_s=10.0)
            for i in (1, 2, 3):
                before = emitter.stats.events
                t0 = time.perf_counter()
                ok = await conn.sweep()
                dt = time.perf_counter() - t0
                lat = sorted(conn.latencies)
                p99 = statistics.quantiles(lat, n=100)[98] if len(lat) > 1 else lat[0]
                p50 = statistics.median(lat)
                print(f"  {n:>6,} ASICs sweep {i}: {dt:5.2f} s, {ok / dt:7,.0f} devices/s, "
                      f"{ok:,} answered, {emitter.stats.events - before:,} events published, "
                      f"read latency p50 {1000 * p50:.0f} ms p99 {1000 * p99:.0f} ms, "
                      f"errors {emitter.stats.errors}, dlq {emitter.stats.dlq}")
                await asyncio.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait(30)


async def main(sizes: list[int], concurrency: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 16384)), hard))
    broker = EmbeddedBroker()
    await broker.start()
    await ensure_topics(broker.bootstrap)
    print(f"hashplane ASIC sweep benchmark: concurrency {concurrency}, {os.cpu_count()} cores, "
          f"events to Tansu (acks=all); goal: 10,000 ASICs in <= 10 s")
    try:
        for n in sizes:
            await run(n, concurrency, broker)
    finally:
        await broker.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--asics", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--concurrency", type=int, default=512)
    a = ap.parse_args()
    asyncio.run(main(a.asics, a.concurrency))
