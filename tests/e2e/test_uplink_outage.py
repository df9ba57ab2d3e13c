"""The failover loop as the demo runs it: `hashplane demo --scenario uplink-outage`.

The internet (uplink check and upstream pool) is cut; after two failed probes every ASIC is
switched to the local Stratum pool, connects to it and submits shares that the pool accounts
on `shares`; the uplink comes back, and after the hold-down each ASIC returns to its own
pool.  Asserted from the history, with exactly one ack per command.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.broker import free_port
from streams.history import HistoryStore
from tests.e2e.scenario import run_demo

pytestmark = pytest.mark.integration

ASICS = 6
#: Played out: every ASIC was switched away and back, each switch acked.
DONE = (f"SELECT count() = {2 * ASICS} FROM (SELECT command_id FROM {{db}}.commands_acks"
        " WHERE command_kind = 'SwitchAsicPool' AND status = 'applied'"
        " LIMIT 1 BY command_id)")


def test_uplink_outage_moves_the_fleet_to_the_local_pool_and_back(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    local = f"stratum+tcp://127.0.0.1:{free_port()}"
    out = run_demo(data, {"UPLINK_POLL_S": "1", "UPLINK_HOLD_DOWN_S": "4", "ASIC_POLL_S": "2",
                          "LOCAL_POOL_URL": local},
                   "--asics", str(ASICS), "--gpu-rigs", "0", "--asic-base-ip", "127.0.202.1",
                   "--scenario", "uplink-outage", "--speed", "12", "--duration", "48",
                   until=DONE)

    store = HistoryStore(f"chdb://{data / 'clickhouse'}").open()
    try:
        switches = store.query(
            "SELECT command_id, device_id, pool_url, ts, reason FROM hashplane.commands_asic "
            "WHERE kind = 'SwitchAsicPool' ORDER BY ts LIMIT 1 BY command_id")
        acks = dict(store.query(
            "SELECT command_id, count() FROM (SELECT * FROM hashplane.commands_acks "
            "LIMIT 1 BY event_id) GROUP BY command_id"))
        applied = {str(c) for (c,) in store.query(
            "SELECT command_id FROM hashplane.commands_acks WHERE status = 'applied'")}
        downs = store.query("SELECT count() FROM hashplane.uplink_status WHERE NOT up")[0][0]
        pool_shares = store.query(
            "SELECT sum(accepted), uniqExact(worker) FROM hashplane.shares "
            "WHERE source = 'pool:local'")[0]
    finally:
        store.close()

    devices = {f"asic-{i:05d}" for i in range(1, ASICS + 1)}
    to_local = [s for s in switches if s[2] == local]
    back = [s for s in switches if s[2] != local]
    assert {s[1] for s in to_local} == devices, out[-2000:]
    assert downs >= 2 and all(s[4].startswith("uplink down") for s in to_local)
    assert pool_shares[0] > 0 and pool_shares[1] >= 1  # miners really mined on the local pool
    assert {s[1] for s in back} == devices  # every ASIC went home after the hold-down
    assert all(s[4].startswith("uplink healthy") for s in back)
    assert all(acks.get(s[0]) == 1 for s in switches), "every command has exactly one ack"
    assert all(str(s[0]) in applied for s in switches)
