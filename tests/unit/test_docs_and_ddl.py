"""The README, the infra DDL and the registry-derived tables agree with the code."""

from __future__ import annotations

from schemas.registry import TOPICS, topic
from schemas.settings import Settings
from streams.cli import build_parser
from streams.ddl import typed_columns
from streams.history import ddl_script
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    for name in Settings.model_fields:
        assert f"HASHPLANE_{name.upper()}" in README, name


def test_readme_lists_every_command() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"hashplane {name}" in README, name


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    head = README[:600]
    assert "make demo" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_infra_schema_sql_is_the_generated_ddl() -> None:
    assert (ROOT / "infra/clickhouse/schema.sql").read_text() == ddl_script(), \
        "run: hashplane ddl > infra/clickhouse/schema.sql"


def test_typed_tables_cover_every_field_and_make_partial_fields_nullable() -> None:
    for spec in TOPICS:
        cols = {c.name for c in typed_columns(spec)}
        for model in spec.models:
            assert set(model.model_fields) - {"event_id", "kind", "schema_version", "site",
                                              "device_id", "ts", "source"} <= cols
    asic = {c.name: c.type for c in typed_columns(topic("commands.asic"))}
    assert asic["pool_url"] == "Nullable(String)" and asic["reason"] == "String"
    assert asic["command_id"] == "UUID" and asic["expires_at"] == "DateTime64(3, 'UTC')"
    tel = {c.name: c.type for c in typed_columns(topic("asic.telemetry"))}
    assert tel["fan_rpm"] == "Array(Int64)" and tel["state"] == "LowCardinality(String)"
    assert tel["temp_chip_c"] == "Nullable(Float64)"
