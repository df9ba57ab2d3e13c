"""The ASIC actuator (``hashplane connect asic-actuator``, a real process) is SIGKILLed again
and again in the middle of a burst of commands to simulated LuxOS miners: every command ends
in exactly one ack, and a command whose ack went out is never applied again."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.commands import CommandAcknowledged, SleepAsic, WakeAsic
from schemas.settings import Settings
from sim.farm import Farm
from streams.publish import Publisher
from tests.conftest import until
from tests.faults.conftest import Broker, Proc, read_topic
from tests.sim.conftest import farm_config

pytestmark = pytest.mark.integration

ASICS, PER_ASIC, KILLS = 40, 10, 6


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    f = Farm(farm_config(tmp_path, asics=ASICS, gpu_rigs=0, model_endpoints=0))
    await f.start()
    yield f
    await f.stop()


def count_curtails(farm: Farm) -> Counter[str]:
    """Wrap each simulated miner's ``curtail`` handler to count what it really applied."""
    applied: Counter[str] = Counter()
    for a in farm.endpoints()["asics"]:
        api = farm.apis[a["host"]]
        real = api.cmd_curtail

        def counted(args: list[str], t: float, real: Any = real, dev: str = a["id"]) -> Any:
            out = real(args, t)
            applied[dev] += 1
            return out

        api.cmd_curtail = counted  # type: ignore[method-assign]
    return applied


async def acks(s: Settings) -> list[CommandAcknowledged]:
    return [e for _, _, e in await read_topic(s.kafka_bootstrap, "commands.acks", idle_s=0.5)
            if isinstance(e, CommandAcknowledged)]


async def test_actuator_killed_mid_burst_acks_every_command_exactly_once(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc],
        farm: Farm, tmp_path: Path) -> None:
    s = fault_settings
    endpoints = farm.write_site(tmp_path / "site.toml")
    applied = count_curtails(farm)
    devices = [a["id"] for a in farm.endpoints()["asics"]]
    now = datetime.now(UTC)
    commands = [
        (SleepAsic if k % 2 == 0 else WakeAsic)(
            site="site-1", device_id=d, ts=now, source="test", issued_at=now,
            expires_at=now + timedelta(seconds=900), reason="burst", issued_by="test")
        for k in range(PER_ASIC) for d in devices]
    async with Publisher(s.kafka_bootstrap) as pub:
        await pub.publish_many(commands)
    watch = AckWatch(s)
    watcher = asyncio.create_task(watch.run())
    actuator = spawn("actuator", "connect", "asic-actuator", "--site", str(endpoints), "--env-file",
                     str(endpoints.with_suffix(".env")))
    rng = random.Random(13)
    kills_at: list[int] = []
    try:
        for _ in range(KILLS):
            # kill when the miners have applied a mark more: mid-burst, with commands in
            # flight.  Counted where they are applied (the simulated miners answer in this
            # process), not by the acks read back from the broker, which under load came
            # back a second late: the whole burst had been acked before the test saw a mark.
            # A restart applies again what was in flight (one command a miner at most):
            # past those, 5-20 new ones (six kills stay within the 400).
            mark = sum(applied.values()) + ASICS + rng.randint(5, 20)
            await until(lambda m=mark: sum(applied.values()) >= m, 60, 0.005,
                        what=f"the miners applying past {mark} commands")
            actuator.kill()
            kills_at.append(len(watch.acks))
            assert kills_at[-1] < len(commands), "the burst ended before the actuator was killed"
            actuator.start()
        await until(lambda: len(watch.acks) >= len(commands), 120, 0.2,
                    what="every command acked")
        await asyncio.sleep(3.0)  # and nothing more arrives
    finally:
        watcher.cancel()
    got = await acks(s)
    assert actuator.alive, actuator.tail()
    assert actuator.stop() == 0, actuator.tail()

    per_command = Counter(a.command_id for a in got)
    ids = {c.command_id for c in commands}
    print(f"{len(commands)} commands, {KILLS} SIGKILLs (at acks {kills_at}): {len(got)} acks, "
          f"{sum(1 for n in per_command.values() if n > 1)} commands with more than one, "
          f"statuses {dict(Counter(a.status for a in got))}; curtail RPCs applied "
          f"{sum(applied.values())} (commands whose ack was not out at a kill run again)")
    assert set(per_command) == ids and set(per_command.values()) == {1}
    assert {a.status for a in got} == {"applied"}
    per_device = Counter(c.device_id for c in commands)
    for d in devices:
        # one command per miner is in flight at a time: a kill repeats at most that one
        assert per_device[d] <= applied[d] <= per_device[d] + KILLS, d


class AckWatch:
    """Follows commands.acks as they are published (to time the kills)."""

    def __init__(self, s: Settings) -> None:
        self.s, self.acks = s, []  # type: ignore[var-annotated]

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer("commands.acks", bootstrap_servers=self.s.kafka_bootstrap,
                             group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=10)
        await c.start()
        try:
            while True:
                for records in (await c.getmany(timeout_ms=10)).values():
                    self.acks += records
        finally:
            await c.stop()
