"""``up`` runs the control path's connectors (the grid meter and the ASIC actuator) as a
child process of their own (``HASHPLANE_CONTROL_PROCESS``).  That process is SIGKILLed as the
grid dip's first commands are stored: ``up`` starts it again, and the fleet of all five
firmwares still sleeps and wakes with exactly one ack per command (the real ``hashplane
demo``: broker, ClickHouse engine, simulated farm)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.history import HistoryStore
from tests.conftest import HASHPLANE, ROOT
from tests.e2e.scenario import KEY
from tests.e2e.test_grid_dip import ASICS, DONE

pytestmark = pytest.mark.integration

CONTROL = b"connect\0meter,asic-actuator"


def control_pids(parent: int) -> list[int]:
    """The control connectors' processes among ``parent``'s children."""
    kids = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    out = []
    for pid in map(int, kids.stdout.split()):
        try:
            if CONTROL in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def sql(url: str, query: str) -> list[list[object]]:
    req = urllib.request.Request(url, data=json.dumps({"sql": query}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-API-Key": KEY})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return list(json.load(r)["rows"])
    except (urllib.error.HTTPError, OSError, ValueError, KeyError):
        return []  # not serving yet, or the tables are not there yet


def test_a_killed_control_process_is_restarted_and_every_command_acked_once(
        tmp_path: Path) -> None:
    data = tmp_path / "demo"
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/sql"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_API_KEY=KEY, HASHPLANE_BAND_HOLD_S="3",
               HASHPLANE_SCHED_MIN_ON_S="0", HASHPLANE_SCHED_MIN_OFF_S="0",
               HASHPLANE_SCHED_WAKE_BATCH="4", HASHPLANE_SCHED_WAKE_INTERVAL_S="1",
               HASHPLANE_ASIC_POLL_S="2")
    proc = subprocess.Popen(
        [*HASHPLANE, "demo", "--data-dir", str(data), "--api-port", str(port),
         "--asics", str(ASICS), "--gpu-rigs", "0", "--asic-base-ip", "127.0.204.1",
         "--scenario", "grid-dip", "--speed", "2", "--duration", "120",
         "--firmware-mix", "luxos=1,braiins=1,antminer=1,whatsminer=1,vnish=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    killed: list[int] = []
    done = False
    try:
        deadline = time.monotonic() + 200
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            if not killed:
                first = sql(url, "SELECT count() FROM hashplane.commands_asic "
                                 "WHERE kind = 'SleepAsic'")
                pids = control_pids(proc.pid)
                if first and first[0][0] and pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                continue
            rows = sql(url, DONE.format(db="hashplane"))
            if rows and rows[0] and rows[0][0]:
                done = True
                break
        restarted = control_pids(proc.pid) if proc.poll() is None else []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=90)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    assert killed, f"the control process never showed up\n{out[-3000:]}"
    assert done, "the dip did not play out after the kill\n" + \
        (data / "control-connectors.log").read_text(errors="replace")[-3000:]
    assert restarted and restarted[0] not in killed  # up started it again

    store = HistoryStore(f"chdb://{data / 'clickhouse'}").open()
    try:
        commands = store.query("SELECT DISTINCT command_id, kind FROM hashplane.commands_asic")
        acks = dict(store.query(
            "SELECT command_id, count() FROM (SELECT * FROM hashplane.commands_acks "
            "LIMIT 1 BY event_id) GROUP BY command_id"))
    finally:
        store.close()
    assert {k for _, k in commands} >= {"SleepAsic", "WakeAsic"}
    assert all(acks.get(cid) == 1 for cid, _ in commands), \
        {str(cid): acks.get(cid) for cid, _ in commands if acks.get(cid) != 1}
