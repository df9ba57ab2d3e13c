"""ClickHouse DDL derived from the registry (STYLE.md 3): typed tables and their views.

The sink writes each topic's records into that topic's inbox ``<table>_in`` (engine
``Null``: it keeps nothing), whose two materialized views write them on: one into the raw log
``events`` as they are, one into the typed table ``<table>`` with the kind's fields
extracted from the stored JSON.  So one insert feeds the log and the typed table together,
and an insert runs only its own topic's two views.  (Until migration 4 all 21 views hung off
``events``: every insert, whatever it held, ran all of them, and each costs the engine a few
milliseconds an insert to plan, about 60 ms an insert in all.)
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Union, get_args, get_origin
from uuid import UUID

from pydantic import AwareDatetime
from pydantic.fields import FieldInfo

from schemas.envelope import Command, Event
from schemas.registry import TopicSpec

#: Envelope columns every typed table copies straight from ``events``.
ENVELOPE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "UUID"),
    ("kind", "LowCardinality(String)"),
    ("schema_version", "UInt16"),
    ("site", "LowCardinality(String)"),
    ("device_id", "String"),
    ("ts", "DateTime64(3, 'UTC')"),
    ("source", "LowCardinality(String)"),
    ("ingested_at", "DateTime64(3, 'UTC')"),
)
ENVELOPE_FIELDS = frozenset(Event.model_fields)


#: The alias of a typed row's payload, parsed once (``payload_tuple``).
PARSED = "_j"


@dataclass(frozen=True)
class Column:
    """A typed-table column and how it comes out of ``payload``: ``extract`` is its type in
    the one parse of the payload (``payload_tuple``; empty: the raw JSON text, taken on
    its own) and ``expr`` turns that into the column."""

    name: str
    type: str
    expr: str
    extract: str = ""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(get_args(tp))
    return tp, False


def column_for(name: str, field: FieldInfo, nullable: bool = False) -> Column:
    """Map a pydantic field to a ClickHouse column type and its extraction."""
    tp, optional = _strip_optional(field.annotation)
    null = optional or nullable
    parsed = f"tupleElement({PARSED}, '{name}')"
    origin = get_origin(tp)
    if tp is bool:
        ch = "Bool"
    elif tp is int:
        ch = "Int64"
    elif tp is float:
        ch = "Float64"
    elif tp is UUID:
        return Column(name, "Nullable(UUID)" if null else "UUID",
                      f"toUUIDOrNull({parsed})" if null else f"toUUIDOrZero({parsed})", "String")
    elif tp is datetime or tp is AwareDatetime:
        fn = "parseDateTime64BestEffortOrNull" if null else "parseDateTime64BestEffortOrZero"
        return Column(name, "Nullable(DateTime64(3, 'UTC'))" if null else "DateTime64(3, 'UTC')",
                      f"{fn}({parsed}, 3, 'UTC')", "String")
    elif origin is Literal:
        inner = "Nullable(String)" if null else "String"
        return Column(name, f"LowCardinality({inner})", parsed, inner)
    elif tp is str:
        ch = "String"
    elif origin is list:
        (item,) = get_args(tp) or (str,)
        inner = {int: "Int64", float: "Float64", str: "String"}.get(item, "String")
        return Column(name, f"Array({inner})", parsed, f"Array({inner})")
    else:  # objects and anything else: the JSON text
        return Column(name, "String", f"JSONExtractRaw(payload, '{name}')")
    full = f"Nullable({ch})" if null else ch
    return Column(name, full, parsed, full)


def typed_columns(spec: TopicSpec) -> list[Column]:
    """Payload columns of a topic's typed table: the union of its kinds' fields.

    A field that is not on every kind of the topic is nullable.
    """
    seen: dict[str, Column] = {}
    for model in spec.models:
        for name, field in model.model_fields.items():
            if name in ENVELOPE_FIELDS or name in seen:
                continue
            on_all = all(name in m.model_fields for m in spec.models)
            seen[name] = column_for(name, field, nullable=not on_all)
    return list(seen.values())


def order_key(spec: TopicSpec) -> str:
    """Sorting key: per device, then time; commands also by command id."""
    if any(issubclass(m, Command) for m in spec.models):
        return "(site, device_id, ts, command_id, event_id)"
    return "(site, device_id, ts, event_id)"


@dataclass(frozen=True)
class Layout:
    """Where the tables live: one server (default), or a ClickHouse cluster (``cluster``).

    On a cluster every table is a ``<name>_local`` replicated table on each shard
    (``Replicated*MergeTree`` with the ``{shard}``/``{replica}`` macros each server
    defines) with a ``Distributed`` table of the plain name over it, sharded by device
    (``cityHash64(site, device_id)``: a device's rows, and a redelivered record's copies,
    land on one shard, where ``ReplacingMergeTree`` collapses them).  The sink inserts
    into each topic's distributed inbox, sharded the same way; each shard's inbox (a
    ``Null`` table) and its views fill that shard's local log and typed table from the
    rows it received; readers query the distributed tables."""

    cluster: str = ""

    def on(self) -> str:
        return f" ON CLUSTER {self.cluster}" if self.cluster else ""

    def stored(self, db: str, name: str) -> str:
        """The table rows are written to (the shard-local one on a cluster)."""
        return f"{db}.{name}_local" if self.cluster else f"{db}.{name}"

    def engine(self, db: str, name: str, version: str) -> str:
        if not self.cluster:
            return f"ReplacingMergeTree({version})"
        return (f"ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/{name}', "
                f"'{{replica}}', {version})")

    def distributed(self, db: str, name: str) -> list[str]:
        """The cluster-wide table over the shards' local ones (none on one server)."""
        if not self.cluster:
            return []
        return [f"CREATE TABLE IF NOT EXISTS {db}.{name}{self.on()} AS {db}.{name}_local "
                f"ENGINE = Distributed({self.cluster}, {db}, {name}_local, "
                f"cityHash64(site, device_id))"]


ONE_SERVER = Layout()


def create_typed_table(db: str, spec: TopicSpec, layout: Layout = ONE_SERVER) -> str:
    """CREATE TABLE for a topic's typed table (ReplacingMergeTree: duplicates collapse)."""
    cols = [f"`{n}` {t}" for n, t in ENVELOPE_COLUMNS]
    cols += [f"`{c.name}` {c.type}" for c in typed_columns(spec)]
    ttl_days = max(1, spec.retention_ms // 86_400_000)
    return (
        f"CREATE TABLE IF NOT EXISTS {layout.stored(db, spec.table)}{layout.on()} (\n  "
        + ",\n  ".join(cols) + "\n)"
        f" ENGINE = {layout.engine(db, spec.table, 'ingested_at')}"
        f" PARTITION BY toYYYYMM(ts) ORDER BY {order_key(spec)}"
        f" COMMENT 'typed rows of topic {spec.name} (kafka keeps {ttl_days} d, history all)'"
    )


def payload_tuple(spec: TopicSpec) -> str:
    """One JSON parse of a row's payload into every typed field (a named tuple: fields are
    found by name, a missing one takes its type's default or NULL, as ``JSONExtract`` of
    each alone would; one parse instead of one per column: a third less insert time)."""
    parts = [f"`{c.name}` {c.extract}" for c in typed_columns(spec) if c.extract]
    return f"JSONExtract(payload, 'Tuple({', '.join(parts)})')" if parts else "tuple()"


def typed_select(spec: TopicSpec, source: str) -> str:
    """The SELECT that turns the ``events`` rows of ``source`` (``FROM ... [WHERE ...]``)
    into typed rows of the topic."""
    select = [n for n, _ in ENVELOPE_COLUMNS]
    select += [f"{c.expr} AS `{c.name}`" for c in typed_columns(spec)]
    return (f"SELECT {', '.join(select)} FROM (SELECT *, {payload_tuple(spec)} AS {PARSED} "
            f"{source})")


def inbox(spec: TopicSpec) -> str:
    """The name of a topic's inbox: the table its records are inserted into."""
    return f"{spec.table}_in"


#: The raw log's columns, in its order (an inbox has the same).
LOG_COLUMNS = (
    "event_id", "topic", "kind", "schema_version", "site", "device_id", "ts", "ingested_at",
    "source", "payload", "kafka_partition", "kafka_offset",
)


def create_inbox(db: str, spec: TopicSpec, layout: Layout = ONE_SERVER) -> list[str]:
    """A topic's inbox (``Null``: rows pass through to its views and are not kept) and the
    view that writes what it receives into the raw log; on a cluster each shard's inbox
    writes its own local log, behind a distributed inbox sharded as the log is."""
    box, cols = inbox(spec), ", ".join(LOG_COLUMNS)
    return [
        f"CREATE TABLE IF NOT EXISTS {layout.stored(db, box)}{layout.on()} "
        f"AS {layout.stored(db, 'events')} ENGINE = Null",
        *layout.distributed(db, box),
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{box}_log_mv{layout.on()} "
        f"TO {layout.stored(db, 'events')} AS SELECT {cols} FROM {layout.stored(db, box)}",
    ]


def create_typed_view(db: str, spec: TopicSpec, layout: Layout = ONE_SERVER,
                      source: str = "") -> str:
    """CREATE MATERIALIZED VIEW that fills a typed table from the rows inserted into
    ``source`` (the topic's inbox; migrations 2 and 3 hung the views off ``events``); on a
    cluster each shard's local table from the rows that shard received."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{spec.table}_mv{layout.on()} "
        f"TO {layout.stored(db, spec.table)} AS "
        + typed_select(spec, f"FROM {layout.stored(db, source or inbox(spec))} "
                             f"WHERE topic = '{spec.name}'")
    )
