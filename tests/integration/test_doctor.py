"""``hashplane doctor`` against a real broker, the real ClickHouse engine and the simulated
farm over real sockets: a healthy site checks out; a miner that does not answer, a broker
that is not there and an inventory with a hole are each said in plain words, exit 1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.settings import Settings
from schemas.site import dump_site
from sim.farm import Farm
from streams.broker import free_port
from streams.history import HistoryStore
from tests.conftest import HASHPLANE, child_env
from tests.sim.conftest import farm_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    f = Farm(farm_config(tmp_path, asics=6, gpu_rigs=1, model_endpoints=1,
                         coordinator=False))
    await f.start()
    yield f
    await f.stop()


async def doctor(s: Settings, site: Path, env: Path) -> tuple[int, str]:
    """The real command, in a child process (the farm answers from this one's loop)."""
    proc = await asyncio.create_subprocess_exec(
        *HASHPLANE, "doctor", "--site", str(site), "--env-file", str(env), env=child_env(s),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_doctor_checks_every_part_and_says_what_is_wrong(
        settings: Settings, store: HistoryStore, farm: Farm, tmp_path: Path) -> None:
    store.close()  # the doctor opens the embedded engine itself, as on a stopped box
    site = farm.write_site(tmp_path / "site.toml")
    env = site.with_suffix(".env")
    rc, text = await doctor(settings, site, env)
    assert rc == 0, text
    for line in ("ok   configuration", "ok   inventory", "ok   Kafka", "ok   ClickHouse",
                 "ok   ASICs 6: every RPC port answers", "ok   grid meter", "ok   MQTT broker",
                 "ok   rig ", "ok   model endpoint", "ok   local pool"):
        assert line in text, (line, text)

    inv = farm.site()
    dead = inv.asics[2].model_copy(update={"port": free_port()})
    broken = inv.model_copy(update={"asics": [*inv.asics[:2], dead, *inv.asics[3:]]})
    (tmp_path / "one-down.toml").write_text(dump_site(broken, "# one miner down"))
    rc, text = await doctor(settings, tmp_path / "one-down.toml", env)
    assert rc == 0 and "warn ASICs 5 of 6 answer" in text, text
    assert f"{dead.id} ({dead.host}:{dead.port}: connection refused" in text

    elsewhere = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    rc, text = await doctor(elsewhere, site, env)
    assert rc == 1 and "FAIL Kafka" in text and "connection refused" in text, text
    assert "HASHPLANE_KAFKA_BOOTSTRAP" in text

    hole = site.read_text().replace(f'host = "{inv.asics[0].host}", ', "", 1)
    assert hole != site.read_text()
    (tmp_path / "hole.toml").write_text(hole)
    rc, text = await doctor(settings, tmp_path / "hole.toml", env)
    assert rc == 1 and "FAIL inventory" in text and "asics[0].host" in text, text
    assert "Traceback" not in text


async def test_doctor_fails_a_partition_feed_with_another_partition_count(
        tmp_path: Path) -> None:
    """An operator who gave ``shares`` more partitions on a cluster and not its partition
    feed is told which topics and what to do (the forwarder sends partition p to p)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.broker import EmbeddedBroker
    from streams.doctor import check_kafka
    from streams.topics import ensure_topics, partition_feed

    broker = EmbeddedBroker(log_file=tmp_path / "broker.log")
    await broker.start()
    try:
        assert [f.status for f in await check_kafka(broker.bootstrap)] == ["warn"]
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(partition_feed("shares"), 3, 1)])
        finally:
            await admin.close()
        await ensure_topics(broker.bootstrap)  # the rest, shares with its 8
        (finding,) = await check_kafka(broker.bootstrap)
        assert finding.status == "FAIL", finding
        assert "hashplane.shares.feed has 3 partitions and shares 8" in finding.detail
    finally:
        await broker.stop()
