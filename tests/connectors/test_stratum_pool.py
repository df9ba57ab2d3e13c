"""The local Stratum pool: the protocol with a raw client, and simulated miners switched to
it for real, with every share accounted once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.asic_actuator import AsicActuator
from connectors.base import Emitter, ListSink
from connectors.cgminer import AsicEndpoint, AsicTelemetry
from connectors.stratum_pool import LocalPool
from schemas.commands import SwitchAsicPool
from schemas.events import ShareCountsObserved
from sim.farm import Farm
from streams.broker import free_port
from tests.sim.conftest import farm_config


async def start_pool(sink: ListSink) -> tuple[LocalPool, asyncio.Event, asyncio.Task[None]]:
    pool = LocalPool("127.0.0.1", free_port(), Emitter(sink, source="pool:local",
                                                        site="site-1"), report_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    for _ in range(50):
        if pool.pool._server is not None:
            break
        await asyncio.sleep(0.02)
    return pool, stop, task


async def test_stratum_protocol_codes_and_accounting() -> None:
    sink = ListSink()
    pool, stop, task = await start_pool(sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", pool.pool.port)

    async def call(i: int, method: str, params: list[Any]) -> dict[str, Any]:
        writer.write(json.dumps({"id": i, "method": method, "params": params}).encode() + b"\n")
        await writer.drain()
        while True:
            msg = json.loads(await reader.readline())
            if msg.get("id") == i:
                return msg  # type: ignore[no-any-return]
            if msg.get("method") == "mining.notify":
                jobs.append(msg["params"][0])

    jobs: list[str] = []
    try:
        assert (await call(1, "mining.subscribe", ["test/1.0"]))["error"] is None
        assert (await call(2, "mining.authorize", ["acct.w1", "x"]))["result"] is True
        await asyncio.sleep(0.05)
        line = json.loads(await reader.readline())  # set_difficulty / notify pushed
        if line.get("method") == "mining.notify":
            jobs.append(line["params"][0])
        while not jobs:
            msg = json.loads(await reader.readline())
            if msg.get("method") == "mining.notify":
                jobs.append(msg["params"][0])
        job = jobs[-1]
        ok = await call(3, "mining.submit", ["acct.w1", job, "0001", "6553f100", "1234abcd"])
        dup = await call(4, "mining.submit", ["acct.w1", job, "0001", "6553f100", "1234abcd"])
        stale = await call(5, "mining.submit", ["acct.w1", "nojob", "0002", "6553f100", "1"])
        low = await call(6, "mining.submit", ["acct.w1", job, "0003", "6553f100", "ffffffff"])
        assert ok["result"] is True
        assert [m["error"][0] for m in (dup, stale, low)] == [22, 21, 23]
        await pool.report()
        (e,) = [x for x in sink.events if isinstance(x, ShareCountsObserved)]
        assert (e.worker, e.accepted, e.rejected, e.stale) == ("acct.w1", 1, 2, 1)
        assert e.pool == pool.url and e.difficulty_accepted == pool.difficulty
        await pool.report()
        assert len(sink.events) == 1  # nothing new, nothing published
    finally:
        writer.close()
        stop.set()
        await task


@pytest.fixture
async def farm(tmp_path: Path):  # type: ignore[no-untyped-def]
    f = Farm(farm_config(tmp_path, asics=2, gpu_rigs=0, model_endpoints=0, speed=60.0))
    await f.start()
    yield f
    await f.stop()


async def test_miners_switched_to_the_pool_submit_and_are_counted_once(farm: Farm) -> None:
    pool_sink, miner_sink = ListSink(), ListSink()
    pool, stop, task = await start_pool(pool_sink)
    eps = [AsicEndpoint(a["id"], a["host"], a["port"]) for a in farm.endpoints()["asics"]]
    sweeper = AsicTelemetry(eps, Emitter(miner_sink, source="connector:asic", site="site-1"),
                            local_pool_url=pool.url)
    try:
        await sweeper.sweep()  # baseline counters
        now = datetime.now(UTC)
        cmd = SwitchAsicPool(site="site-1", device_id="asic-00001", ts=now, source="t",
                             issued_at=now, expires_at=now + timedelta(seconds=30), reason="t",
                             issued_by="t", pool_url=pool.url)
        assert (await AsicActuator(eps)(cmd))[0] == "applied"
        for _ in range(50):
            await asyncio.sleep(0.2)
            if pool.pool.stats.accepted >= 3:
                break
        await pool.report()
        await sweeper.sweep()
        by_pool = [e for e in pool_sink.events if isinstance(e, ShareCountsObserved)]
        assert by_pool and by_pool[0].worker == "hashplane.asic00001" and by_pool[0].accepted >= 3
        from_miners = {e.device_id for e in miner_sink.events
                       if isinstance(e, ShareCountsObserved)}
        assert "asic-00001" not in from_miners  # the pool counted its shares
        assert "asic-00002" in from_miners  # the miner still on its own pool is counted
    finally:
        stop.set()
        await task
