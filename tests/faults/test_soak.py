"""The long soak (not in the default suite): ``HASHPLANE_SOAK=1 [HASHPLANE_SOAK_S=600]
.venv/bin/python -m pytest -s tests/faults/test_soak.py``.

For ``HASHPLANE_SOAK_S`` seconds a site streams events at a steady rate and commands to 20
simulated miners while, one fault at a time with a settling pause after each, the sink or
the actuator is SIGKILLed and restarted, the broker restarts empty, or it is cut off for
5-15 s.  At the end: every event stored exactly once, every command exactly one ack."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.commands import SleepAsic, WakeAsic
from schemas.envelope import Event
from schemas.settings import Settings
from sim.farm import Farm
from streams.history import HistoryStore
from streams.publish import Publisher
from tests.conftest import until
from tests.faults.conftest import Broker, Proc
from tests.faults.test_broker_restart import site_events
from tests.sim.conftest import farm_config

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not os.environ.get("HASHPLANE_SOAK"), reason="the soak runs with HASHPLANE_SOAK=1")]

SOAK_S = float(os.environ.get("HASHPLANE_SOAK_S", "600"))


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    f = Farm(farm_config(tmp_path, asics=20, gpu_rigs=0, model_endpoints=0))
    await f.start()
    yield f
    await f.stop()


@pytest.mark.timeout(SOAK_S + 900)
async def test_soak_random_kills_and_broker_restarts(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc],
        farm: Farm, tmp_path: Path) -> None:
    s = fault_settings
    endpoints = farm.write_site(tmp_path / "site.toml")
    devices = [a["id"] for a in farm.endpoints()["asics"]]
    sink = spawn("sink", "sink")
    actuator = spawn("actuator", "connect", "asic-actuator", "--site", str(endpoints), "--env-file",
                     str(endpoints.with_suffix(".env")))
    rng = random.Random(int(os.environ.get("HASHPLANE_SOAK_SEED", "7")))
    stop = asyncio.Event()
    produced: list[Event] = []
    commands: list[Event] = []

    async def site() -> None:
        async with Publisher(s.kafka_bootstrap, client_id="soak-site") as pub:
            i = 0
            while not stop.is_set():
                batch = site_events(100, 1_000_000 + i)
                i += 100
                now = datetime.now(UTC)
                cmd = (SleepAsic if i % 200 else WakeAsic)(
                    site="site-1", device_id=devices[(i // 100) % len(devices)], ts=now,
                    source="soak", issued_at=now, expires_at=now + timedelta(hours=1),
                    reason="soak", issued_by="soak")
                await pub.offer([*batch, cmd])
                produced.extend(batch)
                commands.append(cmd)
                await asyncio.sleep(0.2)  # 500 events/s, 5 commands/s
            await until(lambda: pub.stats.buffered == 0, 120, 0.5, what="outbox drained")

    faults: Counter[str] = Counter()
    timeline: list[tuple[str, str]] = []
    task = asyncio.create_task(site())
    loop = asyncio.get_running_loop()
    end = loop.time() + SOAK_S
    while loop.time() < end:
        await asyncio.sleep(rng.uniform(8, 15))  # settle, then one fault
        fault = rng.choice(["sink", "actuator", "broker-restart", "broker-outage"])
        faults[fault] += 1
        timeline.append((datetime.now(UTC).isoformat(), fault))
        if fault == "sink":
            sink.kill()
            sink.start()
        elif fault == "actuator":
            actuator.kill()
            actuator.start()
        elif fault == "broker-restart":
            broker_proc.kill_tansu()
        else:
            broker_proc.kill()
            await asyncio.sleep(rng.uniform(5, 15))
            broker_proc.start()
    stop.set()
    await task
    # the actuator and the sink catch up (acks of earlier incarnations are in ClickHouse
    # only: the history, not the broker, is where to count)
    await asyncio.sleep(45)
    assert sink.stop() == 0 and actuator.stop() == 0
    store = HistoryStore(s.history_dsn).open()
    try:
        rows = store.query("SELECT event_id, count() FROM hashplane.events WHERE topic IN "
                           "('shares', 'asic.telemetry', 'grid.readings') GROUP BY event_id")
        acks = store.query("SELECT command_id, uniqExact(event_id) FROM hashplane.commands_acks "
                           "GROUP BY command_id")
    finally:
        store.close()
    stored = dict(rows)
    acked = dict(acks)
    want = {e.event_id for e in produced if e.kind != "CommandAcknowledged"}
    print(f"soak {SOAK_S:g} s, faults {dict(faults)}: events {len(want)}, stored "
          f"{len(want & set(stored))}, stored twice {sum(1 for n in stored.values() if n > 1)}; "
          f"commands {len(commands)}, acked {len(acked)}, acked twice "
          f"{sum(1 for n in acked.values() if n > 1)}")
    print("faults at", timeline)
    missing = [c for c in commands if c.command_id not in acked]  # type: ignore[attr-defined]
    assert not missing, [(c.ts.isoformat(), c.device_id) for c in missing][:20]
    assert want <= set(stored) and max(stored.values()) == 1
    assert max(acked.values()) == 1
