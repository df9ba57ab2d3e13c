"""Control quality over every kind of trouble: how well the loop kept the site within its
supply, justified each shed, spared the miners' wear and acked every command, and what the
curtailment cost or saved against running flat out.  Prints measured figures; not a test.

    .venv/bin/python bench/control_quality.py [--asics 40] [--speed 4] [--keep DIR]

``hashplane demo --scenario trouble`` runs the whole system on the simulated farm: the grid
falls through both frequency bands and recovers, a supply feed loses 40 %, the real-time
power price spikes above the S19j Pro's and the M30S++'s breakeven, the uplink is cut, five
miners crash and restart; the bench SIGKILLs the worker (the Faust agents) in the middle and
the demo's supervisor starts it again.  The demo's dwell, hold and poll settings are scaled
down with the scenario (the run is minutes, not a week: event time is wall time, which the
simulation's speed does not accelerate), and printed.  Then, from ClickHouse:

* seconds the measured load was above the measured supply (goal 0);
* sheds not justified by what the energy metric they answered said: neither a target below
  the load (by more than one miner's draw, the plan's own slack), nor the ASIC's own J/TH
  above the price's limit (goal 0);
* sleeps per ASIC: the most against the fleet median (goal within 2x);
* toggles inside the dwell: a wake sooner than the minimum off-time after the ASIC's sleep,
  a sleep sooner than the minimum on-time after its wake while within supply (goal 0);
* commands without exactly one ack, over every command topic (goal 0);
* energy curtailed and money saved or lost against running flat out: the same stored
  readings folded by ``hashplane backtest`` with the bands and the price limit off (the
  supply, safety, still applies).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"BAND_HOLD_S": "5", "SCHED_MIN_ON_S": "10", "SCHED_MIN_OFF_S": "10",
            "SCHED_WAKE_BATCH": "5", "SCHED_WAKE_INTERVAL_S": "1", "PRICE_HOLD_S": "5",
            "UPLINK_POLL_S": "1", "UPLINK_HOLD_DOWN_S": "4", "ASIC_POLL_S": "2",
            "PROFIT_WINDOW_S": "30", "PROFIT_GRACE_S": "5", "API_KEY": "bench-key"}
SCENARIO_S = 800.0  # simulated seconds the trouble scenario takes, with margin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_pids(parent: int) -> list[int]:
    """The demo's worker processes (``streams.cli worker`` children of ``parent``)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and b"worker" in cmd and b"streams.cli" in cmd:
            out.append(int(d.name))
    return out


def run_demo(data: Path, asics: int, speed: float) -> float:
    """Run the scenario; SIGKILL the worker half-way; return the wall seconds it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), **{f"HASHPLANE_{k}": v for k, v in SETTINGS.items()},
               HASHPLANE_LOCAL_POOL_URL=f"stratum+tcp://127.0.0.1:{free_port()}")
    duration = SCENARIO_S / speed + 30
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "demo", "--data-dir", str(data), "--api-port",
         str(free_port()), "--asics", str(asics), "--gpu-rigs", "1", "--scenario", "trouble",
         "--speed", str(speed), "--duration", str(duration), "--asic-base-ip", "127.0.210.1",
         "--firmware-mix", "luxos=1,braiins=1,antminer=1,whatsminer=1,vnish=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=data.parent)
    log: list[bytes] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout or []), daemon=True)
    reader.start()
    kill_at = t0 + (470.0 / speed) + 10  # after the price spike, before the uplink outage
    killed = False
    while proc.poll() is None:
        time.sleep(0.5)
        if not killed and time.monotonic() >= kill_at:
            for pid in worker_pids(proc.pid):
                os.kill(pid, signal.SIGKILL)
                print(f"SIGKILLed the worker (pid {pid}) at {time.monotonic() - t0:.0f} s; "
                      "the demo's supervisor restarts it", flush=True)
                killed = True
    reader.join(5)
    if proc.returncode != 0:
        sys.stdout.write(b"".join(log[-60:]).decode(errors="replace"))
        raise SystemExit(f"demo exited {proc.returncode}")
    if not killed:
        print("the worker was not found to kill", flush=True)
    return time.monotonic() - t0


def measure(data: Path) -> dict[str, Any]:
    from schemas.settings import Settings
    from streams import backtest
    from streams.history import HistoryStore

    store = HistoryStore(f"chdb://{data / 'clickhouse'}").open()
    try:
        energy = store.query(
            "SELECT ts, load_kw, supply_kw, asic_load_kw, target_load_kw, max_j_per_th, "
            "event_id FROM hashplane.metrics_energy ORDER BY ts LIMIT 1 BY event_id")
        sleeps = store.query(
            "SELECT c.device_id, c.ts, c.reason, e.load_kw, e.target_load_kw, e.available_kw,"
            " e.max_j_per_th FROM (SELECT * FROM hashplane.commands_asic WHERE kind = "
            "'SleepAsic' AND issued_by = 'agent:scheduler' LIMIT 1 BY command_id) AS c LEFT "
            "JOIN (SELECT * FROM hashplane.metrics_energy LIMIT 1 BY event_id) AS e "
            "ON e.ts = c.ts", settings={"join_use_nulls": 1})
        j_at = store.query(
            "SELECT c.device_id, c.ts, t.power_w / t.hashrate_ths FROM (SELECT * FROM "
            "hashplane.commands_asic WHERE kind = 'SleepAsic' LIMIT 1 BY command_id) AS c "
            "ASOF LEFT JOIN (SELECT device_id, ts, power_w, hashrate_ths FROM "
            "hashplane.asic_telemetry WHERE state = 'running' AND hashrate_ths > 0) AS t "
            "ON t.device_id = c.device_id AND t.ts <= c.ts")
        acks = store.query(
            "SELECT device_id, command_kind, ts FROM (SELECT * FROM hashplane.commands_acks "
            "WHERE status = 'applied' AND command_kind IN ('SleepAsic', 'WakeAsic') LIMIT 1 "
            "BY command_id) ORDER BY device_id, ts")
        per_command = store.query(
            "SELECT n FROM (SELECT JSONExtractString(payload, 'command_id') AS cid FROM "
            "hashplane.events WHERE topic IN ('commands.asic', 'commands.gpu', "
            "'commands.site', 'commands.compute') LIMIT 1 BY event_id) AS c LEFT JOIN "
            "(SELECT toString(command_id) AS cid, count() AS n FROM (SELECT * FROM "
            "hashplane.commands_acks LIMIT 1 BY event_id) GROUP BY cid) AS a USING cid",
            settings={"join_use_nulls": 1})
        devices = [d for (d,) in store.query(
            "SELECT DISTINCT device_id FROM hashplane.asic_telemetry")]
        lo, hi = store.query("SELECT min(ts), max(ts) FROM hashplane.metrics_energy")[0]
        live = Settings.model_validate({"data_dir": data,
                                        **{k.lower(): v for k, v in SETTINGS.items()}})
        flat, changed = backtest.overrides(["bands_50hz=[]", "bands_60hz=[]",
                                            "price_margin_per_mwh=100000"], live)
        report = backtest.run(store, live, flat, lo - timedelta(seconds=1),
                              hi + timedelta(seconds=1), changed)
    finally:
        store.close()

    over_s = 0.0
    for (t, load, supply, *_), (t2, *_) in itertools.pairwise(energy):
        if load > supply + 1e-6:
            over_s += (t2 - t).total_seconds()
    slack_kw = 3.6  # one miner's draw: the plan counts commands in flight, the metric does not
    j_of = {(d, t): j for d, t, j in j_at}
    unjustified = []
    for d, t, reason, load, target, available, limit in sleeps:
        if load is None:
            unjustified.append((d, t, "no energy metric at the command's time"))
            continue
        budget_short = min(target, available) < load + slack_kw
        price = limit is not None and (j_of.get((d, t)) or 0) > limit
        if not (budget_short or price):
            unjustified.append((d, t, reason))
    by_device = {d: 0 for d in devices}
    toggles = 0
    p_on, p_off = float(SETTINGS["SCHED_MIN_ON_S"]), float(SETTINGS["SCHED_MIN_OFF_S"])
    last: dict[str, tuple[str, Any]] = {}
    for d, kind, t in acks:
        if kind == "SleepAsic":
            by_device[d] = by_device.get(d, 0) + 1
        prev = last.get(d)
        if prev is not None and prev[0] != kind:
            gap = (t - prev[1]).total_seconds()
            # a wake sooner than min-off; a sleep sooner than min-on (bench-side
            # tolerance of one poll for the ack's own latency)
            early_wake = kind == "WakeAsic" and gap < p_off - 1
            early_sleep = kind == "SleepAsic" and gap < p_on - 1 and not _over(energy, t)
            if early_wake or early_sleep:
                toggles += 1
        last[d] = (kind, t)
    counts = sorted(by_device.values())
    median = statistics.median(counts) if counts else 0
    return {"energy_points": len(energy), "over_s": over_s, "sleeps": len(sleeps),
            "unjustified": unjustified, "cycles_max": max(counts, default=0),
            "cycles_median": median, "toggles": toggles,
            "commands": len(per_command),
            "bad_acks": sum(1 for (n,) in per_command if n != 1),
            "report": report, "span_s": (hi - lo).total_seconds()}


def _over(energy: list[Any], t: Any) -> bool:
    """Whether the last energy metric at or before ``t`` had the load above supply."""
    before = [e for e in energy if e[0] <= t]
    return bool(before) and before[-1][1] > before[-1][2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--asics", type=int, default=40)
    ap.add_argument("--speed", type=float, default=4.0)
    ap.add_argument("--keep", default=None, help="keep the demo's data directory here")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hp-quality-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "demo"
    print(f"control quality: {args.asics} ASICs of five firmwares, 1 GPU rig, scenario "
          f"'trouble' at speed {args.speed:g}, settings "
          + " ".join(f"{k}={v}" for k, v in SETTINGS.items() if k != "API_KEY"), flush=True)
    wall = run_demo(data, args.asics, args.speed)
    m = measure(data)
    r = m["report"]
    goal = {True: "met", False: "NOT met"}
    print(f"\nran {wall:.0f} s of wall time; {m['span_s']:.0f} s of energy metrics "
          f"({m['energy_points']} points)")
    print(f"{'measure':58}{'value':>12}  goal")
    print(f"{'seconds of measured load above measured supply':58}{m['over_s']:>12.1f}  0: "
          f"{goal[m['over_s'] == 0]}")
    print(f"{'sheds not justified by the metric they answered':58}"
          f"{len(m['unjustified']):>12d}  0: {goal[not m['unjustified']]}  (of {m['sleeps']})")
    ratio = m["cycles_max"] / m["cycles_median"] if m["cycles_median"] else float("inf")
    print(f"{'sleeps per ASIC: most / fleet median':58}"
          f"{m['cycles_max']:>5d} / {m['cycles_median']:<5g}  within 2x: "
          f"{goal[ratio <= 2.0]} ({ratio:.2f}x)")
    print(f"{'toggles inside the dwell':58}{m['toggles']:>12d}  0: {goal[m['toggles'] == 0]}")
    print(f"{'commands without exactly one ack':58}{m['bad_acks']:>12d}  0: "
          f"{goal[m['bad_acks'] == 0]}  (of {m['commands']})")
    a, f = r.actual, r.backtest
    cur = a.currency or f.currency
    print(f"{'energy curtailed against flat out, kWh':58}"
          f"{f.money.energy_kwh - a.money.energy_kwh:>12.3f}")
    print(f"{'ASIC-hours asleep: actual / flat out':58}"
          f"{a.asleep_s / 3600:>6.2f} / {f.asleep_s / 3600:<6.2f}")
    print(f"{'profit, ' + cur + ': actual / flat out':58}"
          f"{a.money.profit:>8.4f} / {f.money.profit:<8.4f} "
          f"(saved {a.money.profit - f.money.profit:+.4f})")
    for d, t, why in m["unjustified"][:10]:
        print(f"  unjustified: {d} at {t.isoformat()}: {why}")


if __name__ == "__main__":
    main()
