"""The worker's durable state survives the broker forgetting it.

One box: ``hashplane broker`` and ``hashplane up`` (sink, API and the supervised Faust
workers, the control lane's holding the scheduler, on the real ClickHouse engine), fed a
live site (40 running ASICs, three supply feeds, the meter).  Ten ASICs have slept three
times each (their acks are the history).

1. The broker restarts under the running worker: the worker writes its tables into the new
   changelog topics (they hold the cycles again).
2. A power cut: broker and ``up`` (and with it the worker) die at once and start again.  The
   new worker finds the changelogs empty, restores the state from ClickHouse through the API,
   and acts within a bound: an operator's 60-kW cap is acked and the scheduler sheds 20
   ASICs, never one of the ten with three cycles (fewest cycles first: it remembers them).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest

from schemas.commands import CapSiteLoad, CommandAcknowledged, SleepAsic
from schemas.envelope import Event
from schemas.events import AsicTelemetryObserved, FeedPowerMeasured, GridMeasured
from schemas.settings import Settings
from streams.broker import free_port
from streams.publish import Publisher
from streams.topics import changelog_topic
from tests.conftest import until
from tests.faults.conftest import Broker, Proc, read_topic

pytestmark = pytest.mark.integration

ASICS = [f"asic{i:02d}" for i in range(40)]
WORN = ASICS[:10]  # slept three times each
FEEDS = ["feed-a", "feed-b", "feed-c"]
KEY = "fault-test-key"
RESTORE_BOUND_S = 60.0
#: ``up`` runs the scheduler in the control lane's worker, which logs here
SCHEDULER_LOG = "worker-control.log"


def site_now() -> list[Event]:
    """One second of the site: every ASIC running at 3 kW, three 56-kW feeds, the meter."""
    now = datetime.now(UTC)
    return [
        *[AsicTelemetryObserved(site="site-1", device_id=d, ts=now, source="t", state="running",
                                hashrate_ths=100, hashrate_avg_ths=100, power_w=3000,
                                accepted=1, rejected=0, stale=0, hardware_errors=0,
                                elapsed_s=600, pool_url="stratum+tcp://pool.example:3333")
          for d in ASICS],
        *[FeedPowerMeasured(site="site-1", device_id=f, ts=now, source="t", feed_id=f,
                            voltage_v=400, current_a=140, power_kw=40, capacity_kw=56)
          for f in FEEDS],
        GridMeasured(site="site-1", device_id="meter", ts=now, source="t", frequency_hz=50.0,
                     voltage_v=400, active_power_kw=120, reactive_power_kvar=1)]


async def live_site(s: Settings, stop: asyncio.Event) -> None:
    async with Publisher(s.kafka_bootstrap, client_id="test-site") as pub:
        while not stop.is_set():
            await pub.offer(site_now())
            await asyncio.sleep(1.0)


async def state(api: str) -> dict[str, dict[str, object]]:
    try:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(f"{api}/v1/state", headers={"Authorization": f"Bearer {KEY}"})
    except httpx.TransportError:
        return {}  # not up yet
    return dict(r.json()["tables"]) if r.status_code == 200 else {}


async def cycles_of(bootstrap: str, app_id: str) -> dict[str, int]:
    """What the scheduler's changelog topic holds: device -> cycles."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import UnknownTopicOrPartitionError

    out: dict[str, int] = {}
    c = AIOKafkaConsumer(changelog_topic(app_id, "scheduler_asics"), bootstrap_servers=bootstrap,
                         group_id=None, auto_offset_reset="earliest")
    try:
        await c.start()
    except UnknownTopicOrPartitionError:  # not (re)created yet: nothing in it
        await c.stop()
        return out
    try:
        for _ in range(5):
            for records in (await c.getmany(timeout_ms=300)).values():
                for r in records:
                    if r.value is not None and json.loads(r.value) is not None:
                        out[json.loads(r.key).split("/", 1)[1]] = json.loads(r.value)[0]
    finally:
        await c.stop()
    return out


async def test_worker_restores_its_state_after_the_broker_lost_it_and_acts_on_a_cap(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc]) -> None:
    port = free_port()
    s = fault_settings.model_copy(update={"supply_feeds": FEEDS, "api_key": KEY,
                                          "api_port": port, "energy_emit_s": 0.5})
    api = f"http://127.0.0.1:{port}"
    up = spawn("up", "up", settings=s)
    stop = asyncio.Event()
    site = asyncio.create_task(live_site(s, stop))
    try:
        # the history: ten ASICs slept three times each (the actuator's applied acks)
        t0 = datetime.now(UTC) - timedelta(minutes=30)
        acks = [CommandAcknowledged(
            site="site-1", device_id=d, ts=t0 + timedelta(minutes=k), source="act",
            command_id=uuid4(), command_kind="SleepAsic", status="applied", latency_ms=300,
            actuator="actuator:asic") for k in range(3) for d in WORN]
        async with Publisher(s.kafka_bootstrap) as pub:
            await pub.publish_many(acks)
        await until(lambda: _cycles_in_api(api), 90, 1.0, what="acks folded into the history")
        await until(lambda: _changelog_cycles(s), 60, 1.0, what="live tables hold the cycles")

        # 1. the broker restarts empty under the running worker
        broker_proc.kill_tansu()
        await until(lambda: "tansu broker restarted" in broker_proc.tail(), 30,
                    what="broker back")
        try:
            await until(lambda: _changelog_cycles(s), 60, 1.0,
                        what="the running worker rewrote its tables into the new changelogs")
        except AssertionError as exc:  # say what the workers and their supervisor were doing
            worker = (s.data_dir / SCHEDULER_LOG).read_text(errors="replace")[-6000:]
            raise AssertionError(f"{exc}\n--- {SCHEDULER_LOG} ---\n{worker}\n--- up ---\n"
                                 f"{up.tail()}\n--- broker ---\n{broker_proc.tail()}") from None

        # 2. power cut: broker and up (its worker with it) die at once, start again
        broker_proc.kill()
        up.kill()
        broker_proc.start()
        up.start()
        started = asyncio.get_running_loop().time()
        await until(lambda: "restored from the history" in (s.data_dir / SCHEDULER_LOG)
                    .read_text(errors="replace"), RESTORE_BOUND_S, 0.5,
                    what="the new control-lane worker restoring from the history")
        now = datetime.now(UTC)
        cap = CapSiteLoad(site="site-1", device_id="site-1", ts=now, source="api",
                          issued_at=now, expires_at=now + timedelta(seconds=120),
                          reason="grid operator", issued_by="operator:test", limit_kw=60.0)
        async with Publisher(s.kafka_bootstrap) as pub:
            await pub.publish(cap)

        async def acted() -> list[SleepAsic] | None:
            applied = [e for _, _, e in await read_topic(s.kafka_bootstrap, "commands.acks",
                                                         idle_s=0.3)
                       if isinstance(e, CommandAcknowledged) and e.command_id == cap.command_id]
            sleeps = [e for _, _, e in await read_topic(s.kafka_bootstrap, "commands.asic",
                                                        idle_s=0.3) if isinstance(e, SleepAsic)]
            return sleeps if applied and len(sleeps) >= 20 else None

        sleeps = await until(acted, RESTORE_BOUND_S, 1.0, what="the cap acked and acted on")
        took = asyncio.get_running_loop().time() - started
    finally:
        stop.set()
        await site
    log = (s.data_dir / SCHEDULER_LOG).read_text(errors="replace")
    print(f"after the power cut the control-lane worker restored its state and shed "
          f"{len(sleeps)} ASICs for the cap {took:.1f} s after the box came back; "
          f"{log.count('restored from the history')} restore(s) from ClickHouse")
    slept = {c.device_id for c in sleeps}
    assert len(slept) == 20
    assert not slept & set(WORN), "the restored cycles were ignored"
    assert up.stop() == 0, up.tail()


async def _cycles_in_api(api: str) -> bool:
    t = await state(api)
    return all(t.get("scheduler_asics", {}).get(f"site-1/{d}", [0])[0] == 3 for d in WORN)


async def _changelog_cycles(s: Settings) -> bool:
    got = await cycles_of(s.kafka_bootstrap, s.app_id)
    return all(got.get(d) == 3 for d in WORN)


async def test_a_killed_worker_recovers_its_tables_and_does_not_command_twice(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc]) -> None:
    """The two lanes' workers as ``up`` runs them; the control lane's (energy, scheduler,
    the site feed's forwarder) SIGKILLed twice while the main one keeps running: after the
    first kill it recovers every cycle from its changelog (written in one batch: the seal
    makes Tansu's answer exact), and after the second, the sleeps its predecessor sent and nobody
    acked yet are still in flight for it: it does not send them again."""
    s = fault_settings.model_copy(update={"supply_feeds": FEEDS, "energy_emit_s": 0.5,
                                          "command_ttl_s": 120.0})
    worker = spawn("worker-control", "worker", "--lane", "control", settings=s)
    main = spawn("worker", "worker", "--lane", "main", settings=s)
    stop = asyncio.Event()
    site = asyncio.create_task(live_site(s, stop))
    try:
        t0 = datetime.now(UTC) - timedelta(minutes=30)
        async with Publisher(s.kafka_bootstrap) as pub:
            await pub.publish_many([CommandAcknowledged(
                site="site-1", device_id=d, ts=t0 + timedelta(minutes=k), source="act",
                command_id=uuid4(), command_kind="SleepAsic", status="applied",
                latency_ms=300, actuator="actuator:asic") for k in range(3) for d in WORN])
        await until(lambda: _changelog_cycles(s), 60, 1.0, what="the tables hold the cycles")
        worker.kill()
        worker.start()
        await until(lambda: "sealed" in worker.tail(), 60, 0.5, what="worker restarted")
        now = datetime.now(UTC)
        async with Publisher(s.kafka_bootstrap) as pub:
            await pub.publish(CapSiteLoad(
                site="site-1", device_id="site-1", ts=now, source="api", issued_at=now,
                expires_at=now + timedelta(seconds=120), reason="grid operator",
                issued_by="operator:test", limit_kw=60.0))

        async def sleeps() -> list[SleepAsic]:
            return [e for _, _, e in await read_topic(s.kafka_bootstrap, "commands.asic",
                                                      idle_s=0.3) if isinstance(e, SleepAsic)]

        first = await until(lambda: _at_least(sleeps, 20), 60, 1.0, what="20 sleeps")
        worker.kill()  # nobody acks these sleeps: they stay in flight
        worker.start()
        await until(lambda: "sealed" in worker.tail(), 60, 0.5, what="worker restarted")
        await asyncio.sleep(10.0)  # ten seconds of headroom decisions at 2 Hz
        again = await sleeps()
    finally:
        stop.set()
        await site
    per_device = {d: sum(1 for c in again if c.device_id == d) for d in ASICS}
    print(f"after two SIGKILLs of the control lane's worker: first shed {len(first)} ASICs, "
          f"none of the {len(WORN)} worn ones; sleep commands per ASIC after the second "
          f"restart: max "
          f"{max(per_device.values())}")
    assert not {c.device_id for c in first} & set(WORN)
    assert len(again) == len(first) == 20 and max(per_device.values()) == 1
    assert worker.stop() == 0, worker.tail()
    assert main.stop() == 0, main.tail()


async def _at_least(get: Callable[[], object], n: int) -> object:
    got = await get()  # type: ignore[misc]
    return got if len(got) >= n else None
