"""The operator API against a real ClickHouse engine filled by the real sink from a real
Tansu broker, served over HTTP by uvicorn with its live feed following the broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import orjson
import pytest

from api.app import create_api
from schemas.alerts import AlertFired, AlertResolved
from schemas.commands import ApplyGpuProfile, CapSiteLoad, CommandAcknowledged, SleepAsic
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    ComputeJobChanged,
    GpuTelemetryObserved,
    HashpriceObserved,
    PowerPriceObserved,
    ShareCountsObserved,
    UplinkStatusObserved,
)
from schemas.metrics import (
    EnergyHeadroomComputed,
    ProfitComputed,
    RewardComputed,
    ShareRatioComputed,
    TuningTrialEvaluated,
)
from schemas.settings import Settings
from streams.codec import decode
from streams.history import HistoryStore
from streams.httpserve import HttpService
from streams.publish import Publisher
from streams.sink import HistorySink
from tests.conftest import until

pytestmark = pytest.mark.integration

OP, READ = {"Authorization": "Bearer op-key"}, {"X-API-Key": "read-key"}
NOW = datetime.now(UTC)  # set again by the fixture: the history ends ~1 minute before a test


def at(s: float) -> datetime:
    return NOW + timedelta(seconds=s)


def asic(dev: str, t: float, state: str, hashrate: float, power: float) -> AsicTelemetryObserved:
    return AsicTelemetryObserved(
        site="site-1", device_id=dev, ts=at(t), source="test", model="S19", state=state,
        firmware="braiins" if dev == "a2" else "luxos",
        hashrate_ths=hashrate, hashrate_avg_ths=hashrate, power_w=power, pool_url="stratum+tcp://p:1",
        accepted=1, rejected=0, stale=0, hardware_errors=0, elapsed_s=10)


def command(model: Any, dev: str, t: float, **kw: Any) -> Any:
    return model(site="site-1", device_id=dev, ts=at(t), source="test", issued_at=at(t),
                 expires_at=at(t + 10), reason="test", issued_by="agent:test", **kw)


def ack(c: Any, t: float, status: str = "applied") -> CommandAcknowledged:
    return CommandAcknowledged(
        site="site-1", device_id=c.device_id, ts=at(t), source="test", command_id=c.command_id,
        command_kind=c.kind, status=status, detail=f"{status} by test", latency_ms=120.0,
        actuator="test")


def buckets(points: list[tuple[datetime, float, float]], size: int) -> list[Any]:
    """(bucket start ISO, mean of the 2nd, min of the 3rd) as ClickHouse buckets them."""
    out: dict[int, list[tuple[float, float]]] = {}
    for t, v, f in points:
        out.setdefault(int(t.timestamp()) // size * size, []).append((v, f))
    return [(datetime.fromtimestamp(k, UTC).isoformat().replace("+00:00", "Z"),
             sum(v for v, _ in vs) / len(vs), min(f for _, f in vs))
            for k, vs in sorted(out.items())]


def history_events() -> list[Event]:
    out: list[Event] = []
    # three ASICs, 10-s telemetry for 5 minutes: a1 100 TH/s, a2 50 TH/s, a3 asleep
    for i in range(30):
        out += [asic("a1", 10 * i, "running", 100.0, 3000.0),
                asic("a2", 10 * i, "running", 50.0, 1500.0),
                asic("a3", 10 * i, "sleeping", 0.0, 10.0)]
    s1, s2 = command(SleepAsic, "a3", 5), command(SleepAsic, "a3", 200)
    pending = command(SleepAsic, "a2", 250)
    gpu_cmd = command(ApplyGpuProfile, "rig01-gpu0", 100, rig_id="rig01", gpu_index=0,
                      power_limit_w=250.0, core_offset_mhz=100, mem_offset_mhz=800,
                      intensity=22, profile="tuned")
    out += [s1, ack(s1, 5.3), s2, ack(s2, 200.2), pending, gpu_cmd, ack(gpu_cmd, 101)]
    out += [GpuTelemetryObserved(
        site="site-1", device_id="rig01-gpu0", ts=at(280), source="test", rig_id="rig01",
        gpu_index=0, card="RTX 3090", algorithm="Etchash", hashrate_mhs=100.0, power_w=250.0,
        power_limit_w=250.0, temp_c=71.0, core_clock_mhz=1700.0, mem_clock_mhz=9750.0,
        fan_pct=70.0)]
    for i in range(5):
        out.append(EnergyHeadroomComputed(
            site="site-1", device_id="site-1", ts=at(60 * i), source="agent:energy",
            supply_kw=100.0, margin_kw=10.0, available_kw=90.0, load_kw=40.0 + i,
            asic_load_kw=40.0 + i, gpu_load_kw=0.0, headroom_kw=50.0 - i,
            frequency_hz=50.0 - 0.1 * i, band="normal", target_load_kw=90.0))
    fired = AlertFired(site="site-1", device_id="grid-meter", ts=at(30), source="agent:alerts",
                       rule="grid_frequency_low", severity="warning",
                       dedup_key="grid_frequency_low/grid-meter", message="49.7 Hz",
                       value=49.7, threshold=49.8)
    hot = AlertFired(site="site-1", device_id="rig01-gpu0", ts=at(40), source="agent:alerts",
                     rule="gpu_over_temperature", severity="critical",
                     dedup_key="gpu_over_temperature/rig01-gpu0", message="91 C", value=91.0,
                     threshold=88.0)
    resolved = AlertResolved(site="site-1", device_id="grid-meter", ts=at(90),
                             source="agent:alerts", rule="grid_frequency_low",
                             severity="warning", dedup_key="grid_frequency_low/grid-meter",
                             message="back to 49.9 Hz", value=49.9)
    out += [fired, hot, resolved]
    out += [ComputeJobChanged(site="site-1", device_id="miner-1", ts=at(t), source="test",
                              job_id="job-1", workload="torch_bench", state=st)
            for t, st in ((10, "assigned"), (20, "started"), (30, "accepted"))]
    start = NOW.replace(second=0)
    for rev, accepted in ((1, 50), (2, 90)):  # two revisions: the API returns the latest
        out.append(ShareRatioComputed(
            site="site-1", device_id="w1", ts=at(rev), source="agent:share_ratio",
            scope="worker", subject="w1", window_s=60, window_start=start,
            window_end=start + timedelta(seconds=60), final=rev == 2, accepted=accepted,
            rejected=10, stale=0, accepted_pct=100 * accepted / (accepted + 10),
            rejected_pct=100 * 10 / (accepted + 10), stale_pct=0.0, shares_per_s=1.0,
            events=rev))
    out.append(TuningTrialEvaluated(
        site="site-1", device_id="rig01-gpu0", ts=at(150), source="agent:tuner",
        card="RTX 3090", trial=1, optimizer="botorch", power_limit_w=300.0,
        core_offset_mhz=0, mem_offset_mhz=900, intensity=24, window_s=300.0,
        hashrate_mhs=118.0, power_w=300.0, temp_max_c=72.0, accepted=140, rejected=0,
        stale=0, reward=99.8, objective=117.5, efficiency_mh_per_j=0.39, feasible=True,
        outcome="kept", objective_kind="profit", price_per_mwh=80.0, profit_per_day=0.604))
    out.append(RewardComputed(site="site-1", device_id="w1", ts=at(3), source="agent:rewards",
                              worker="w1", window_s=60, window_start=start, reward=84.5,
                              accepted_pct=90.0, rejected_pct=10.0, temp_c=71.0,
                              worker_accepted=90, cluster_accepted=180))
    # money: a day-ahead hour, a real-time spike published twice (revised), the hashprice,
    # and two profit windows of the site and one ASIC
    hour = NOW.replace(minute=0, second=0)
    out += [PowerPriceObserved(site="site-1", device_id="price", ts=at(0), source="test",
                               interval_start=hour, interval_end=hour + timedelta(hours=1),
                               price_per_mwh=52.5, currency="EUR")]
    out += [PowerPriceObserved(site="site-1", device_id="price", ts=at(t), source="test",
                               market="real_time", interval_start=at(60), interval_end=at(360),
                               price_per_mwh=p, currency="EUR") for t, p in ((1, 150.0),
                                                                            (2, 140.0))]
    out.append(HashpriceObserved(site="site-1", device_id="hashprice", ts=at(0),
                                 source="test", hashprice_per_th_day=0.049, currency="EUR"))
    for k, (subject, scope) in enumerate((("site-1", "site"), ("a1", "asic"))):
        for w in range(2):
            out.append(ProfitComputed(
                site="site-1", device_id=subject, ts=at(60 * (w + 1)), source="agent:profit",
                scope=scope, subject=subject, window_s=60,  # type: ignore[arg-type]
                window_start=at(60 * w), final=True, currency="EUR", seconds=60,
                energy_kwh=0.05 * (k + 1), hashrate_ths=100.0, revenue=0.004 + w * 0.001,
                power_cost=0.003, profit=0.001 + w * 0.001, j_per_th=30.0,
                breakeven_per_mwh=68.05))
    out += [UplinkStatusObserved(site="site-1", device_id="uplink", ts=at(t), source="test",
                                 target="http://up.example/generate_204", up=up,
                                 latency_ms=12.0 if up else None,
                                 detail="" if up else "timeout")
            for t, up in ((100, False), (110, False), (290, True))]
    out.append(ShareCountsObserved(site="site-1", device_id="a1", ts=at(280),
                                   source="pool:local", worker="hashplane.a1", accepted=40,
                                   rejected=0, interval_s=60))
    return out


@pytest.fixture
async def served(settings: Settings, store: HistoryStore) -> AsyncIterator[
        tuple[httpx.AsyncClient, Settings, list[Event]]]:
    s = settings.model_copy(update={"api_key": "op-key", "api_keys": {"read-key": "read"},
                                    "sql_max_rows": 100})
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=6)
    events = history_events()
    async with Publisher(s.kafka_bootstrap) as pub:
        await pub.publish_many(events)
    stop = asyncio.Event()
    sink = HistorySink(s, store)
    task = asyncio.create_task(sink.run(stop))
    await until(lambda: sink.stats.inserted >= len(events), 60, what="sink stored the events")
    service = HttpService(create_api(s, store), lifespan="on")
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
            await until(lambda: client.get("/healthz"), 10)
            yield client, s, events
    finally:
        await service.stop()
        stop.set()
        await task


async def test_auth_is_401_without_a_key_403_without_the_scope(served: Any) -> None:
    client, _, _ = served
    assert (await client.get("/healthz")).status_code == 200  # open
    assert (await client.get("/")).status_code == 200  # the page holds no data
    for path in ("/v1/fleet", "/metrics", "/v1/stream"):
        r = await client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
    assert (await client.get("/v1/fleet", headers={"X-API-Key": "nope"})).status_code == 401
    assert (await client.get("/v1/fleet", headers=READ)).status_code == 200
    r = await client.post("/v1/asics/a1/sleep", headers=READ)
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    r = await client.post("/v1/sql", headers=READ, json={"sql": "SELECT 1"})
    assert r.status_code == 403


async def test_fleet_asics_and_gpus_from_the_history(served: Any) -> None:
    client, _, _ = served
    fleet = (await client.get("/v1/fleet", headers=READ)).json()
    assert fleet["asics"] == {"running": 2, "sleeping": 1}
    assert fleet["hashrate_ths"] == 150.0 and fleet["asic_power_kw"] == pytest.approx(4.51)
    assert fleet["gpus"] == 1 and fleet["gpu_temp_max_c"] == 71.0
    assert fleet["alerts_firing"] == {"critical": 1}
    assert fleet["energy"]["load_kw"] == 44.0

    r = (await client.get("/v1/asics", params={"limit": 2}, headers=READ)).json()
    assert [a["device_id"] for a in r["asics"]] == ["a1", "a2"]
    assert r["page"]["next_offset"] == 2
    r2 = (await client.get("/v1/asics", params={"limit": 2, "offset": 2}, headers=READ)).json()
    assert [a["device_id"] for a in r2["asics"]] == ["a3"] and r2["page"]["next_offset"] is None
    a3 = r2["asics"][0]
    # cycles and last-off are folded from the applied acks
    assert a3["cycles"] == 2 and a3["last_off"] == at(200.2).isoformat().replace("+00:00", "Z")
    a2 = (await client.get("/v1/asics/a2", headers=READ)).json()
    assert a2["cycles"] == 0 and a2["last_off"] is None and a2["hashrate_ths"] == 50.0
    assert (await client.get("/v1/asics/nope", headers=READ)).status_code == 404
    sleeping = (await client.get("/v1/asics", params={"state": "sleeping"}, headers=READ)).json()
    assert [a["device_id"] for a in sleeping["asics"]] == ["a3"]

    gpu = (await client.get("/v1/gpus", headers=READ)).json()["gpus"][0]
    assert gpu["device_id"] == "rig01-gpu0" and gpu["temp_c"] == 71.0
    assert gpu["profile"]["power_limit_w"] == 250.0 and gpu["profile"]["mem_offset_mhz"] == 800
    assert gpu["profile"]["applied_at"].endswith("Z")


async def test_commands_carry_their_acks_and_filter_by_status(served: Any) -> None:
    client, _, events = served
    r = (await client.get("/v1/commands", headers=READ,
                          params={"since": at(-60).isoformat()})).json()
    kinds = [(c["kind"], c["device_id"], c["ack"]["status"] if c["ack"] else None)
             for c in r["commands"]]
    assert kinds == [("SleepAsic", "a2", None), ("SleepAsic", "a3", "applied"),
                     ("ApplyGpuProfile", "rig01-gpu0", "applied"), ("SleepAsic", "a3", "applied")]
    assert r["commands"][2]["params"]["profile"] == "tuned"
    pending = (await client.get("/v1/commands", headers=READ, params={
        "status": "pending", "since": at(-60).isoformat()})).json()["commands"]
    assert [c["device_id"] for c in pending] == ["a2"]
    one = next(e for e in events if isinstance(e, SleepAsic) and e.device_id == "a3")
    got = (await client.get(f"/v1/commands/{one.command_id}", headers=READ)).json()
    assert got["ack"]["detail"] == "applied by test" and got["ack"]["latency_ms"] == 120.0
    assert (await client.get(f"/v1/commands/{uuid4()}", headers=READ)).status_code == 404


async def test_alerts_energy_shares_rewards_and_jobs(served: Any) -> None:
    client, _, _ = served
    a = (await client.get("/v1/alerts", headers=READ,
                          params={"since": at(-60).isoformat()})).json()
    assert [x["rule"] for x in a["firing"]] == ["gpu_over_temperature"]
    assert [x["kind"] for x in a["history"]] == ["AlertResolved", "AlertFired", "AlertFired"]
    crit = (await client.get("/v1/alerts", headers=READ, params={
        "severity": "critical", "since": at(-60).isoformat()})).json()
    assert [x["severity"] for x in crit["history"]] == ["critical"]

    e = (await client.get("/v1/energy", headers=READ, params={
        "since": at(0).isoformat(), "until": at(300).isoformat(), "bucket_s": 120})).json()
    assert e["latest"]["load_kw"] == 44.0
    assert [(p["ts"], p["load_kw"], p["frequency_hz"]) for p in e["history"]] == buckets(
        [(at(60 * i), 40.0 + i, 50.0 - 0.1 * i) for i in range(5)], 120)

    w = (await client.get("/v1/workers", headers=READ)).json()["workers"]
    assert [(x["worker"], x["accepted"], x["final"], x["reward"]) for x in w] == [
        ("w1", 90, True, 84.5)]
    shares = (await client.get("/v1/workers/w1/shares", headers=READ)).json()
    assert shares["latest"]["accepted"] == 90 and len(shares["history"]) == 1
    rw = (await client.get("/v1/rewards", headers=READ, params={
        "since": at(-120).isoformat()})).json()["rewards"]
    assert [(x["worker"], x["reward"]) for x in rw] == [("w1", 84.5)]
    jobs = (await client.get("/v1/compute/jobs", headers=READ, params={
        "since": at(-60).isoformat()})).json()["jobs"]
    assert [(j["job_id"], j["state"]) for j in jobs] == [("job-1", "accepted")]
    trials = (await client.get("/v1/tuner/trials", headers=READ, params={
        "device_id": "rig01-gpu0"})).json()["trials"]
    assert [(t["trial"], t["mem_offset_mhz"], t["objective"], t["outcome"], t["objective_kind"],
             t["price_per_mwh"], t["profit_per_day"]) for t in trials] \
        == [(1, 900, 117.5, "kept", "profit", 80.0, 0.604)]


async def test_history_buckets_per_device_and_for_the_fleet(served: Any) -> None:
    client, _, _ = served
    q = {"table": "asic_telemetry", "field": "hashrate_ths", "bucket_s": 60,
         "since": at(0).isoformat(), "until": at(300).isoformat()}
    per = (await client.get("/v1/history", headers=READ, params=q)).json()
    by = {s["key"]: [p["value"] for p in s["points"]] for s in per["series"]}
    assert set(by) == {"a1", "a2", "a3"}
    assert by["a1"] == [100.0] * len(buckets([(at(10 * i), 0, 0) for i in range(30)], 60))
    fleet = (await client.get("/v1/history", headers=READ,
                              params={**q, "by": "fleet", "agg": "sum"})).json()
    assert {p["value"] for p in fleet["series"][0]["points"]} == {150.0}
    only = (await client.get("/v1/history", headers=READ, params={**q, "device": ["a2"]})).json()
    assert [s["key"] for s in only["series"]] == ["a2"]
    bad = await client.get("/v1/history", headers=READ, params={**q, "field": "model"})
    assert bad.status_code == 422 and "numeric" in str(bad.json()["detail"])
    bad = await client.get("/v1/history", headers=READ, params={**q, "table": "events; DROP"})
    assert bad.status_code == 422
    reversed_ = await client.get("/v1/history", headers=READ,
                                 params={**q, "since": at(300).isoformat(),
                                         "until": at(0).isoformat()})
    assert reversed_.status_code == 422


async def test_sql_is_read_only_and_limited(served: Any) -> None:
    client, _, _ = served
    r = await client.post("/v1/sql", headers=OP, json={
        "sql": "SELECT device_id, count() AS n FROM {db}.asic_telemetry "
               "GROUP BY device_id ORDER BY device_id"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["device_id", "n"] and body["rows"] == [["a1", 30], ["a2", 30],
                                                                       ["a3", 30]]
    big = (await client.post("/v1/sql", headers=OP, json={
        "sql": "SELECT number FROM system.numbers LIMIT 100000"})).json()
    assert big["row_count"] == 100 and big["truncated"] is True  # sql_max_rows
    for sql in ("INSERT INTO {db}.events SELECT * FROM {db}.events",
                "DROP TABLE {db}.events", "SELECT 1; DROP TABLE {db}.events"):
        r = await client.post("/v1/sql", headers=OP, json={"sql": sql})
        assert r.status_code == 422, (sql, r.text)
    # the endpoint's limits apply, whatever the text says: a SETTINGS clause is refused
    r = await client.post("/v1/sql", headers=OP, json={
        "sql": "SELECT 1 SETTINGS readonly = 0"})
    assert r.status_code == 422 and "settings" in str(r.json()["detail"]).lower()
    r = await client.post("/v1/sql", headers=OP, json={"sql": "SELECT nope FROM nowhere"})
    assert r.status_code == 400
    assert (await client.get("/healthz")).json()["history_store"] is True


async def test_manual_commands_go_to_the_command_topics_and_wait_for_the_ack(
        served: Any) -> None:
    """A manual sleep is published on commands.asic; an actuator's ack on commands.acks
    comes back in the response (here the ack is published by the test as the actuator)."""
    client, s, _ = served
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer("commands.asic", "commands.site", bootstrap_servers=
                                s.kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    try:
        seen: list[Any] = []
        acker = asyncio.create_task(_ack_what_arrives(consumer, s.kafka_bootstrap, seen))
        r = await client.post("/v1/asics/a1/sleep", headers=OP, params={"wait_s": 10},
                              json={"reason": "fan noise"})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["topic"] == "commands.asic" and body["issued_by"].startswith("operator:key-")
        assert body["ack"]["status"] == "applied", body
        cap = await client.post("/v1/site/cap", headers=OP, params={"wait_s": 10},
                                json={"limit_kw": 40, "duration_s": 600})
        assert cap.status_code == 202 and cap.json()["topic"] == "commands.site"
        assert cap.json()["ack"]["status"] == "applied"
        bad = await client.post("/v1/asics/a1/pool", headers=OP, json={"pool_url": "http://x"})
        assert bad.status_code == 422
        nowait = await client.post("/v1/asics/a2/wake", headers=OP, params={"wait_s": 0})
        assert nowait.status_code == 202 and nowait.json()["ack"] is None
        acker.cancel()
        assert [(c.kind, c.device_id) for c in seen[:2]] == [("SleepAsic", "a1"),
                                                            ("CapSiteLoad", "site-1")]
        assert seen[0].reason == "fan noise" and seen[1].limit_kw == 40
    finally:
        await consumer.stop()


async def _ack_what_arrives(consumer: Any, bootstrap: str, seen: list[Any]) -> None:
    async with Publisher(bootstrap) as pub:
        async for rec in consumer:
            cmd = decode(rec.topic, rec.value)
            if not cmd.issued_by.startswith("operator:"):
                continue  # the history's own commands
            seen.append(cmd)
            if isinstance(cmd, SleepAsic | CapSiteLoad):
                await pub.publish(ack(cmd, 0).model_copy(update={"ts": datetime.now(UTC)}))


async def test_live_stream_and_prometheus_metrics(served: Any) -> None:
    client, s, _ = served
    got: list[tuple[str, dict[str, Any]]] = []

    async def read_stream() -> None:
        async with client.stream("GET", "/v1/stream", params={"topics": "alerts"},
                                 headers=READ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            topic = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    topic = line[7:]
                elif line.startswith("data: "):
                    got.append((topic, orjson.loads(line[6:])))
                    return

    reader = asyncio.create_task(read_stream())
    await asyncio.sleep(1.0)  # the subscription is open before the alert is published
    alert = AlertFired(site="site-1", device_id="a1", ts=datetime.now(UTC),
                       source="agent:alerts", rule="asic_over_temperature",
                       severity="critical", dedup_key="asic_over_temperature/a1",
                       message="99 C", value=99.0, threshold=95.0)
    async with Publisher(s.kafka_bootstrap) as pub:
        await pub.publish(asic("a9", 0, "running", 10.0, 100.0).model_copy(
            update={"ts": datetime.now(UTC)}))
        await pub.publish(alert)
    await asyncio.wait_for(reader, 20)
    assert got[0][0] == "alerts" and got[0][1]["dedup_key"] == "asic_over_temperature/a1"
    bad = await client.get("/v1/stream", params={"topics": "nope"}, headers=READ)
    assert bad.status_code == 422

    text = (await client.get("/metrics", headers={"Authorization": "Bearer read-key"})).text
    assert 'hashplane_alerts_firing{severity="critical"} 1.0' in text
    assert 'hashplane_events_total{topic="alerts"} 1.0' in text
    assert 'hashplane_asics{state="running"} 1.0' in text
    assert "hashplane_fleet_hashrate_ths 10.0" in text

    async def lag_reported() -> bool:
        t = (await client.get("/metrics", headers=READ)).text
        return f'hashplane_consumer_lag{{group="{s.sink_group}"' in t

    await until(lag_reported, 30, every_s=1, what="sink group lag on /metrics")


async def test_consumer_lag_counts_records_behind_the_committed_offsets(broker: Any) -> None:
    """Lag is measured from the fetch high watermark (Tansu's ListOffsets(latest) is the last
    batch's base offset + 1, which would hide a whole batch of lag)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from api.live import consumer_lag

    async with Publisher(broker.bootstrap) as pub:
        await pub.publish_many([asic("a1", i, "running", 1.0, 1.0) for i in range(30)])
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="g-lag",
                         enable_auto_commit=False)
    await c.start()
    try:
        counts = [await _count(broker.bootstrap, p) for p in range(8)]
        part = counts.index(30)
        c.assign([TopicPartition("asic.telemetry", part)])
        await c.commit({TopicPartition("asic.telemetry", part): 12})
    finally:
        await c.stop()
    lag = await consumer_lag(broker.bootstrap, ["g-lag"], ["asic.telemetry"])
    assert lag == {("g-lag", "asic.telemetry"): 18}


async def _count(bootstrap: str, partition: int) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition("asic.telemetry", partition)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        n = 0
        for _ in range(3):
            n += sum(len(r) for r in (await c.getmany(timeout_ms=300)).values())
        return n
    finally:
        await c.stop()


# Alertmanager's webhook body, as Prometheus' webhook_config documentation gives it.
AM_PAYLOAD = {
    "version": "4", "groupKey": "{}:{alertname=\"HashplaneUplinkDown\"}", "truncatedAlerts": 0,
    "status": "firing", "receiver": "hashplane", "groupLabels": {}, "commonLabels": {},
    "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "HashplaneUplinkDown",
                                        "severity": "critical", "site": "site-1",
                                        "dedup_key": "uplink_down/site-1"},
         "annotations": {"summary": "the internet uplink is down"},
         "startsAt": "2026-12-02T04:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prometheus:9090/graph", "fingerprint": "a1b2c3d4e5f60718"},
        {"status": "firing", "labels": {"alertname": "HashplaneAsicsOffline",
                                        "severity": "warning", "site": "site-1"},
         "annotations": {"summary": "3 ASICs offline for 5 minutes"},
         "startsAt": "2026-12-02T04:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prometheus:9090/graph", "fingerprint": "0f1e2d3c4b5a6978"},
    ]}


async def test_alertmanager_and_agent_alerts_reach_sms_and_webhook_once(served: Any) -> None:
    """Prometheus' alerts (through Alertmanager's webhook) and the agents' go out through
    the same sinks: critical by SMS (a local fake of Twilio's API), everything to the
    webhook (a local receiver), the condition both raised once."""
    from connectors.alert_sinks import AlertDispatcher, TwilioSms, Webhook
    from connectors.base import Emitter, ListSink
    from tests.connectors.test_alert_sinks import FakeProvider

    client, s, _ = served
    twilio, hook = FakeProvider(), FakeProvider()
    agent = AlertFired(site="site-1", device_id="site-1", ts=datetime.now(UTC),
                       source="agent:alerts", rule="uplink_down", severity="critical",
                       dedup_key="uplink_down/site-1", message="uplink down: 2 probes failed")
    async with Publisher(s.kafka_bootstrap) as pub:
        await pub.publish(agent)
    assert (await client.post("/v1/alerts/alertmanager", headers=READ,
                              json=AM_PAYLOAD)).status_code == 403
    assert (await client.post("/v1/alerts/alertmanager", headers=OP,
                              json={"version": "4", "status": "firing", "alerts": [
                                  {"status": "firing", "labels": {}}]})).status_code == 422
    r = await client.post("/v1/alerts/alertmanager", headers=OP, json=AM_PAYLOAD)
    assert r.status_code == 200 and r.json() == {"published": 2}, r.text
    d = AlertDispatcher(s.kafka_bootstrap, "alert-routing-test", [
        TwilioSms(["+15550001"], "+15559999", "site-1", min_interval_s=0,
                  base_url=twilio.url, account_sid="ACtest", auth_token="secret"),
        Webhook(hook.url + "/hook")], Emitter(ListSink(), source="t", site="site-1"))
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        await until(lambda: any(b["rule"] == "HashplaneAsicsOffline" for _, b, _ in
                                hook.requests), 60, 0.1, what="the webhook deliveries")
        await asyncio.sleep(1.0)  # and no more
    finally:
        stop.set()
        await task
        twilio.server.shutdown()
        hook.server.shutdown()
    ours = {"uplink_down", "HashplaneUplinkDown", "HashplaneAsicsOffline"}  # (the history
    hooked = [b["rule"] for _, b, _ in hook.requests if b["rule"] in ours]  # has alerts too)
    assert hooked == ["uplink_down", "HashplaneAsicsOffline"]  # Prometheus' duplicate: once
    texted = "\n".join(m["Body"] for m in twilio.messages())
    assert texted.count("uplink_down") == 1 and "[CRITICAL] uplink_down" in texted
    assert "HashplaneUplinkDown" not in texted and "AsicsOffline" not in texted  # a warning


async def test_profit_prices_uplink_and_the_fleet_table(served: Any) -> None:
    client, _, _ = served
    site = (await client.get("/v1/profit", headers=READ,
                             params={"since": at(-60).isoformat()})).json()
    assert [w["window_start"] for w in site["windows"]] == [
        at(60).isoformat().replace("+00:00", "Z"), at(0).isoformat().replace("+00:00", "Z")]
    assert site["total_profit"] == pytest.approx(0.003)
    assert site["total_revenue"] == pytest.approx(0.009)
    a1 = (await client.get("/v1/profit", headers=READ, params={
        "scope": "asic", "subject": "a1", "since": at(-60).isoformat()})).json()
    assert {w["subject"] for w in a1["windows"]} == {"a1"} and len(a1["windows"]) == 2
    assert a1["windows"][0]["breakeven_per_mwh"] == 68.05
    assert (await client.get("/v1/profit", headers=READ,
                             params={"scope": "nope"})).status_code == 422

    prices = (await client.get("/v1/prices", headers=READ, params={
        "since": at(-60).isoformat(), "until": at(400).isoformat()})).json()
    by_market = {p["market"]: p for p in prices["intervals"]}
    assert by_market["day_ahead"]["price_per_mwh"] == 52.5
    assert by_market["real_time"]["price_per_mwh"] == 140.0  # the revision
    assert prices["hashprice_per_th_day"] == 0.049

    up = (await client.get("/v1/uplink", headers=READ)).json()
    assert up["up"] is True and up["latency_ms"] == 12.0
    assert up["local_pool_accepted_per_min"] == pytest.approx(8.0)  # 40 in 5 minutes
    assert up["local_pool_workers"] == 1

    table = {a["device_id"]: a for a in (await client.get("/v1/asics", headers=READ)).json()[
        "asics"]}
    assert table["a2"]["firmware"] == "braiins" and table["a1"]["firmware"] == "luxos"
    assert table["a3"]["last_command"] == "SleepAsic" and table["a3"]["last_ack"] == "applied"
    assert table["a2"]["last_command"] == "SleepAsic" and table["a2"]["last_ack"] == "pending"
    assert table["a1"]["last_command"] is None and table["a1"]["last_ack"] is None

