"""Envelope rules, every kind's round trip through the codec, and the registry contract."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import (
    TOPICS,
    ShareCountsObserved,
    SleepAsic,
    topic,
    topic_of,
)
from schemas.envelope import Command
from schemas.registry import all_models, kind_of
from streams.codec import decode, encode, encode_key
from tests.factories import sample

CONTRACT = (
    "grid.readings power.readings asic.telemetry gpu.telemetry shares miner.events "
    "compute.jobs compute.health uplink.status prices metrics.shares metrics.rewards "
    "metrics.energy metrics.profit commands.asic commands.gpu commands.compute commands.site "
    "commands.acks alerts dlq"
).split()
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_registry_holds_exactly_the_contract_topics() -> None:
    assert [t.name for t in TOPICS] == CONTRACT


def test_every_model_is_frozen_and_keyed() -> None:
    for spec in TOPICS:
        for model in spec.models:
            assert model.model_config.get("frozen") is True, model
            assert spec.key in model.model_fields, (spec.name, model)
            assert kind_of(model) == model.__name__


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.__name__)
def test_every_kind_round_trips_through_the_codec(model: type) -> None:
    event = sample(model)
    spec = topic_of(model)
    raw = encode(event)
    back = decode(spec.name, raw)
    assert back == event
    assert encode_key(event) == event.device_id.encode()


def test_naive_timestamps_are_refused_and_offsets_normalised_to_utc() -> None:
    base = dict(site="s", device_id="w", source="t", worker="w", accepted=1, rejected=0,
                interval_s=1)
    with pytest.raises(ValidationError, match="timezone"):
        ShareCountsObserved(ts=datetime(2026, 1, 1), **base)  # noqa: DTZ001 - the point
    e = ShareCountsObserved(ts=datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))),
                            **base)
    assert e.ts == datetime(2026, 1, 1, tzinfo=UTC) and e.ts.tzinfo == UTC


def test_kind_and_version_are_filled_from_the_class() -> None:
    e = sample(ShareCountsObserved)
    assert e.kind == "ShareCountsObserved" and e.schema_version == 1


def test_commands_need_expiry_after_issue_and_know_when_expired() -> None:
    kw = dict(site="s", device_id="asic-1", ts=T0, source="t", reason="r", issued_by="test",
              issued_at=T0)
    with pytest.raises(ValidationError, match="expires_at"):
        SleepAsic(expires_at=T0, **kw)
    c = SleepAsic(expires_at=T0 + timedelta(seconds=5), **kw)
    assert isinstance(c, Command)
    assert not c.expired(T0 + timedelta(seconds=4.9))
    assert c.expired(T0 + timedelta(seconds=5))


def test_multi_kind_topic_adapter_discriminates_on_kind() -> None:
    ev = sample(SleepAsic)
    parsed = topic("commands.asic").adapter.validate_json(encode(ev))
    assert type(parsed) is SleepAsic


def test_unknown_topic_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"grid\.readings"):
        topic("grid.reading")


def test_cli_topics_json_lists_name_key_schema() -> None:
    out = subprocess.run([sys.executable, "-m", "streams.cli", "topics", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [r["name"] for r in rows] == CONTRACT
    for r in rows:
        spec = topic(r["name"])
        assert r["key"] == spec.key == "device_id"
        assert r["schema"] == spec.schema
        assert r["partitions"] == spec.partitions and r["retention_ms"] == spec.retention_ms
    assert {r["name"]: r["schema"] for r in rows}["shares"] == "ShareCountsObserved"


def test_cli_schema_export_writes_valid_json_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    subprocess.run([sys.executable, "-m", "streams.cli", "schemas", "export", str(tmp_path)],
                   check=True, capture_output=True)
    files = sorted(p.name for p in tmp_path.glob("*.schema.json"))
    assert files == sorted(f"{n}.schema.json" for n in CONTRACT)
    # A record the codec produces validates against the exported schema of its topic.
    for spec in TOPICS:
        schema = json.loads((tmp_path / f"{spec.name}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        for model in spec.models:
            jsonschema.validate(json.loads(encode(sample(model))), schema)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [i["name"] for i in index] == CONTRACT
