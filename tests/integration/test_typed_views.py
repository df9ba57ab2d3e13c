"""The typed tables' views parse a payload once, with exactly the per-column result.

The views of migration 2 extracted each column with its own ``JSONExtract`` (one JSON parse
per column); migration 3 replaces them with one parse into a named tuple.  These tests run
in the real engine (chdb): every kind of every topic, as our encoder writes it and as a
foreign producer might (keys in another order, optional fields left out), gives the same
typed row both ways; and a database migrated before migration 3 is upgraded by ``migrate``.
Migration 4 moves the views off ``events`` onto each topic's inbox: a database migrated
before it keeps its rows, and afterwards one insert of many topics fills the log and each
typed table exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.registry import TOPICS, TopicSpec
from streams import history
from streams.codec import encode
from streams.ddl import ENVELOPE_COLUMNS, ENVELOPE_FIELDS, PARSED, create_typed_table, typed_columns
from streams.history import HistoryStore, Migration
from tests.factories import sample


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = HistoryStore(f"chdb://{tmp_path / 'ch'}").open()
    yield s
    s.close()


def per_column(spec: TopicSpec) -> list[str]:
    """Each typed column extracted alone, one parse per column (migration 2's views)."""
    return [c.expr.replace(f"tupleElement({PARSED}, '{c.name}')",
                           f"JSONExtract(payload, '{c.name}', '{c.extract}')")
            if c.extract else c.expr for c in typed_columns(spec)]


def rows(store: HistoryStore, spec: TopicSpec) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.query(
        f"SELECT event_id, {', '.join(f'`{c.name}`' for c in typed_columns(spec))} "
        f"FROM hashplane.{spec.table} ORDER BY event_id")]


def log_rows(store: HistoryStore, spec: TopicSpec) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.query(
        f"SELECT event_id, {', '.join(per_column(spec))} FROM hashplane.events "
        f"WHERE topic = '{spec.name}' ORDER BY event_id")]


def insert(store: HistoryStore, spec: TopicSpec, payloads: list[tuple[Any, bytes]]) -> None:
    store.insert_events([(e.event_id, spec.name, e.kind, e.schema_version, e.site,
                          e.device_id, e.ts, e.ts, e.source, raw.decode(), 0, n)
                         for n, (e, raw) in enumerate(payloads)])


def foreign(e: Any) -> bytes:
    """The record with its keys in reverse order and the fields that have a default left
    out (a producer of an older build, another language)."""
    obj = orjson.loads(encode(e))
    obj = {k: v for k, v in obj.items() if k in ENVELOPE_FIELDS
           or type(e).model_fields[k].is_required()}
    return orjson.dumps(dict(reversed(list(obj.items()))))


def test_one_parse_gives_every_topic_the_per_column_rows(store: HistoryStore) -> None:
    store.migrate()
    assert store.query("SELECT max(version) FROM hashplane.schema_migrations")[0][0] == \
        history.MIGRATIONS[-1].version
    checked = left_out = 0
    for spec in TOPICS:
        payloads: list[tuple[Any, bytes]] = []
        for model in spec.models:
            e = sample(model)
            payloads.append((e, encode(e)))
            other = sample(model)
            payloads.append((other, foreign(other)))
        insert(store, spec, payloads)
        typed = rows(store, spec)
        assert len(typed) == len(payloads), spec.name
        assert typed == log_rows(store, spec), spec.name
        checked += len(typed)
        left_out += sum(len(orjson.loads(encode(e))) - len(orjson.loads(raw))
                        for e, raw in payloads)
    assert checked >= 2 * len(TOPICS) and left_out > 50


def test_migrate_replaces_the_views_that_parsed_once_per_column(
        store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def old_typed(db: str, layout: Any) -> list[str]:
        out = []
        for spec in TOPICS:
            select = [n for n, _ in ENVELOPE_COLUMNS] + [
                f"{x} AS `{c.name}`" for x, c in zip(per_column(spec), typed_columns(spec),
                                                      strict=True)]
            out += [create_typed_table(db, spec, layout),
                    f"CREATE MATERIALIZED VIEW {db}.{spec.table}_mv TO {db}.{spec.table} AS "
                    f"SELECT {', '.join(select)} FROM {db}.events WHERE topic = '{spec.name}'"]
        return out

    current = history.MIGRATIONS
    monkeypatch.setattr(history, "MIGRATIONS",
                        (current[0], Migration(2, current[1].name, old_typed)))
    assert store.migrate() == [1, 2]
    view = "SELECT create_table_query FROM system.tables WHERE database = 'hashplane' " \
           "AND name = 'shares_mv'"
    assert PARSED not in store.query(view)[0][0]
    monkeypatch.setattr(history, "MIGRATIONS", current)
    assert store.migrate() == [3, 4]
    assert f"AS {PARSED}" in store.query(view)[0][0]
    spec = next(s for s in TOPICS if s.name == "shares")
    e = sample(spec.models[0])
    insert(store, spec, [(e, encode(e))])
    assert rows(store, spec) == log_rows(store, spec) and len(rows(store, spec)) == 1


def test_migration_4_feeds_each_topic_through_its_inbox(
        store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    current = history.MIGRATIONS
    monkeypatch.setattr(history, "MIGRATIONS", current[:3])
    assert store.migrate() == [1, 2, 3]
    specs = [s for s in TOPICS if s.name in ("shares", "asic.telemetry", "commands.acks")]
    before = {s.name: sample(s.models[0]) for s in specs}
    for spec in specs:  # stored the old way: into events, whose views fill the typed tables
        insert(store, spec, [(before[spec.name], encode(before[spec.name]))])
    monkeypatch.setattr(history, "MIGRATIONS", current)
    assert store.migrate() == [4]
    views_on_log = store.query(
        "SELECT name FROM system.tables WHERE database = 'hashplane' AND engine = "
        "'MaterializedView' AND create_table_query LIKE '%FROM hashplane.events %'")
    assert views_on_log == []  # an insert no longer runs every topic's view
    after = {s.name: sample(s.models[0]) for s in specs}
    store.insert_events([  # one call, three topics, as a sink's batch
        (e.event_id, name, e.kind, e.schema_version, e.site, e.device_id, e.ts, e.ts,
         e.source, encode(e).decode(), 0, 1) for name, e in after.items()])
    for spec in specs:
        typed = rows(store, spec)
        assert len(typed) == 2 and {r[0] for r in typed} == {
            before[spec.name].event_id, after[spec.name].event_id}, spec.name
        assert typed == log_rows(store, spec), spec.name
    assert store.query("SELECT count() FROM hashplane.events")[0][0] == 2 * len(specs)
    assert store.query("SELECT count() FROM hashplane.shares_in")[0][0] == 0  # Null: keeps none
