"""API load benchmark: the dashboard's hottest routes under concurrent clients while the
demo runs.  Prints measured numbers beside the goal; not a test.

    .venv/bin/python bench/api_load.py [--clients 32] [--seconds 20] [--asics 160]

``hashplane demo`` runs as a child process (simulated farm, Tansu, the worker, the sink, the
API on the embedded ClickHouse).  Once its history holds the fleet, ``--clients`` clients
(each a keep-alive HTTP/1.1 connection) loop on ``GET /v1/fleet`` and ``GET /v1/asics`` for
``--seconds``; latency is measured per request from send to the last byte.  Measured in the
same run, as the comparison: the same routes with one client (the floor: one request at a
time), and ``/healthz`` under the load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
GOAL_P99_MS = 100.0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def load(base: str, key: str, paths: list[str], clients: int,
               seconds: float) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {p: [] for p in paths}
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    host, port = base.removeprefix("http://").split(":")

    async def client(i: int) -> None:
        # a dashboard's keep-alive connection, as plain HTTP/1.1 on asyncio streams: the
        # clients share the machine with the demo, so they cost as little as a client can
        reader, writer = await asyncio.open_connection(host, int(port))
        n = i
        try:
            while time.perf_counter() < deadline:
                path = paths[n % len(paths)]
                n += 1
                t0 = time.perf_counter()
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                             f"{key}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                              if h.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                lat[path].append((time.perf_counter() - t0) * 1000)
                status = int(head.split(b" ", 2)[1])
                if status != 200:
                    errors.append(f"{path} {status}")
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    if errors:
        print(f"  {len(errors)} non-200 answers, e.g. {errors[:3]}")
    return lat


def report(label: str, lat: dict[str, list[float]], seconds: float) -> None:
    for path, xs in lat.items():
        print(f"  {label:<22} {path:<12} {len(xs) / seconds:7.1f} req/s   "
              f"p50 {pct(xs, 0.5):7.1f} ms   p99 {pct(xs, 0.99):7.1f} ms   "
              f"max {max(xs) if xs else float('nan'):7.1f} ms")


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="hashplane-apiload-"))
    port = args.port
    env = {**os.environ, "HASHPLANE_LOG_LEVEL": "WARNING"}
    log = open(data / "demo.log", "wb")
    demo = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--data-dir",
                             str(data), "--api-port", str(port), "--asics", str(args.asics)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        key = ""
        for _ in range(240):
            await asyncio.sleep(0.5)
            text = (data / "demo.log").read_text(errors="replace")
            m = re.search(r"API key\s+(\S+)", text)
            if m:
                key = m.group(1)
                break
            if demo.poll() is not None:
                raise SystemExit(f"demo exited:\n{text[-3000:]}")
        if not key:
            raise SystemExit("the demo printed no API key")
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            for _ in range(240):  # the history holds the fleet
                r = await c.get("/v1/asics")
                if r.status_code == 200 and len(r.json()["asics"]) >= args.asics:
                    break
                await asyncio.sleep(0.5)
        paths = ["/v1/fleet", "/v1/asics"]
        print(f"hashplane demo with {args.asics} simulated ASICs; {os.cpu_count()} CPUs")
        floor = await load(base, key, paths, 1, min(5.0, args.seconds))
        report("1 client (floor)", floor, min(5.0, args.seconds))
        health: list[float] = []

        async def probe_health() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                end = time.perf_counter() + args.seconds
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    await c.get("/healthz")
                    health.append((time.perf_counter() - t0) * 1000)
                    await asyncio.sleep(0.2)

        loaded, _ = await asyncio.gather(load(base, key, paths, args.clients, args.seconds),
                                         probe_health())
        report(f"{args.clients} clients", loaded, args.seconds)
        print(f"  /healthz under the load: p50 {pct(health, 0.5):.1f} ms, "
              f"p99 {pct(health, 0.99):.1f} ms ({len(health)} probes)")
        worst = max(pct(xs, 0.99) for xs in loaded.values())
        print(f"goal: p99 <= {GOAL_P99_MS:.0f} ms at {args.clients} clients -> worst p99 "
              f"{worst:.1f} ms: {'met' if worst <= GOAL_P99_MS else 'NOT met'}; "
              f"{statistics.fmean(len(x) for x in loaded.values()) / args.seconds:.0f} "
              f"req/s per route")
    finally:
        demo.terminate()
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--asics", type=int, default=160)
    ap.add_argument("--port", type=int, default=18766)
    asyncio.run(main(ap.parse_args()))
