"""Connectors ride out a 30 s broker outage: ``hashplane connect meter`` and ``connect asic``
(real processes, reading the simulated meter over Modbus TCP and the simulated miners over
the CGMiner RPC) keep polling, keep what they read, and deliver it when the broker is back,
with no restart."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.events import AsicTelemetryObserved, GridMeasured
from schemas.settings import Settings
from sim.farm import Farm
from tests.conftest import until
from tests.faults.conftest import Broker, Proc, read_topic
from tests.sim.conftest import farm_config

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    f = Farm(farm_config(tmp_path, asics=6, gpu_rigs=0, model_endpoints=0))
    await f.start()
    yield f
    await f.stop()


async def test_meter_and_asic_connectors_ride_out_a_30s_broker_outage(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc],
        farm: Farm, tmp_path: Path) -> None:
    s = fault_settings.model_copy(update={"asic_poll_s": 1.0})
    endpoints = farm.write_site(tmp_path / "site.toml")
    meter = spawn("meter", "connect", "meter", "--site", str(endpoints), "--env-file",
                     str(endpoints.with_suffix(".env")), settings=s)
    asic = spawn("asic", "connect", "asic", "--site", str(endpoints), "--env-file",
                     str(endpoints.with_suffix(".env")), settings=s)

    async def flowing() -> bool:
        topics = {t: await read_topic(s.kafka_bootstrap, t, idle_s=0.3)
                  for t in ("grid.readings", "asic.telemetry")}
        return all(len(v) >= 5 for v in topics.values())

    await until(flowing, 60, 1.0, what="readings flowing before the outage")
    broker_proc.kill()
    down = datetime.now(UTC)
    await asyncio.sleep(OUTAGE_S)
    up = datetime.now(UTC)
    assert meter.alive and asic.alive, meter.tail() + asic.tail()
    broker_proc.start()

    asics = {a["id"] for a in farm.endpoints()["asics"]}
    fifth = timedelta(seconds=OUTAGE_S / 5)

    async def delivered() -> tuple[list[GridMeasured], list[AsicTelemetryObserved]] | None:
        grid = [e for _, _, e in await read_topic(s.kafka_bootstrap, "grid.readings", 0.5)
                if isinstance(e, GridMeasured)]
        tele = [e for _, _, e in await read_topic(s.kafka_bootstrap, "asic.telemetry", 0.5)
                if isinstance(e, AsicTelemetryObserved)]
        # Readings from after the outage, and from its first and last fifth: polled all
        # along (a process stalled on the dead broker would leave a hole).  The outage's
        # readings may come after later ones: the new broker acknowledges and drops what
        # reaches it before its topics exist, and the publisher sends those again.
        during = [e.ts for e in grid if down < e.ts < up]
        complete = (any(e.ts > up for e in grid) and bool(during)
                    and min(during) < down + fifth and max(during) > up - fifth
                    and {e.device_id for e in tele if e.ts > up} == asics
                    and {e.device_id for e in tele if down < e.ts < up} == asics)
        return (grid, tele) if complete else None

    back = asyncio.get_running_loop().time()
    grid, tele = await until(delivered, 90, 1.0, what="the outage's readings delivered")
    took = asyncio.get_running_loop().time() - back
    during_grid = {e.event_id for e in grid if down < e.ts < up}
    during_tele = {e.event_id for e in tele if down < e.ts < up}
    print(f"{OUTAGE_S:g} s outage: {len(during_grid)} meter readings and {len(during_tele)} "
          f"ASIC reads taken during it were delivered afterwards (all of them after "
          f"{took:.1f} s); connectors restarted: 0")
    assert meter.alive and asic.alive and meter.starts == asic.starts == 1
    # and every reading a connector counted reached its topic
    assert meter.stop() == 0 and asic.stop() == 0
    for proc, topic, kind in ((meter, "grid.readings", GridMeasured),
                              (asic, "asic.telemetry", AsicTelemetryObserved)):
        said = summary(proc)
        stored = {e.event_id for _, _, e in await read_topic(s.kafka_bootstrap, topic, 0.5)
                  if isinstance(e, kind)}
        assert (said["dropped"], said["not sent"]) == (0, 0), proc.tail()
        assert len(stored) == said[kind.__name__], (topic, len(stored), said)


def summary(proc: Proc) -> dict[str, int]:
    """The counts of the last ``hashplane connect ... stopped:`` line in a process's log."""
    line = [ln for ln in proc.tail(100_000).splitlines() if " stopped: events " in ln][-1]
    tail = line.split(" stopped: ", 1)[1].replace("events ", "")
    return {k.strip(): int(v) for k, v in re.findall(r"(\w[\w ]*?)[= ](\d+)", tail)}
