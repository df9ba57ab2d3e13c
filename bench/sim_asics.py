"""Simulated-farm benchmark: start N simulated ASICs (their own loopback address each, LuxOS
RPC on :4028) and sweep-read all of them with bounded concurrency.  Prints measured numbers;
not a test.

    .venv/bin/python bench/sim_asics.py [--asics 10000] [--concurrency 512]

The farm runs in its own process (``hashplane sim``), as it would beside the connector; the
sweep client here sends ``summary+pools+stats`` (what a telemetry read needs) to every miner.
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
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def read_one(host: str, port: int, timeout_s: float) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        writer.write(b'{"command":"summary+pools+stats"}')
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    reply = json.loads(data.rstrip(b"\x00"))
    assert reply["summary"][0]["STATUS"][0]["STATUS"] == "S"
    return time.perf_counter() - t0


async def sweep(asics: list[dict[str, object]], concurrency: int,
                timeout_s: float = 10.0) -> tuple[float, list[float], int]:
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors = 0

    async def one(a: dict[str, object]) -> None:
        nonlocal errors
        async with sem:
            try:
                lat.append(await read_one(str(a["host"]), int(a["port"]), timeout_s))  # type: ignore[call-overload]
            except (OSError, TimeoutError, ValueError, KeyError):
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(a) for a in asics))
    return time.perf_counter() - t0, lat, errors


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def main(n: int, concurrency: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 4096)), hard))
    work = Path(tempfile.mkdtemp(prefix="hashplane-simbench-"))
    ep_file = work / "site.toml"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HASHPLANE_LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "sim", "--asics", str(n), "--gpu-rigs", "0",
         "--data-dir", str(work), "--site-file", str(ep_file),
         "--firmware-mix", "luxos=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        while "simulated farm up" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise SystemExit(f"sim exited with {proc.returncode}")
        start_s = time.perf_counter() - t0
        in_process = line.split("up in ")[1].split("s:")[0]
        asics = tomllib.loads(ep_file.read_text())["asics"]
        assert len(asics) == n
        print(f"hashplane simulated-ASIC benchmark: {n:,} ASICs, concurrency {concurrency}, "
              f"{os.cpu_count()} cores")
        print(f"  start: {start_s:.1f} s from launch to every endpoint listening "
              f"({in_process} s inside the farm; goal <= 30 s)")
        for i in (1, 2):
            total, lat, errors = await sweep(asics, concurrency)
            print(f"  sweep {i}: {total:.2f} s for {len(lat):,} reads ({len(lat) / total:,.0f} "
                  f"devices/s), errors {errors}, per-device latency p50 "
                  f"{1000 * p(lat, 50):.1f} ms, p99 {1000 * p(lat, 99):.1f} ms "
                  f"(goal: sweep <= 10 s)")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--asics", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=512)
    a = ap.parse_args()
    asyncio.run(main(a.asics, a.concurrency))
