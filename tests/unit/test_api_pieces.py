"""Pieces of the API without a server: keys, the SQL gate, the live fold, the exposition, and
that the Grafana dashboard and Prometheus rules name only metrics the API exposes."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from uuid import uuid4

import pytest
import yaml
from fastapi import HTTPException

from api.auth import KeyRing, key_name
from api.live import LiveFeed
from api.metrics import HashplaneCollector, exposition
from api.operate import check_sql
from connectors.base import ConnectorStats
from schemas.alerts import AlertFired, AlertResolved
from schemas.commands import CommandAcknowledged
from schemas.events import (
    AsicTelemetryObserved,
    GpuTelemetryObserved,
    RecordDeadLettered,
    UplinkStatusObserved,
)
from schemas.metrics import EnergyHeadroomComputed
from streams.sink import SinkStats
from tests.conftest import ROOT
from tests.factories import T0, sample


def test_keys_scopes_and_names() -> None:
    ring = KeyRing.from_settings("op", {"r": "read"})
    assert ring.lookup("op").scope == "operator" and ring.lookup("r").scope == "read"
    assert ring.lookup("x") is None and ring.lookup("") is None
    assert ring.lookup("op").name == key_name("op") and "op" not in key_name("op")
    with pytest.raises(ValueError, match="unknown API key scope"):
        KeyRing({"k": "admin"})


@pytest.mark.parametrize("sql", [
    "SELECT 1", "  select * from {db}.events limit 1;", "WITH 1 AS x SELECT x",
    "-- why\nSELECT 1", "/* c */ SHOW TABLES", "DESCRIBE TABLE {db}.events",
    "EXPLAIN SELECT 1", "SELECT 'a;b'"])
def test_read_statements_pass(sql: str) -> None:
    assert check_sql(sql)


@pytest.mark.parametrize("sql", [
    "INSERT INTO t VALUES (1)", "DROP TABLE t", "ALTER TABLE t DELETE WHERE 1",
    "SELECT 1; DROP TABLE t", "SET readonly = 0", "OPTIMIZE TABLE t", "", "-- only a comment",
    "SYSTEM STOP MERGES", "CREATE TABLE t (x Int8) ENGINE = Memory", "TRUNCATE t"])
def test_other_statements_are_refused(sql: str) -> None:
    with pytest.raises(HTTPException) as e:
        check_sql(sql)
    assert e.value.status_code == 422


def _populated() -> LiveFeed:
    feed = LiveFeed("unused:9092")
    feed.fold("asic.telemetry", sample(AsicTelemetryObserved, device_id="a1", state="running",
                                       hashrate_ths=100.0, power_w=3000.0))
    feed.fold("asic.telemetry", sample(AsicTelemetryObserved, device_id="a2", state="sleeping",
                                       hashrate_ths=0.0, power_w=10.0))
    feed.fold("gpu.telemetry", sample(GpuTelemetryObserved, device_id="rig01-gpu0",
                                      temp_c=70.0, power_w=200.0))
    feed.fold("metrics.energy", sample(EnergyHeadroomComputed, frequency_hz=49.9,
                                       supply_kw=100.0, load_kw=40.0, band="normal"))
    fired = sample(AlertFired, dedup_key="k1", severity="critical")
    feed.fold("alerts", fired)
    feed.fold("alerts", sample(AlertFired, dedup_key="k2", severity="warning"))
    feed.fold("alerts", sample(AlertResolved, dedup_key="k2", severity="warning"))
    for ms in (80.0, 400.0, 2500.0):
        feed.fold("commands.acks", sample(CommandAcknowledged, command_id=uuid4(),
                                          command_kind="SleepAsic", status="applied",
                                          latency_ms=ms))
    feed.fold("dlq", sample(RecordDeadLettered, source_topic="shares"))
    feed.fold("uplink.status", sample(UplinkStatusObserved, target="https://1.1.1.1", up=False))
    feed.pipeline.lag = {("hashplane", "shares"): 7}
    feed.pipeline.lag_at = (T0 + timedelta(seconds=1)).timestamp()
    return feed


def test_the_exposition_reflects_the_live_fold() -> None:
    stats = ConnectorStats(events=12, errors=1, dlq=2)
    text = exposition(HashplaneCollector(_populated(), "site-1", lambda: {"connector:x": stats},
                                         lambda: SinkStats(inserted=5))).decode()
    for line in (
            'hashplane_asics{state="running"} 1.0', 'hashplane_asics{state="sleeping"} 1.0',
            "hashplane_fleet_hashrate_ths 100.0", "hashplane_fleet_power_watts 3210.0",
            "hashplane_energy_supply_watts 100000.0", "hashplane_grid_frequency_hertz 49.9",
            'hashplane_alerts_firing{severity="critical"} 1.0',
            'hashplane_alerts_firing{severity="warning"} 0.0',
            'hashplane_command_latency_seconds_bucket{command_kind="SleepAsic",le="0.1"} 1.0',
            'hashplane_command_latency_seconds_bucket{command_kind="SleepAsic",le="0.5"} 2.0',
            'hashplane_command_latency_seconds_bucket{command_kind="SleepAsic",le="+Inf"} 3.0',
            'hashplane_command_latency_seconds_sum{command_kind="SleepAsic"} 2.98',
            'hashplane_dlq_events_total{source_topic="shares"} 1.0',
            'hashplane_consumer_lag{group="hashplane",topic="shares"} 7.0',
            'hashplane_connector_events_total{connector="connector:x"} 12.0',
            "hashplane_sink_rows_total 5.0",
            'hashplane_uplink_up{target="https://1.1.1.1"} 0.0'):
        assert line in text, line


def _exposed_names() -> set[str]:
    text = exposition(HashplaneCollector(_populated(), "site-1", lambda: {
        "c": ConnectorStats()}, lambda: SinkStats())).decode()
    return {m.group(1) for m in re.finditer(r"^(hashplane_\w+?)(?:\{| )", text, re.M)}


def test_grafana_and_prometheus_rules_use_exposed_metrics() -> None:
    exposed = _exposed_names()
    dash = json.loads((ROOT / "infra/grafana/hashplane.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "infra/prometheus/hashplane-rules.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"hashplane_\w+", e)}
    assert used and used <= exposed, used - exposed
    scrape = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
