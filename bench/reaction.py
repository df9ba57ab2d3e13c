"""Demand-response reaction benchmark: from the grid frequency crossing a band edge to the
last ASIC's applied ack, for 160 and 1,000 simulated ASICs.  Prints measured numbers; not a
test.

    .venv/bin/python bench/reaction.py [--asics 160 1000] [--dips 5] [--trace]

The whole system runs as in production: the simulated farm here (LuxOS miners on their own
loopback addresses, the Modbus meter, MQTT feeds), a Tansu broker, and ``hashplane up
--site`` as a child process (meter, feed and ASIC connectors, the ASIC actuator, the
Faust worker with every agent, the history sink).  Each dip steps the simulated grid to
49.4 Hz (the deepest default band: target load 0) at a recorded instant; the clock stops at
the arrival of the last ``applied`` SleepAsic ack on ``commands.acks``.  Then the grid
returns to 50 Hz and the fleet is woken before the next dip.  The floor, measured in the same
run: one meter poll period plus one RPC round trip to a miner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.cgminer import rpc
from schemas.commands import CommandAcknowledged
from sim.farm import Farm, FarmConfig
from streams.broker import EmbeddedBroker
from streams.codec import decode
from streams.topics import ensure_topics

METER_POLL_S = 0.2


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


class Acks:
    """Every ack on commands.acks with its arrival time (monotonic)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.got: list[tuple[float, CommandAcknowledged]] = []
        self.other: list[tuple[float, str, Any]] = []  # arrivals on the path, for --debug
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer("commands.acks", "commands.asic", "metrics.energy",
                                         "grid.readings", bootstrap_servers=self.bootstrap,
                                         fetch_max_wait_ms=20,
                                         group_id=None, auto_offset_reset="latest")
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=50)
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    e = decode(r.topic, r.value)
                    if isinstance(e, CommandAcknowledged):
                        self.got.append((now, e))
                    else:
                        self.other.append((now, r.topic, e))

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()


async def until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def step_grid(farm: Farm, hz: float) -> None:
    """Move the simulated grid to ``hz`` at once (a crisp band crossing)."""
    farm.grid.setpoint_hz = hz
    farm.grid.mean_hz = farm.grid.frequency_hz = hz


#: The fleets compared at each size: LuxOS only, and the five firmwares mixed.
FLEETS: dict[str, dict[str, int]] = {
    "luxos": {"luxos": 1},
    "mixed": {"luxos": 1, "braiins": 1, "antminer": 1, "whatsminer": 1, "vnish": 1}}


async def run(n: int, dips: int, work: Path, trace: bool = False,
              fleet: str = "luxos") -> dict[str, Any]:
    farm = Farm(FarmConfig(asics=n, gpu_rigs=0, model_endpoints=0, data_dir=work / "sim",
                           asic_base_ip="127.1.0.1", speed=30.0, firmware_mix=FLEETS[fleet]))
    await farm.start()
    broker = EmbeddedBroker(log_file=work / "broker.log")
    await broker.start()
    await ensure_topics(broker.bootstrap)
    devices = farm.write_site(work / "site.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_KAFKA_BOOTSTRAP=broker.bootstrap,
               HASHPLANE_DATA_DIR=str(work / "data"), HASHPLANE_API_PORT="0",
               HASHPLANE_CLICKHOUSE_DSN=f"chdb://{work / 'ch'}",
               HASHPLANE_METER_POLL_S=str(METER_POLL_S), HASHPLANE_ASIC_POLL_S="10",
               HASHPLANE_BAND_HOLD_S="1", HASHPLANE_SCHED_MIN_ON_S="0",
               HASHPLANE_SCHED_MIN_OFF_S="0", HASHPLANE_SCHED_WAKE_BATCH=str(n),
               HASHPLANE_SCHED_WAKE_INTERVAL_S="0", HASHPLANE_ENERGY_MARGIN_KW="0",
               HASHPLANE_LOG_LEVEL="WARNING")
    up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--site", str(devices),
                           "--env-file", str(devices.with_suffix(".env"))],
                          env=env, stdout=open(work / "up.log", "wb"), stderr=subprocess.STDOUT)
    acks = Acks(broker.bootstrap)
    await acks.start()
    rtts: list[float] = []
    try:
        a0 = farm.asics[0]
        for _ in range(20):
            t = time.perf_counter()
            await rpc(a0.host, farm.config.asic_port, "summary")
            rtts.append(time.perf_counter() - t)
        await asyncio.sleep(25)  # the worker joins; telemetry tells the scheduler the fleet
        last: list[float] = []
        every: list[float] = []
        failed: list[int] = []  # dips whose acks did not all arrive in 60 s: how many did
        for _ in range(dips):
            await until(lambda: all(a.state in ("running", "waking") for a in farm.asics),
                        120, "the fleet awake")
            await asyncio.sleep(3)  # telemetry shows them on again
            seen = len(acks.got)
            t0, w0 = time.monotonic(), time.time()
            step_grid(farm, 49.4)

            def slept(seen: int = seen) -> list[float]:
                done = {a.device_id: at for at, a in acks.got[seen:]
                        if a.command_kind == "SleepAsic" and a.status == "applied"}
                return list(done.values()) if len(done) >= n else []

            try:
                await until(lambda: bool(slept()), 60, f"{n} applied SleepAsic acks")
            except SystemExit as exc:  # an incomplete dip is a result too: counted, printed
                done = {a.device_id for _, a in acks.got[seen:]
                        if a.command_kind == "SleepAsic" and a.status == "applied"}
                print(f"  {fleet} dip {len(last) + len(failed) + 1}: {exc} ({len(done)} of "
                      f"{n} acked)", flush=True)
                failed.append(len(done))
                step_grid(farm, 50.0)
                continue
            times = [at - t0 for at in slept()]
            if trace:
                for topic in ("grid.readings", "metrics.energy", "commands.asic"):
                    arr = [at - t0 for at, tp, e in acks.other if tp == topic and at > t0
                           and (topic != "grid.readings" or e.frequency_hz < 49.5)
                           and (topic != "metrics.energy" or e.band != "normal")]
                    print(f"  {topic}: first {min(arr, default=-1):.3f} last "
                          f"{max(arr, default=-1):.3f} n={len(arr)}")
                sl = [a for _, a in acks.got[seen:] if a.command_kind == "SleepAsic"]
                issued = sorted(a.ts.timestamp() - a.latency_ms / 1000 - w0 for a in sl)
                acked = sorted(a.ts.timestamp() - w0 for a in sl)
                print(f"issued {issued[0]:.3f}..{issued[-1]:.3f} acked {acked[0]:.3f}.."
                      f"{acked[-1]:.3f} arrived {min(times):.3f}..{max(times):.3f}")
            last.append(max(times))
            every += times
            step_grid(farm, 50.0)
        return {"n": n, "fleet": fleet, "last": last, "every": every, "failed": failed,
                "floor": METER_POLL_S + statistics.median(rtts), "rtt": statistics.median(rtts)}
    finally:
        await acks.stop()
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        await broker.stop()
        await farm.stop()


async def main(sizes: list[int], dips: int, trace: bool, fleets: list[str]) -> None:
    print(f"hashplane reaction benchmark: {dips} dips per fleet, {os.cpu_count()} cores; "
          f"grid stepped to 49.4 Hz -> last applied SleepAsic ack; fleets: "
          + "; ".join(f"{f} ({', '.join(FLEETS[f])})" for f in fleets))
    rows = []
    for n in sizes:
        for fleet in fleets:
            rows.append(await run(n, dips, Path(tempfile.mkdtemp(
                prefix=f"hashplane-react-{n}-{fleet}-")), trace, fleet))
    print(f"\n{'ASICs':>6} {'fleet':>6} {'last ack p50':>13} {'p99':>7} {'every ack p50':>14} "
          f"{'p99':>7} {'floor':>7}  (poll {METER_POLL_S:g} s + RPC)")
    for r in rows:
        if not r["last"]:
            print(f"{r['n']:>6} {r['fleet']:>6} no dip completed ({len(r['failed'])} failed)")
            continue
        if r["failed"]:
            print(f"{r['n']:>6} {r['fleet']:>6} {len(r['failed'])} of "
                  f"{len(r['failed']) + len(r['last'])} dips incomplete after 60 s "
                  f"(acks seen: {', '.join(map(str, r['failed']))})")
        print(f"{r['n']:>6} {r['fleet']:>6} {pct(r['last'], 50):>12.3f}s "
              f"{pct(r['last'], 99):>6.3f}s "
              f"{pct(r['every'], 50):>13.3f}s {pct(r['every'], 99):>6.3f}s "
              f"{r['floor']:>6.3f}s  (RPC {1000 * r['rtt']:.1f} ms)")
    print("\ngoal: last-ack p99 <= 1 s at 1,000 ASICs (seed 003 asked < 2 s for 160)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--asics", type=int, nargs="+", default=[160, 1000])
    ap.add_argument("--dips", type=int, default=5)
    ap.add_argument("--fleets", nargs="+", choices=list(FLEETS), default=list(FLEETS),
                    help="LuxOS-only and/or the five firmwares mixed (default both)")
    ap.add_argument("--trace", action="store_true",
                    help="per dip: when the reading, the headroom, the commands and acks arrived")
    args = ap.parse_args()
    asyncio.run(main(args.asics, args.dips, args.trace, args.fleets))
