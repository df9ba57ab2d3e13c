"""Price-aware curtailment as the demo runs it: `hashplane demo --scenario price-spike`.

The simulated market publishes flat day-ahead hours at 45/MWh over HTTP; the price connector
reads them (and the inventory's hashprice, 0.05 per TH/s per day) onto `prices`.  The
real-time price spikes to 95/MWh: the energy agent's efficiency limit falls to
0.05e6 / (24 x 95) = 21.93 J/TH, and the scheduler puts to sleep exactly the ASICs whose
measured efficiency is worse, each acked once, while the efficient ones keep hashing.  The
price falls back; after the hold (and the minimum off-dwell) they are woken, staggered.
Everything is checked from the history in ClickHouse.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from streams.history import HistoryStore
from tests.conftest import HASHPLANE, ROOT
from tests.e2e.scenario import run_demo

pytestmark = pytest.mark.integration

ASICS = 10
HOLD_S = 4
SETTINGS = {"PRICE_HOLD_S": str(HOLD_S), "SCHED_MIN_ON_S": "0", "SCHED_MIN_OFF_S": "3",
            "SCHED_WAKE_BATCH": "2", "SCHED_WAKE_INTERVAL_S": "1", "ASIC_POLL_S": "1"}
#: Played out: every ASIC put to sleep has been woken, its wake acked and its telemetry
#: running again after it said sleeping.
DONE = (
    "SELECT (SELECT uniqExact(device_id) FROM {db}.commands_asic WHERE kind = 'SleepAsic')"
    " > 0 AND (SELECT uniqExact(device_id) FROM {db}.commands_asic WHERE kind = 'SleepAsic')"
    " = (SELECT count() FROM (SELECT device_id FROM {db}.asic_telemetry GROUP BY device_id"
    " HAVING countIf(state = 'sleeping') > 0 AND maxIf(ts, state = 'running') >"
    " maxIf(ts, state = 'sleeping'))) AND (SELECT uniqExact(command_id) FROM"
    " {db}.commands_asic) = (SELECT uniqExact(command_id) FROM {db}.commands_acks WHERE"
    " command_kind IN ('SleepAsic', 'WakeAsic'))")


def test_a_price_spike_sleeps_the_units_that_lose_money_and_wakes_them_after(
        tmp_path: Path) -> None:
    data = tmp_path / "demo"
    out = run_demo(data, SETTINGS,
                   "--asics", str(ASICS), "--gpu-rigs", "0", "--asic-base-ip", "127.0.203.1",
                   "--scenario", "price-spike", "--speed", "3", "--duration", "80",
                   "--firmware-mix", "luxos=1,braiins=1,antminer=1,whatsminer=1",
                   until=DONE)
    store = HistoryStore(f"chdb://{data / 'clickhouse'}").open()
    try:
        prices = store.query(
            "SELECT market, price_per_mwh, interval_start, interval_end FROM hashplane.prices "
            "WHERE kind = 'PowerPriceObserved' ORDER BY ts LIMIT 1 BY event_id")
        hashprice = store.query(
            "SELECT any(hashprice_per_th_day) FROM hashplane.prices "
            "WHERE kind = 'HashpriceObserved'")[0][0]
        energy = store.query(
            "SELECT ts, price_per_mwh, max_j_per_th FROM hashplane.metrics_energy "
            "ORDER BY ts LIMIT 1 BY event_id")
        # each miner's efficiency as its own telemetry measured it while hashing (the median:
        # a miner just woken draws full power while its hashrate ramps up)
        j = dict(store.query(
            "SELECT device_id, quantileExact(0.5)(power_w / hashrate_ths) FROM "
            "hashplane.asic_telemetry WHERE state = 'running' AND hashrate_ths > 0 "
            "GROUP BY device_id"))
        commands = store.query(
            "SELECT command_id, kind, device_id, ts, reason FROM hashplane.commands_asic "
            "ORDER BY ts LIMIT 1 BY command_id")
        acks = dict(store.query(
            "SELECT command_id, count() FROM (SELECT * FROM hashplane.commands_acks "
            "LIMIT 1 BY event_id) GROUP BY command_id"))
        applied = {str(c) for (c,) in store.query(
            "SELECT command_id FROM hashplane.commands_acks WHERE status = 'applied'")}
        states = store.query("SELECT device_id, state, ts FROM hashplane.asic_telemetry")
    finally:
        store.close()

    assert hashprice == 0.05, out[-2000:]
    assert {p[0] for p in prices} == {"day_ahead", "real_time"}
    spike = [p for p in prices if p[0] == "real_time"]
    assert spike[0][1] == 95.0
    limit = 0.05e6 / (24 * 95.0)
    limits = [m for _, _, m in energy if m is not None]
    assert limits and min(limits) == pytest.approx(limit, abs=1e-4)
    assert energy[0][2] is None or energy[0][2] > limit  # before the spike: all pay

    sleeps = [c for c in commands if c[1] == "SleepAsic"]
    wakes = [c for c in commands if c[1] == "WakeAsic"]
    losing = {d for d, e in j.items() if e > limit}
    paying = {d for d, e in j.items() if e <= limit}
    assert losing and paying, j  # the fleet mixes both (S19j Pro, M30S++ vs S19 XP, S21)
    assert {c[2] for c in sleeps} == losing, (sorted(j.items()), out[-2000:])
    assert all(c[4].startswith("price 95.00/MWh") for c in sleeps), [c[4] for c in sleeps]
    assert all(acks.get(c[0]) == 1 and str(c[0]) in applied for c in commands), \
        "every command has exactly one ack, applied"
    # woken only after the price fell and the limit's hold passed
    fell = min(e for _, _, _, e in spike)  # the spike's interval, republished cut short
    relaxed = next(ts for ts, _, m in energy
                   if ts >= fell and (m is None or m > limit + 1e-6))
    assert (relaxed - fell).total_seconds() >= HOLD_S
    assert {c[2] for c in wakes} == losing and min(c[3] for c in wakes) >= relaxed
    # each miner's own telemetry: asleep during the spike, hashing again after it
    slept = {dev: ts for dev, state, ts in sorted(states, key=lambda r: r[2])
             if state == "sleeping"}
    assert set(slept) == losing
    assert all(any(d == dev and st == "running" and ts > slept[dev] for d, st, ts in states)
               for dev in losing)

    # the back-test of the same stored events with the live settings takes the live
    # decisions; with a margin of 100/MWh above breakeven nothing sleeps on price
    span = ("--from", (min(c[3] for c in commands) - timedelta(minutes=2)).isoformat(),
            "--to", (max(ts for _, _, ts in states) + timedelta(seconds=1)).isoformat())
    same = backtest(data, *span)
    assert same["backtest"]["curtailed"] == same["actual"]["curtailed"] == sorted(losing)
    assert same["backtest"]["sleeps"] == same["actual"]["sleeps"] == len(sleeps)
    assert same["backtest"]["wakes"] == same["actual"]["wakes"] == len(wakes)
    assert same["backtest"]["price_sleeps"] == len(sleeps)
    generous = backtest(data, *span, "--set", "price_margin=100")
    assert generous["changed"] == {"price_margin_per_mwh": "100.0"}
    assert generous["backtest"]["price_sleeps"] == 0  # (the supply may still shed one)
    assert not set(losing) <= set(generous["backtest"]["curtailed"])
    assert generous["actual"] == same["actual"]
    # the losing miners run through the spike: more energy, more power cost
    assert generous["backtest"]["energy_kwh"] > same["backtest"]["energy_kwh"]
    assert generous["backtest"]["power_cost"] > same["backtest"]["power_cost"]


def backtest(data: Path, *args: str) -> dict:  # type: ignore[type-arg]
    """``hashplane backtest --json`` over the demo's history, with the demo's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), **{f"HASHPLANE_{k}": v for k, v in SETTINGS.items()})
    r = subprocess.run([*HASHPLANE, "backtest", "--data-dir", str(data), *args, "--json"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)  # type: ignore[no-any-return]

