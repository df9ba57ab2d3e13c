"""Online tuning in the running system: `hashplane demo` with one GPU in tuning mode.  The
tuner agent (BoTorch) commands trials on commands.gpu, the GPU actuator writes them into the
simulated rig's RainbowMiner files and NVML and acks them, the agent measures each window
from the rig's telemetry and shares and records the trial; at the end the best settings are
applied.  It tunes for profit: every trial is scored at the simulated market's power price
(folded from the prices topic, not the configured fallback) and the card keeps the most
profitable feasible trial.  Everything is checked from ClickHouse."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.history import HistoryStore
from tests.e2e.scenario import run_demo

TRIALS = 3
FALLBACK_PRICE = 999.0  # the configured price: no trial should need it (the market has one)
REVENUE = 0.01
#: Played out: the final profile is acked and the card reports its power limit.
DONE = ("SELECT (SELECT count() FROM {db}.commands_acks WHERE status = 'applied' AND"
        " command_id IN (SELECT command_id FROM {db}.commands_gpu WHERE"
        " startsWith(reason, 'tuning done'))) > 0 AND (SELECT argMax(power_limit_w, ts) FROM"
        " {db}.gpu_telemetry WHERE device_id = 'rig01-gpu0') = (SELECT any(power_limit_w)"
        " FROM {db}.commands_gpu WHERE startsWith(reason, 'tuning done'))")


def test_the_tuner_runs_trials_through_the_gpu_actuator_and_keeps_the_best(
        tmp_path: Path) -> None:
    data = tmp_path / "demo"
    out = run_demo(data, {"TUNER_GPUS": '["rig01-gpu0"]', "TUNER_TRIALS": str(TRIALS),
                          "TUNER_SETTLE_S": "4", "TUNER_WINDOW_S": "12", "RIG_POLL_S": "1",
                          "TUNER_OPTIMIZER": "botorch", "TUNER_OBJECTIVE": "profit",
                          "GPU_REVENUE_PER_MH_DAY": str(REVENUE),
                          "TUNER_POWER_PRICE_PER_MWH": str(FALLBACK_PRICE)},
                   "--asics", "0", "--gpu-rigs", "1", "--speed", "10", "--duration", "95",
                   timeout_s=200, until=DONE)
    store = HistoryStore(f"chdb://{data / 'clickhouse'}").open()
    try:
        trials = store.query_dicts(
            "SELECT trial, outcome, feasible, power_limit_w, mem_offset_mhz, intensity, "
            "objective, accepted, rejected, stale, window_s, hashrate_mhs, power_w, "
            "objective_kind, price_per_mwh, profit_per_day FROM (SELECT * FROM "
            "hashplane.metrics_rewards WHERE kind = 'TuningTrialEvaluated' LIMIT 1 BY event_id)"
            " ORDER BY trial")
        market = {r[0] for r in store.query("SELECT DISTINCT price_per_mwh FROM hashplane.prices")}
        commands = store.query_dicts(
            "SELECT c.device_id AS device_id, c.reason AS reason, c.power_limit_w AS pl, "
            "c.mem_offset_mhz AS mem, c.intensity AS intensity, a.n AS acks, a.status AS status,"
            " a.actuator AS actuator FROM (SELECT * FROM hashplane.commands_gpu WHERE "
            "issued_by = 'agent:tuner' LIMIT 1 BY event_id) AS c LEFT JOIN (SELECT command_id,"
            " count() AS n, any(status) AS status, any(actuator) AS actuator FROM (SELECT * "
            "FROM hashplane.commands_acks LIMIT 1 BY event_id) GROUP BY command_id) AS a "
            "ON a.command_id = c.command_id ORDER BY c.ts", settings={"join_use_nulls": 1})
        last_limit = store.query(
            "SELECT argMax(power_limit_w, ts) FROM hashplane.gpu_telemetry "
            "WHERE device_id = 'rig01-gpu0'")[0][0]
    finally:
        store.close()

    assert [t["trial"] for t in trials] == list(range(1, TRIALS + 1)), out[-3000:]
    assert all(t["accepted"] > 0 and t["window_s"] >= 12 for t in trials
               if t["outcome"] == "kept")
    assert {c["device_id"] for c in commands} == {"rig01-gpu0"}
    assert all(c["acks"] == 1 and c["status"] == "applied" and c["actuator"] == "actuator:gpu"
               for c in commands), commands
    trial_cmds = [c for c in commands if c["reason"].startswith("tuning trial")]
    assert len(trial_cmds) == TRIALS
    final = commands[-1]
    assert final["reason"].startswith("tuning done"), commands
    feasible = [t for t in trials if t["feasible"]]
    assert feasible, trials  # steps of a quarter range from the defaults: some stay stable
    for t in trials:  # scored in money at the market's price, as computed by hand
        assert t["objective_kind"] == "profit" and t["price_per_mwh"] in market, (t, market)
        if t["outcome"] == "kept":
            acc = t["accepted"] / (t["accepted"] + t["rejected"] + t["stale"])
            assert t["profit_per_day"] == pytest.approx(
                t["hashrate_mhs"] * acc * REVENUE - t["power_w"] * 24 / 1e6 * t["price_per_mwh"],
                abs=1e-5)
    best = max(feasible, key=lambda t: t["profit_per_day"])  # what the card keeps
    assert (final["pl"], final["mem"], final["intensity"]) == (
        best["power_limit_w"], best["mem_offset_mhz"], best["intensity"])
    assert last_limit == final["pl"]  # the card itself reports the kept power limit
