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
from connectors.stratum_pool import (
    JOBS_KEPT,
    VERSION_ROLLING_MASK,
    Job,
    LocalPool,
    StratumPool,
    _Session,
    block_header,
    header_value,
    merkle_root,
    sha256d,
    swap32,
)
from schemas.commands import SwitchAsicPool
from schemas.events import ShareCountsObserved
from sim.farm import Farm
from sim.work import search
from streams.broker import free_port
from tests.sim.conftest import farm_config

SIM_DIFFICULTY = 2.0**-24  # a target the simulated miners reach in ~256 hashes


# Real blocks (public chain data): the genesis block, whose only transaction is its
# coinbase, and block 100,000 (four transactions: a merkle branch of two).
GENESIS_COINBASE = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04"
    "ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e20"
    "6272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01"
    "000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4c"
    "ef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000")
GENESIS_HASH = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
B100K_TXIDS = ["8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
               "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
               "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
               "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d"]
B100K_PREV = "000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250"
B100K_ROOT = "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
B100K_HASH = "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506"


def genesis_job() -> tuple[Job, str, str]:
    """The genesis coinbase cut where a pool's extranonces would go (inside its script)."""
    cb = GENESIS_COINBASE
    job = Job(job_id="g", prevhash="00" * 32, coinb1=cb[:100], coinb2=cb[116:], branch=(),
              version="00000001", nbits="1d00ffff", ntime="495fab29")
    return job, cb[100:108], cb[108:116]


def test_header_and_merkle_branch_of_real_blocks() -> None:
    job, en1, en2 = genesis_job()
    header = job.header(en1, en2, "495fab29", "7c2bac1d")
    assert header_value(header) == int(GENESIS_HASH, 16)
    txids = [bytes.fromhex(t)[::-1] for t in B100K_TXIDS]  # internal byte order
    branch = [txids[1].hex(), sha256d(txids[2] + txids[3]).hex()]
    root = merkle_root(txids[0], branch)
    assert root[::-1].hex() == B100K_ROOT
    prev = swap32(bytes.fromhex(B100K_PREV)[::-1]).hex()  # as mining.notify sends it
    header = block_header(1, prev, root, f"{1293623863:08x}", "1b04864c", f"{274148111:08x}")
    assert header_value(header) == int(B100K_HASH, 16)


def test_share_check_by_hash_duplicates_and_bounded_memory() -> None:
    job, en1, en2 = genesis_job()
    pool = StratumPool(difficulty=2536.0)  # the genesis hash is a share of difficulty 2536.4
    pool._jobs[job.job_id] = (job, set())
    s = _Session(extranonce1=en1, worker="w")
    share = ["w", "g", en2, "495fab29", "7c2bac1d"]
    assert pool.check(share, s) is None
    assert pool.check(share, s)[0] == 22  # type: ignore[index]
    assert pool.check(["w", "g", en2, "495fab29", "7c2bac1e"], s)[0] == 23  # type: ignore[index]
    pool.difficulty = 2537.0
    assert pool.check(["w", "g", en2, "495fab2a", "7c2bac1d"], s)[0] == 23  # type: ignore[index]
    for bad in (["w", "g", "zz", "495fab29", "7c2bac1d"], ["w", "g", en2, "495fab29"],
                ["w", "g", en2, "495fab29", "7c2bac1d", "00002000"], [1, 2, 3, 4, 5]):
        assert pool.check(bad, s)[0] == 20  # type: ignore[arg-type,index]
    assert pool.check(["w", "nojob", en2, "495fab29", "7c2bac1d"], s)[0] == 21  # type: ignore[index]
    assert pool.remembered == 1
    for _ in range(JOBS_KEPT):  # the genesis job ages out, and its shares with it
        pool.new_job()
    assert "g" not in pool._jobs and pool.remembered == 0
    assert pool.check(share, s)[0] == 21  # type: ignore[index]


def test_version_rolling_changes_only_the_masked_bits() -> None:
    job, en1, en2 = genesis_job()
    rolled = job.header(en1, en2, "495fab29", "7c2bac1d", version_bits=0xFFFFFFFF)
    assert int.from_bytes(rolled[:4], "little") == 1 | VERSION_ROLLING_MASK
    assert rolled[4:] == job.header(en1, en2, "495fab29", "7c2bac1d")[4:]


async def start_pool(sink: ListSink, difficulty: float = SIM_DIFFICULTY
                     ) -> tuple[LocalPool, asyncio.Event, asyncio.Task[None]]:
    pool = LocalPool("127.0.0.1", free_port(), Emitter(sink, source="pool:local",
                                                        site="site-1"), report_s=3600,
                     difficulty=difficulty, bind="127.0.0.1")
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    for _ in range(50):
        if pool.pool._server is not None:
            break
        await asyncio.sleep(0.02)
    return pool, stop, task


async def test_stratum_protocol_codes_and_accounting() -> None:
    """A client that does the work (the simulator's miner code, written apart from the
    pool) gets its good share accepted and its below-target one refused, over TCP."""
    sink = ListSink()
    pool, stop, task = await start_pool(sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", pool.pool.port)
    notify: list[Any] = []

    async def call(i: int, method: str, params: list[Any]) -> dict[str, Any]:
        writer.write(json.dumps({"id": i, "method": method, "params": params}).encode() + b"\n")
        await writer.drain()
        while True:
            msg = json.loads(await reader.readline())
            if msg.get("id") == i:
                return msg  # type: ignore[no-any-return]
            if msg.get("method") == "mining.notify":
                notify[:] = msg["params"]

    try:
        sub = await call(1, "mining.subscribe", ["test/1.0"])
        en1, en2_size = sub["result"][1], sub["result"][2]
        conf = await call(2, "mining.configure", [["version-rolling"], {}])
        assert conf["result"]["version-rolling"] is True
        assert (await call(3, "mining.submit", ["acct.w1", "x", "00", "00", "00"]))[
            "error"][0] == 24  # not authorized yet
        assert (await call(4, "mining.authorize", ["acct.w1", "x"]))["result"] is True
        while not notify:
            msg = json.loads(await reader.readline())
            if msg.get("method") == "mining.notify":
                notify[:] = msg["params"]
        good = search(notify, en1, en2_size, SIM_DIFFICULTY, good=True)
        low = search(notify, en1, en2_size, SIM_DIFFICULTY, good=False)
        assert good and low
        job = notify[0]
        ok = await call(5, "mining.submit", ["acct.w1", job, *good])
        dup = await call(6, "mining.submit", ["acct.w1", job, *good])
        stale = await call(7, "mining.submit", ["acct.w1", "nojob", *good])
        below = await call(8, "mining.submit", ["acct.w1", job, *low])
        other = await call(9, "mining.submit", ["acct.w2", job, *good])
        assert ok["result"] is True, ok
        assert [m["error"][0] for m in (dup, stale, below, other)] == [22, 21, 23, 24]
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
