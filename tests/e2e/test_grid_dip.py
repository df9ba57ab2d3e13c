"""The closed loop as the demo runs it: `hashplane demo --scenario grid-dip` on the real
broker, the real ClickHouse engine and the simulated farm (accelerated clock), with a fleet
of all five firmwares (LuxOS, Braiins OS, Antminer stock, Whatsminer, VNish).

The grid falls to 49.4 Hz, the agents shed the whole fleet, the actuator puts every ASIC to
sleep and acks; the grid recovers, the band is held, then the fleet is woken in staggered
batches.  Asserted from the history: the order of commands, exactly one ack per command,
that the plan never asked for more than the available supply, and that each firmware's
miners reported the sleep and the wake in their own telemetry.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from streams.history import HistoryStore
from tests.e2e.scenario import run_demo

pytestmark = pytest.mark.integration

ASICS = 12
#: Played out: every ASIC's telemetry said running after it said sleeping, and every
#: sleep and wake has its ack.
DONE = (
    "SELECT (SELECT count() FROM (SELECT device_id FROM {db}.asic_telemetry GROUP BY device_id"
    " HAVING countIf(state = 'sleeping') > 0 AND maxIf(ts, state = 'running') >"
    f" maxIf(ts, state = 'sleeping'))) = {ASICS} AND (SELECT uniqExact(command_id) FROM"
    " {db}.commands_asic) = (SELECT uniqExact(command_id) FROM {db}.commands_acks WHERE"
    " command_kind IN ('SleepAsic', 'WakeAsic'))")


def test_grid_dip_sheds_the_fleet_acks_every_command_and_wakes_it_staggered(
        tmp_path: Path) -> None:
    data = tmp_path / "demo"
    out = run_demo(data, {"BAND_HOLD_S": "3", "SCHED_MIN_ON_S": "0", "SCHED_MIN_OFF_S": "0",
                          "SCHED_WAKE_BATCH": "4", "SCHED_WAKE_INTERVAL_S": "1",
                          "ASIC_POLL_S": "2"},
                   "--asics", str(ASICS), "--gpu-rigs", "0", "--asic-base-ip", "127.0.201.1",
                   "--scenario", "grid-dip", "--speed", "2", "--duration", "45",
                   "--firmware-mix", "luxos=1,braiins=1,antminer=1,whatsminer=1,vnish=1",
                   until=DONE)
    firmware = {a["id"]: a["firmware"] for a in
                tomllib.loads((data / "sim" / "site.toml").read_text())["asics"]}
    assert set(firmware.values()) == {"luxos", "braiins", "antminer", "whatsminer", "vnish"}

    store = HistoryStore(f"chdb://{data / 'clickhouse'}").open()
    try:
        commands = store.query(
            "SELECT command_id, kind, device_id, ts FROM hashplane.commands_asic "
            "ORDER BY ts LIMIT 1 BY command_id")
        acks = store.query(
            "SELECT command_id, count(), any(status) FROM (SELECT * FROM hashplane.commands_acks"
            " LIMIT 1 BY event_id) GROUP BY command_id")
        bands = store.query(
            "SELECT ts, band, available_kw, target_load_kw FROM hashplane.metrics_energy "
            "ORDER BY ts LIMIT 1 BY event_id")
        asleep = store.query(
            "SELECT uniqExact(device_id) FROM hashplane.asic_telemetry WHERE state = 'sleeping'")
        states = store.query("SELECT device_id, state, ts FROM hashplane.asic_telemetry")
    finally:
        store.close()

    sleeps = [c for c in commands if c[1] == "SleepAsic"]
    wakes = [c for c in commands if c[1] == "WakeAsic"]
    assert {c[2] for c in sleeps} == {f"asic-{i:05d}" for i in range(1, ASICS + 1)}, out[-2000:]
    assert asleep[0][0] == ASICS  # the miners' own telemetry says so
    # per miner: running again after the last time its telemetry said sleeping
    slept = {dev: ts for dev, state, ts in sorted(states, key=lambda r: r[2])
             if state == "sleeping"}
    woke = {dev for dev, state, ts in states if state == "running" and dev in slept
            and ts > slept[dev]}
    assert woke == set(firmware), {firmware[d] for d in set(firmware) - woke}  # every firmware
    per_command = {str(cid): (n, status) for cid, n, status in acks}
    assert all(per_command.get(str(c[0]), (0, ""))[0] == 1 for c in commands), \
        "every command has exactly one ack"
    assert {per_command[str(c[0])][1] for c in sleeps} == {"applied"}
    # the shed came with the band change, the wakes only after the band relaxed
    first_dip = next(ts for ts, band, *_ in bands if band != "normal")
    relaxed = next(ts for ts, band, *_ in bands if ts > first_dip and band == "normal")
    assert min(c[3] for c in sleeps) >= first_dip
    assert wakes and min(c[3] for c in wakes) >= relaxed
    # staggered: no more than the batch size per wake step
    by_second: dict[int, int] = {}
    for c in wakes:
        by_second[int(c[3].timestamp())] = by_second.get(int(c[3].timestamp()), 0) + 1
    assert max(by_second.values()) <= 4
    # the plan never asked for more than available supply
    assert all(target <= available + 1e-6 for _, _, available, target in bands)
