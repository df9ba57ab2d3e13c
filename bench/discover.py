"""Discovery benchmark: ``hashplane site discover`` against pyasic's network scan on the
same simulated fleet (the five firmwares mixed).  Prints measured numbers; not a test.

    .venv/bin/python bench/discover.py [--asics 1000] [--concurrency 512]

The simulated farm runs in its own process (``hashplane sim``) on 127.2.0.1 onwards; both
scans run here, one after the other, over the same networks (every address of them, the
empty ones included), and what each found is checked against the farm's inventory.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.asic_sweep import start_farm as sweep_farm
from connectors.discovery import scan

BASE = "127.2.0.1"
MIX = "luxos=1,braiins=1,antminer=1,whatsminer=1,vnish=1"
PYASIC_NAMES = {"luxos": "LuxOS", "braiins": "BOS", "antminer": "Stock", "whatsminer": "Stock",
                "vnish": "Stock"}  # pyasic names VNish "Stock" without its web page on :80


def start_farm(n: int, work: Path) -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    return sweep_farm(n, work, MIX, BASE)


def networks(n: int) -> list[str]:
    """The one network an operator would name: the smallest that holds every miner."""
    last = ipaddress.ip_address(BASE) + n - 1
    prefix = 32
    while last not in ipaddress.ip_network(f"127.2.0.0/{prefix}", strict=False):
        prefix -= 1
    return [f"127.2.0.0/{prefix}"]


async def ours(nets: list[str], concurrency: int) -> tuple[float, dict[str, str]]:
    t0 = time.perf_counter()
    found = await scan(nets, concurrency=concurrency, timeout_s=1.0)
    return time.perf_counter() - t0, {f.host: f.firmware for f in found}


async def theirs(nets: list[str]) -> tuple[float, dict[str, str]]:
    from pyasic.network import MinerNetwork

    t0 = time.perf_counter()
    out: dict[str, str] = {}
    for net in nets:
        for m in await MinerNetwork.from_subnet(net).scan():
            out[str(m.ip)] = str(m.firmware)
    return time.perf_counter() - t0, out


async def main(n: int, concurrency: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 16384)), hard))
    work = Path(tempfile.mkdtemp(prefix="hashplane-discover-"))
    proc, asics = start_farm(n, work)
    try:
        nets = networks(n)
        size = sum(ipaddress.ip_network(x).num_addresses for x in nets)
        truth = {str(a["host"]): str(a["firmware"]) for a in asics}
        print(f"discovery benchmark: {n:,} simulated miners ({MIX}) in {', '.join(nets)} "
              f"({size:,} addresses), {os.cpu_count()} cores")
        dt, got = await ours(nets, concurrency)
        right = sum(got.get(h) == fw for h, fw in truth.items())
        print(f"  hashplane site discover: {dt:6.2f} s, {size / dt:7,.0f} addresses/s, found "
              f"{len(got):,}, firmware right {right:,}/{n:,}")
        missed = [fw for h, fw in truth.items() if got.get(h) != fw]
        if missed:
            print(f"    missed: {', '.join(f'{k} {missed.count(k)}' for k in sorted(set(missed)))}")
        slices = [str(s) for net in nets for s in ipaddress.ip_network(net).subnets(
            new_prefix=max(24, ipaddress.ip_network(net).prefixlen))]
        for label, what in (("the same network", nets), ("/24 by /24", slices)):
            dt2, got2 = await theirs(what)
            right2 = sum(got2.get(h, "").startswith(PYASIC_NAMES[fw])
                         for h, fw in truth.items())
            print(f"  pyasic MinerNetwork.scan, {label}: {dt2:6.2f} s, {size / dt2:7,.0f} "
                  f"addresses/s, found {len(got2):,}, firmware right {right2:,}/{n:,}; "
                  f"hashplane {dt2 / dt:.1f}x faster")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--asics", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=512)
    a = ap.parse_args()
    asyncio.run(main(a.asics, a.concurrency))
