"""ASIC telemetry sweep benchmark: hashplane's connector reads N simulated miners of the
five firmwares mixed and publishes their telemetry and share deltas to the broker; pyasic
reads the same fleet beside it.  Prints measured numbers; not a test.

    .venv/bin/python bench/asic_sweep.py [--asics 1000 10000] [--concurrency 512]
                                         [--firmware-mix luxos=1,...] [--no-pyasic]

The simulated farm runs in its own process (``hashplane sim``); the connector and an
embedded Tansu broker run here.  Each sweep reads every miner in its dialect (one RPC
request for LuxOS and Braiins, one plus a web call for VNish, two for Whatsminer) and
publishes every event (acks=all) before it ends.  pyasic then identifies every miner
(``get_miner``) and reads it (``get_data``) with the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.base import Emitter
from connectors.cgminer import SOURCE, AsicEndpoint, AsicTelemetry
from streams import supervise
from streams.broker import EmbeddedBroker
from streams.publish import Publisher
from streams.topics import ensure_topics

MIX = "luxos=1,braiins=1,antminer=1,whatsminer=1,vnish=1"
PYASIC_CONCURRENCY = 64


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process ``pid``."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_farm(n: int, work: Path, mix: str = MIX, base_ip: str = "127.0.1.1",
               ) -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    """``hashplane sim`` with ``n`` miners in its own process; its inventory's ASICs."""
    ep_file = work / "site.toml"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HASHPLANE_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "sim", "--asics", str(n), "--gpu-rigs", "0",
         "--data-dir", str(work), "--site-file", str(ep_file),
         "--firmware-mix", mix, "--asic-base-ip", base_ip],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    while "simulated farm up" not in (line := proc.stdout.readline()):
        if not line and proc.poll() is not None:
            raise SystemExit(f"sim exited with {proc.returncode}")
    return proc, tomllib.loads(ep_file.read_text())["asics"]


async def pyasic_read(hosts: list[str], concurrency: int) -> None:
    """pyasic on the same fleet: identify every miner, then read it."""
    import pyasic

    sem = asyncio.Semaphore(concurrency)

    async def bounded(coro: object) -> object:
        async with sem:
            try:
                return await coro  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - counted, not fatal
                return exc

    t0 = time.perf_counter()
    miners = await asyncio.gather(*(bounded(pyasic.get_miner(h)) for h in hosts))
    t1 = time.perf_counter()
    found = [m for m in miners if m is not None and not isinstance(m, Exception)]
    data = await asyncio.gather(*(bounded(m.get_data()) for m in found))  # type: ignore[attr-defined]
    t2 = time.perf_counter()
    ok = sum(1 for d in data if not isinstance(d, Exception) and d.hashrate is not None)  # type: ignore[attr-defined]
    print(f"  {len(hosts):>6,} ASICs pyasic ({concurrency} in flight): get_miner "
          f"{t1 - t0:6.2f} s ({len(found):,} identified), get_data {t2 - t1:6.2f} s ({ok:,} "
          f"with a hashrate; Braiins OS+ on S19/S21 needs its gRPC API, not simulated), "
          f"identify + read {t2 - t0:6.2f} s")


async def run(n: int, concurrency: int, broker: EmbeddedBroker, mix: str = MIX,
              with_pyasic: bool = True) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"hashplane-sweep{n}-"))
    proc, asics = start_farm(n, work, mix)
    try:
        eps = [AsicEndpoint(str(a["id"]), str(a["host"]), int(a["port"]),  # type: ignore[call-overload]
                            str(a["firmware"]), int(a.get("web_port", 80)),  # type: ignore[call-overload]
                            nameplate_w=a.get("nameplate_w"), model=str(a.get("model", "")))
               for a in asics]
        async with Publisher(broker.bootstrap, linger_ms=20) as pub:
            emitter = Emitter(pub, source=SOURCE, site="bench")
            conn = AsicTelemetry(eps, emitter, concurrency=concurrency, timeout_s=10.0)
            for i in (1, 2, 3):
                before = emitter.stats.events
                t0, c0, s0 = time.perf_counter(), cpu_s(), cpu_s(proc.pid)
                ok = await conn.sweep()
                dt = time.perf_counter() - t0
                ours, sim = cpu_s() - c0, cpu_s(proc.pid) - s0
                lat = sorted(conn.latencies)
                p99 = statistics.quantiles(lat, n=100)[98] if len(lat) > 1 else lat[0]
                p50 = statistics.median(lat)
                print(f"  {n:>6,} ASICs sweep {i}: {dt:5.2f} s, {ok / dt:7,.0f} devices/s, "
                      f"{ok:,} answered, {emitter.stats.events - before:,} events published, "
                      f"read latency p50 {1000 * p50:.0f} ms p99 {1000 * p99:.0f} ms, "
                      f"errors {emitter.stats.errors}, dlq {emitter.stats.dlq}; CPU: reader "
                      f"{ours:.2f} s, simulated farm {sim:.2f} s")
                await asyncio.sleep(1.0)
        if with_pyasic:
            # pyasic at 512 in flight times out its own identification on these 2 cores;
            # its default network-scan bound (255) and 64 both do better: 64 is used
            await pyasic_read([str(a["host"]) for a in asics], PYASIC_CONCURRENCY)
    finally:
        proc.terminate()
        proc.wait(30)


async def main(sizes: list[int], concurrency: int, mix: str = MIX,
               with_pyasic: bool = True) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 16384)), hard))
    broker = EmbeddedBroker()
    await broker.start()
    await ensure_topics(broker.bootstrap)
    print(f"hashplane ASIC sweep benchmark: concurrency {concurrency}, {os.cpu_count()} cores, "
          f"events to Tansu (acks=all); fleet {mix}; goal: 10,000 ASICs in <= 10 s")
    try:
        for n in sizes:
            await run(n, concurrency, broker, mix, with_pyasic)
    finally:
        await broker.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--asics", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--firmware-mix", default=MIX)
    ap.add_argument("--no-pyasic", action="store_true", help="skip pyasic's read")
    a = ap.parse_args()
    # the loop `hashplane connect asic` runs on (uvloop)
    supervise.run(main(a.asics, a.concurrency, a.firmware_mix, not a.no_pyasic))
