"""Demand-response reaction benchmark: from the grid frequency crossing a band edge to the
last ASIC's applied ack, for 160 and 1,000 simulated ASICs.  Prints measured numbers; not a
test.

    .venv/bin/python bench/reaction.py [--asics 160 1000] [--dips 5] [--trace]

The whole system runs as in production: the simulated farm here (LuxOS miners on their own
loopback addresses, the Modbus meter, MQTT feeds), a Tansu broker, and ``hashplane up
--site`` as a child process with its own children, as ``up`` runs by default: feed and
ASIC telemetry connectors, the history sink and the API in ``up``; the meter and the ASIC
actuator in ``hashplane connect meter,asic-actuator``; the Faust agents in the control
lane's worker and the main lane's.  Each dip steps the simulated grid to
49.4 Hz (the deepest default band: target load 0) at a recorded instant; the clock stops at
the arrival of the last ``applied`` SleepAsic ack on ``commands.acks``.  Then the grid
returns to 50 Hz and the fleet is woken before the next dip.  The floor, measured in the same
run: one meter poll period plus one request to every miner of the fleet, all in flight
(bounded by the actuator's concurrency): what the meter's cadence, the wire and the
simulated miners allow before any of hashplane runs.  ``--trace`` prints, per dip, when the
low reading, the shed headroom, the commands and the acks arrived, and the worker's slow
folds with their breakdown (step, table, changelog flush, publish); ``--profile DIR``
samples the stack's processes with py-spy.  The resident memory of the stack's processes
(``up``: connectors, actuator, sink, API; ``worker``: the agents) is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
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

from bench.profiling import status_kib, summarize
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


def print_trace(acks: Acks, t0: float, w0: float, seen: int,
                firmware: dict[str, str] | None = None) -> None:
    """When the low reading, the shed headroom, the commands and the acks arrived (s after
    the step), and when the commands were issued and acked by their own timestamps; the
    commands issued over a second after the first, by the miner's firmware."""
    for topic in ("grid.readings", "metrics.energy", "commands.asic"):
        arr = [at - t0 for at, tp, e in acks.other if tp == topic and at > t0
               and (topic != "grid.readings" or e.frequency_hz < 49.5)
               and (topic != "metrics.energy" or e.band != "normal")]
        print(f"  {topic}: first {min(arr, default=-1):.3f} last "
              f"{max(arr, default=-1):.3f} n={len(arr)}")
    sl = [a for _, a in acks.got[seen:] if a.command_kind == "SleepAsic"]
    if not sl:
        print("  no SleepAsic ack")
        return
    issued = sorted(a.ts.timestamp() - a.latency_ms / 1000 - w0 for a in sl)
    acked = sorted(a.ts.timestamp() - w0 for a in sl)
    arrived = sorted(at - t0 for at, a in acks.got[seen:] if a.command_kind == "SleepAsic")
    print(f"  issued {issued[0]:.3f}..{issued[-1]:.3f} acked {acked[0]:.3f}..{acked[-1]:.3f} "
          f"arrived {arrived[0]:.3f}..{arrived[-1]:.3f} "
          f"statuses {sorted({a.status for a in sl})}")
    late: dict[str, int] = {}
    for a in sl:
        if a.ts.timestamp() - a.latency_ms / 1000 - w0 > issued[0] + 1.0:
            fw = (firmware or {}).get(a.device_id, "?")
            late[fw] = late.get(fw, 0) + 1
    if late:
        print(f"  issued over 1 s after the first, by firmware: {late}")


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


def stack_pids(up: subprocess.Popen[bytes]) -> list[int]:
    """``up`` and its children (the workers, the control connectors)."""
    return [up.pid, *map(int, subprocess.run(["pgrep", "-P", str(up.pid)], text=True,
                                             capture_output=True).stdout.split())]


def process_name(pid: int) -> str:
    """The hashplane subcommand a process runs (up, worker, worker-control, connect NAME),
    else "proc"."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if len(argv) <= 3 or argv[1:3] != [b"-m", b"streams.cli"]:
        return "proc"
    if argv[3] == b"connect" and len(argv) > 4:
        return f"connect {argv[4].decode()}"
    lane = argv[argv.index(b"--lane") + 1].decode() if b"--lane" in argv else "all"
    return f"worker-{lane}" if argv[3] == b"worker" and lane == "control" else argv[3].decode()


def start_profiles(up: subprocess.Popen[bytes], out: Path, tag: str) -> list[Any]:
    """py-spy (the bench extra) sampling ``up`` and its children (the worker) until stopped:
    raw stacks, one file per process (``summarize`` prints where the time went)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([str(spy), "record", "--nonblocking", "-r", "100", "-f", "raw",
                              "-p", str(pid), "-o",
                              str(out / f"{tag}-{process_name(pid)}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in stack_pids(up)]


def stop_profiles(spies: list[Any]) -> None:
    for p in spies:
        p.send_signal(signal.SIGINT)
    for p in spies:
        p.wait(30)


#: The worker layouts compared: every agent in one worker process (before #18's lanes), and
#: the control path's agents in a worker of their own (``HASHPLANE_CONTROL_LANE``, the
#: default).
LAYOUTS: dict[str, str] = {"one": "false", "lanes": "true"}


async def run(n: int, dips: int, work: Path, trace: bool = False,
              fleet: str = "luxos", profile: Path | None = None,
              layout: str = "lanes") -> dict[str, Any]:
    farm = Farm(FarmConfig(asics=n, gpu_rigs=0, model_endpoints=0, data_dir=work / "sim",
                           asic_base_ip="127.1.0.1", speed=30.0, firmware_mix=FLEETS[fleet],
                           coordinator=False))
    await farm.start()
    broker = EmbeddedBroker(log_file=work / "broker.log")
    await broker.start()
    await ensure_topics(broker.bootstrap)
    devices = farm.write_site(work / "site.toml")
    firmware = {a["id"]: a["dialect"] for a in farm.endpoints()["asics"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_KAFKA_BOOTSTRAP=broker.bootstrap,
               HASHPLANE_DATA_DIR=str(work / "data"), HASHPLANE_API_PORT="0",
               HASHPLANE_CLICKHOUSE_DSN=f"chdb://{work / 'ch'}",
               HASHPLANE_METER_POLL_S=str(METER_POLL_S), HASHPLANE_ASIC_POLL_S="10",
               HASHPLANE_BAND_HOLD_S="1", HASHPLANE_SCHED_MIN_ON_S="0",
               HASHPLANE_SCHED_MIN_OFF_S="0", HASHPLANE_SCHED_WAKE_BATCH=str(n),
               HASHPLANE_SCHED_WAKE_INTERVAL_S="0", HASHPLANE_ENERGY_MARGIN_KW="0",
               HASHPLANE_LOG_LEVEL="WARNING", HASHPLANE_CONTROL_LANE=LAYOUTS[layout])
    up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--site", str(devices),
                           "--env-file", str(devices.with_suffix(".env"))],
                          env=env, stdout=open(work / "up.log", "wb"), stderr=subprocess.STDOUT)
    acks = Acks(broker.bootstrap)
    await acks.start()
    rtts: list[float] = []
    fleet_rtts: list[float] = []
    try:
        a0 = farm.asics[0]
        for _ in range(20):
            t = time.perf_counter()
            await rpc(a0.host, farm.config.asic_port, "summary")
            rtts.append(time.perf_counter() - t)
        sem = asyncio.Semaphore(512)  # the actuator's default concurrency

        async def one(host: str) -> None:
            async with sem:
                await rpc(host, farm.config.asic_port, "summary")

        for _ in range(3):
            t = time.perf_counter()
            await asyncio.gather(*(one(a.host) for a in farm.asics))
            fleet_rtts.append(time.perf_counter() - t)
        await asyncio.sleep(25)  # the worker joins; telemetry tells the scheduler the fleet
        last: list[float] = []
        every: list[float] = []
        failed: list[int] = []  # dips whose acks did not all arrive in 60 s: how many did
        spies = start_profiles(up, profile, f"{n}-{fleet}-{layout}") if profile else []
        for _ in range(dips):
            try:
                await until(lambda: all(a.state in ("running", "waking") for a in farm.asics),
                            120, "the fleet awake")
            except SystemExit as exc:  # the stack fell behind: what was measured stands
                print(f"  {fleet}: {exc}; {len(last) + len(failed)} of {dips} dips run",
                      flush=True)
                break
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
                if trace:
                    print_trace(acks, t0, w0, seen, firmware)
                failed.append(len(done))
                step_grid(farm, 50.0)
                continue
            times = [at - t0 for at in slept()]
            if trace:
                print_trace(acks, t0, w0, seen, firmware)
            last.append(max(times))
            every += times
            step_grid(farm, 50.0)
        stop_profiles(spies)
        if profile:
            for f in sorted(profile.glob(f"{n}-{fleet}-{layout}-*.txt")):
                summarize(f)
        rss = {process_name(pid): status_kib(pid) for pid in stack_pids(up)}
        if trace:  # each worker logs each fold slower than streams.worker.SLOW_S
            for log in sorted((work / "data").glob("worker*.log")):
                slow = [line.split(": ", 1)[-1] for line in log.read_text(errors="replace")
                        .splitlines() if " took " in line]
                print(f"  slow folds in {log.stem}:", *slow[-12:], sep="\n    ")
        return {"n": n, "fleet": fleet, "layout": layout, "last": last, "every": every,
                "failed": failed,
                "floor": METER_POLL_S + statistics.median(fleet_rtts),
                "fleet_rpc": statistics.median(fleet_rtts), "rtt": statistics.median(rtts),
                "rss": rss}
    finally:
        await acks.stop()
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        await broker.stop()
        await farm.stop()


async def main(sizes: list[int], dips: int, trace: bool, fleets: list[str],
               profile: Path | None = None, layouts: tuple[str, ...] = ("lanes",)) -> None:
    print(f"hashplane reaction benchmark: {dips} dips per fleet, {os.cpu_count()} cores; "
          f"grid stepped to 49.4 Hz -> last applied SleepAsic ack; fleets: "
          + "; ".join(f"{f} ({', '.join(FLEETS[f])})" for f in fleets)
          + f"; workers: {', '.join(layouts)}")
    rows = []
    for n in sizes:
        for fleet in fleets:
            for layout in layouts:
                rows.append(await run(n, dips, Path(tempfile.mkdtemp(
                    prefix=f"hashplane-react-{n}-{fleet}-{layout}-")), trace, fleet, profile,
                    layout))
    print(f"\n{'ASICs':>6} {'fleet':>6} {'workers':>7} {'last ack p50':>13} {'p99':>7} "
          f"{'every ack p50':>14} {'p99':>7} {'floor':>7}  (poll {METER_POLL_S:g} s + every "
          f"miner's RPC in flight)")
    for r in rows:
        head = f"{r['n']:>6} {r['fleet']:>6} {r['layout']:>7}"
        if not r["last"]:
            print(f"{head} no dip completed ({len(r['failed'])} failed)")
            continue
        if r["failed"]:
            print(f"{head} {len(r['failed'])} of "
                  f"{len(r['failed']) + len(r['last'])} dips incomplete after 60 s "
                  f"(acks seen: {', '.join(map(str, r['failed']))})")
        print(f"{head} {pct(r['last'], 50):>12.3f}s "
              f"{pct(r['last'], 99):>6.3f}s "
              f"{pct(r['every'], 50):>13.3f}s {pct(r['every'], 99):>6.3f}s "
              f"{r['floor']:>6.3f}s  (fleet RPC {r['fleet_rpc']:.3f} s, one RPC "
              f"{1000 * r['rtt']:.1f} ms; x floor {pct(r['last'], 99) / r['floor']:.1f}; "
              + ", ".join(f"{k} RSS {v / 1024:.0f} MiB" for k, v in r["rss"].items())
              + ")")
    print("\ngoal: last-ack p99 <= 1 s at 1,000 ASICs (seed 003 asked < 2 s for 160)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--asics", type=int, nargs="+", default=[160, 1000])
    ap.add_argument("--dips", type=int, default=5)
    ap.add_argument("--fleets", nargs="+", choices=list(FLEETS), default=list(FLEETS),
                    help="LuxOS-only and/or the five firmwares mixed (default both)")
    ap.add_argument("--trace", action="store_true",
                    help="per dip: when the reading, the headroom, the commands and acks arrived")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="sample the stack's processes with py-spy during the dips, into DIR")
    ap.add_argument("--workers", nargs="+", choices=list(LAYOUTS), default=["lanes"],
                    help="one worker process for every agent, and/or the control lane in a "
                         "worker of its own (default: lanes, what `up` runs)")
    args = ap.parse_args()
    asyncio.run(main(args.asics, args.dips, args.trace, args.fleets, args.profile,
                     tuple(args.workers)))
