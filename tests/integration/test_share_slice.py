"""The first slice on real parts: shares -> Faust worker -> metrics.shares -> sink -> API."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from agents.share_ratio import fold
from api.app import create_api
from schemas.events import ShareCountsObserved
from schemas.metrics import ShareRatioComputed
from schemas.settings import Settings
from streams.codec import decode
from streams.history import HistoryStore
from streams.publish import Publisher
from streams.sink import HistorySink
from tests.conftest import HASHPLANE, child_env, until
from tests.factories import T0

pytestmark = pytest.mark.integration


def known_input() -> list[ShareCountsObserved]:
    """Three workers over four minutes of event time; the last minute stays open."""
    out = []
    for i in range(48):
        w = f"rig01-gpu{i % 3}"
        out.append(ShareCountsObserved(
            site="site-1", device_id=w, ts=T0 + timedelta(seconds=5 * i), source="test",
            worker=w, accepted=10 + i % 5, rejected=(i % 3 == 2) * (i % 4), stale=i % 2,
            difficulty_accepted=1000.0, interval_s=5))
    return out


async def consume_metrics(bootstrap: str, n: int,
                          timeout_s: float = 60) -> list[ShareRatioComputed]:
    consumer = AIOKafkaConsumer("metrics.shares", bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[ShareRatioComputed] = []
    try:
        async def fill() -> None:
            while len(got) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    ratios = [decode("metrics.shares", r.value) for r in records]
                    # the partitioned agent's scopes (site_shares adds pool and site)
                    got.extend(m for m in ratios if m.scope in ("worker", "device"))  # type: ignore[attr-defined,misc]
        await asyncio.wait_for(fill(), timeout_s)
    finally:
        await consumer.stop()
    return got


@pytest.fixture
def worker(settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([*HASHPLANE, "worker"], env=child_env(settings), stdout=log,
                            stderr=subprocess.STDOUT)
    yield proc
    proc.terminate()
    assert proc.wait(30) == 0, (tmp_path / "worker.log").read_text()[-3000:]


async def test_agent_on_the_real_broker_emits_exactly_the_step_functions_output(
        settings: Settings, store: HistoryStore, worker: subprocess.Popen[bytes]) -> None:
    events = known_input()
    _, expected = fold(events, scopes=("worker", "device"), windows=tuple(settings.share_windows_s),
                       grace_s=settings.share_grace_s, update_s=settings.share_update_s)
    async with Publisher(settings.kafka_bootstrap) as pub:
        await pub.publish_many(events)
    got = await consume_metrics(settings.kafka_bootstrap, len(expected))
    assert sorted(got, key=lambda m: str(m.event_id)) == \
        sorted(expected, key=lambda m: str(m.event_id))
    finals = {(m.subject, m.window_start) for m in got if m.final}
    assert len(finals) == 3 * 3  # three closed minutes per worker

    # The sink stores them; the API answers from ClickHouse what ClickHouse holds.
    stop = asyncio.Event()
    sink = HistorySink(settings, store)
    task = asyncio.create_task(sink.run(stop))
    await until(lambda: sink.stats.inserted >= len(events) + len(expected), 60,
                what="sink stored shares and metrics")
    stop.set()
    await task

    api = create_api(settings.model_copy(update={"api_key": "k"}), store, live=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                 base_url="http://hashplane",
                                 headers={"Authorization": "Bearer k"}) as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        r = await client.get("/v1/workers/rig01-gpu1/shares", params={"limit": 10})
        assert r.status_code == 200, r.text
        body = r.json()
        db_rows = store.query_dicts(
            "SELECT window_start, accepted, rejected, stale, final, events FROM "
            "hashplane.metrics_shares WHERE subject = 'rig01-gpu1' AND scope = 'worker' "
            "AND window_s = 60 ORDER BY window_start, "
            "events DESC, ts DESC LIMIT 1 BY window_start")
        api_rows = sorted(body["history"], key=lambda h: h["window_start"])
        assert [(h["accepted"], h["rejected"], h["stale"], h["final"], h["events"])
                for h in api_rows] == \
            [(d["accepted"], d["rejected"], d["stale"], d["final"], d["events"]) for d in db_rows]
        assert [h["window_start"] for h in api_rows] == \
            [d["window_start"].isoformat().replace("+00:00", "Z") for d in db_rows]
        last_expected = [m for m in expected if m.subject == "rig01-gpu1"
                         and m.scope == "worker" and m.window_s == 60][-1]
        assert body["latest"]["accepted"] == last_expected.accepted
        assert body["latest"]["final"] is False and len(body["history"]) == 4

        since = (T0 + timedelta(minutes=2)).isoformat()
        r = await client.get("/v1/workers/rig01-gpu1/shares", params={"since": since})
        assert [h["window_start"] for h in r.json()["history"]] == \
            ["2026-11-21T12:03:00Z", "2026-11-21T12:02:00Z"]
        r = await client.get("/v1/workers/nobody/shares")
        assert r.status_code == 404 and "nobody" in r.json()["detail"]
        r = await client.get("/v1/workers/rig01-gpu1/shares", params={"limit": 0})
        assert r.status_code == 422
        r = await client.get("/v1/workers/rig01-gpu1/shares", params={"since": "not-a-time"})
        assert r.status_code == 422
