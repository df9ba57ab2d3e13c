"""`hashplane demo` as an operator runs it: serves /healthz and share ratios within 60 s,
stops cleanly on Ctrl-C and leaves the history readable."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import tomllib
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from streams.broker import free_port
from streams.history import HistoryStore
from tests.conftest import HASHPLANE, ROOT

pytestmark = pytest.mark.integration


def test_demo_serves_share_ratios_within_60s_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_API_KEY="demo-key")
    start = time.monotonic()
    proc = subprocess.Popen(
        [*HASHPLANE, "demo", "--data-dir", str(data), "--api-port", str(port),
         "--asics", "8", "--gpu-rigs", "1", "--asic-base-ip", "127.0.200.1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    body = None
    try:
        while time.monotonic() - start < 60:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                r = httpx.get(f"http://127.0.0.1:{port}/v1/workers/rig01-gpu0/shares", timeout=5,
                              headers={"Authorization": "Bearer demo-key"})
                if health.json()["status"] == "ok" and r.status_code == 200:
                    body = r.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        elapsed = time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
    assert body is not None, f"no share ratios after 60 s:\n{out[-3000:]}"
    assert body["latest"]["accepted"] + body["latest"]["rejected"] >= 0
    assert body["latest"]["events"] >= 1
    assert proc.returncode == 0, out[-3000:]
    assert f"http://127.0.0.1:{port}" in out and "hashplane stopped" in out
    assert "8 ASICs from 127.0.200.1:4028, 1 GPU rigs" in out
    inventory = tomllib.loads((data / "sim" / "site.toml").read_text())
    assert len(inventory["asics"]) == 8 and inventory["asics"][0]["host"] == "127.0.200.1"
    # the demo's fleet mixes the firmwares
    assert {a["firmware"] for a in inventory["asics"]} == {"luxos", "braiins", "antminer",
                                                           "whatsminer", "vnish"}
    print(f"demo answered share ratios {elapsed:.1f}s after start")

    store = HistoryStore(f"chdb://{data / 'clickhouse'}").open()
    try:
        n = store.query("SELECT count() FROM hashplane.events WHERE topic = 'shares'")[0][0]
        m = store.query("SELECT count() FROM hashplane.metrics_shares")[0][0]
        by_topic = dict(store.query("SELECT topic, count() FROM hashplane.events GROUP BY topic"))
        asic = store.query("SELECT uniqExact(device_id) FROM hashplane.asic_telemetry")[0][0]
    finally:
        store.close()
    assert n > 0 and m > 0
    # The site's connectors read the simulated farm over its real protocols.
    for topic in ("asic.telemetry", "grid.readings", "power.readings", "uplink.status",
                  "gpu.telemetry", "compute.jobs", "compute.health"):
        assert by_topic.get(topic, 0) > 0, (topic, by_topic)
    assert asic == 8


async def test_up_runs_against_an_external_broker_and_store(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The production entry point: no embedded broker, endpoints from the environment."""
    import asyncio

    from schemas.events import ShareCountsObserved
    from streams.publish import Publisher
    from tests.factories import T0

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_KAFKA_BOOTSTRAP=broker.bootstrap,
               HASHPLANE_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'ch'}",
               HASHPLANE_DATA_DIR=str(tmp_path / "data"), HASHPLANE_API_PORT=str(port),
               HASHPLANE_API_KEYS='{"reader": "read"}')
    proc = subprocess.Popen([*HASHPLANE, "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        async with Publisher(broker.bootstrap) as pub:
            await pub.publish_many([ShareCountsObserved(
                site="site-1", device_id="asic-0001", ts=T0 + timedelta(seconds=10 * i),
                source="test", worker="asic-0001", accepted=9, rejected=1, interval_s=10)
                for i in range(10)])  # 0-90 s: the first minute closes at 90 s
        body = None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"X-API-Key": "reader"}) as client:
            for _ in range(60):
                assert proc.poll() is None
                try:
                    r = await client.get("/v1/workers/asic-0001/shares")
                    if r.status_code == 200 and any(h["final"] for h in r.json()["history"]):
                        body = r.json()
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert body is not None, out[-3000:]
    closed = [h for h in body["history"] if h["final"]]
    assert [(h["accepted"], h["events"]) for h in closed] == [(54, 6)], body
    assert body["latest"]["rejected_pct"] == 10.0
    assert proc.returncode == 0, out[-3000:]
    assert "embedded" not in out.split("hashplane is running")[1].split("\n")[0]


async def test_up_runs_the_connectors_of_a_site_inventory(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Production shape: the farm is "somewhere else", `up --site` reads its inventory
    (a fleet of five firmwares), the secrets from an environment file."""
    import asyncio

    from sim.farm import Farm
    from tests.sim.conftest import farm_config

    farm = Farm(farm_config(tmp_path, asics=5, gpu_rigs=1, model_endpoints=1, firmware_mix={
        "luxos": 1, "braiins": 1, "antminer": 1, "whatsminer": 1, "vnish": 1}))
    await farm.start()
    devices = farm.write_site(tmp_path / "site.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), HASHPLANE_KAFKA_BOOTSTRAP=broker.bootstrap,
               HASHPLANE_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'ch'}",
               HASHPLANE_DATA_DIR=str(tmp_path / "data"), HASHPLANE_API_PORT=str(free_port()))
    check = subprocess.run([*HASHPLANE, "site", "check", str(devices)], env=env,
                           capture_output=True, text=True)
    assert check.returncode == 1 and "HASHPLANE_SIM_COORDINATOR_KEY is not set" in check.stderr
    proc = subprocess.Popen([*HASHPLANE, "up", "--site", str(devices), "--env-file",
                             str(devices.with_suffix(".env")), "--duration", "15"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None:
            await asyncio.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=30)[0].decode()
        await farm.stop()
    assert proc.returncode == 0, out[-3000:]
    store = HistoryStore(f"chdb://{tmp_path / 'ch'}").open()
    try:
        by_topic = dict(store.query("SELECT topic, uniqExact(device_id) FROM hashplane.events "
                                    "GROUP BY topic"))
    finally:
        store.close()
    assert by_topic.get("asic.telemetry") == 5 and by_topic.get("gpu.telemetry") == 2
    assert by_topic.get("grid.readings") == 1 and by_topic.get("power.readings") == 2
