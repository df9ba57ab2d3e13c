"""The ClickHouse history store: connection, versioned migrations, inserts, watermarks.

Deduplication (choice and why): every table is a ReplacingMergeTree whose sorting key ends
in ``event_id``, so a re-sent event collapses on merge, and exact read paths use
``LIMIT 1 BY event_id`` or ``uniqExact(event_id)`` instead of ``FINAL``.  On top of that the
sink keeps duplicates from being written at all: every row carries its Kafka
(topic, partition, offset); a materialized view keeps the highest stored offset per
partition in ``sink_watermarks`` as part of the same insert, and after a restart or a
rebalance the sink skips records at or below it.  Insert deduplication tokens were not
chosen: they only match a redelivered batch cut at exactly the same offsets, which a
time-bounded batcher does not guarantee.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from schemas.registry import TOPICS
from streams.ddl import create_typed_table, create_typed_view, typed_columns

log = logging.getLogger(__name__)

EVENT_COLUMNS = (
    "event_id", "topic", "kind", "schema_version", "site", "device_id", "ts", "ingested_at",
    "source", "payload", "kafka_partition", "kafka_offset",
)


@dataclass(frozen=True)
class Migration:
    """A numbered, named DDL step; applied once, recorded in ``schema_migrations``."""

    version: int
    name: str
    statements: Callable[[str], list[str]]


def _m1_log(db: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
  event_id UUID,
  topic LowCardinality(String),
  kind LowCardinality(String),
  schema_version UInt16,
  site LowCardinality(String),
  device_id String,
  ts DateTime64(3, 'UTC'),
  ingested_at DateTime64(3, 'UTC'),
  source LowCardinality(String),
  payload String CODEC(ZSTD(3)),
  kafka_partition UInt32,
  kafka_offset UInt64
) ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (topic, site, device_id, ts, event_id)
COMMENT 'raw event log: every record of every topic, as it was on Kafka'""",
        f"""CREATE TABLE IF NOT EXISTS {db}.sink_watermarks (
  topic LowCardinality(String),
  kafka_partition UInt32,
  kafka_offset UInt64
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY (topic, kafka_partition)
COMMENT 'highest Kafka offset stored per partition, written with each insert'""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sink_watermarks_mv
TO {db}.sink_watermarks AS
SELECT topic, kafka_partition, max(kafka_offset) AS kafka_offset
FROM {db}.events GROUP BY topic, kafka_partition""",
    ]


def _m2_typed(db: str) -> list[str]:
    out: list[str] = []
    for spec in TOPICS:
        out += [create_typed_table(db, spec), create_typed_view(db, spec)]
    return out


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "raw event log and sink watermarks", _m1_log),
    Migration(2, "typed tables per topic, fed by materialized views", _m2_typed),
)


class HistoryStore:
    """One ClickHouse client (in-process chdb or a server) for the sink, API and replay.

    The in-process engine allows one data directory per process and one owner process per
    directory; calls are serialised with a lock because the embedded engine is shared by the
    sink's inserts and the API's queries.
    """

    def __init__(self, dsn: str, database: str = "hashplane"):
        self.dsn = dsn
        self.database = database
        self._lock = threading.RLock()
        self._client: Client | None = None

    @property
    def embedded(self) -> bool:
        """True for the in-process engine."""
        return self.dsn.startswith("chdb:")

    def open(self) -> HistoryStore:
        """Connect (creating the embedded data directory) and return self."""
        if self._client is None:
            if self.embedded:
                from pathlib import Path

                Path(self.dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
            self._client = clickhouse_connect.get_client(dsn=self.dsn)
        return self

    def close(self) -> None:
        """Release the connection (and, for chdb, the data directory)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @property
    def client(self) -> Client:
        """The underlying clickhouse-connect client."""
        if self._client is None:
            self.open()
        assert self._client is not None
        return self._client

    # -- migrations -----------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply pending migrations, then add columns new fields need; return versions run."""
        db = self.database
        with self._lock:
            self.client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
            self.client.command(
                f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, "
                f"name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                f"ENGINE = MergeTree ORDER BY version"
            )
            done = {r[0] for r in self.client.query(
                f"SELECT version FROM {db}.schema_migrations").result_rows}
            ran = []
            for m in MIGRATIONS:
                if m.version in done:
                    continue
                for stmt in m.statements(db):
                    self.client.command(stmt)
                self.client.insert(f"{db}.schema_migrations", [(m.version, m.name)],
                                   column_names=["version", "name"])
                log.info("applied migration %d: %s", m.version, m.name)
                ran.append(m.version)
            self._reconcile_typed_tables()
            return ran

    def _reconcile_typed_tables(self) -> None:
        """Additive schema evolution: a field added to a model becomes a column and the
        view is recreated to fill it. Columns are never dropped (history keeps them)."""
        db = self.database
        rows = self.client.query(
            "SELECT table, name FROM system.columns WHERE database = {db:String}",
            parameters={"db": db},
        ).result_rows
        have: dict[str, set[str]] = {}
        for table, name in rows:
            have.setdefault(table, set()).add(name)
        for spec in TOPICS:
            missing = [c for c in typed_columns(spec) if c.name not in have.get(spec.table, set())]
            if spec.table not in have:
                self.client.command(create_typed_table(db, spec))
                self.client.command(create_typed_view(db, spec))
                continue
            if not missing:
                continue
            for c in missing:
                self.client.command(
                    f"ALTER TABLE {db}.{spec.table} ADD COLUMN IF NOT EXISTS `{c.name}` {c.type}")
            self.client.command(f"DROP VIEW IF EXISTS {db}.{spec.table}_mv")
            self.client.command(create_typed_view(db, spec))
            log.info("added columns to %s: %s", spec.table, [c.name for c in missing])

    # -- writes and reads -----------------------------------------------------------------

    def insert_events(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert raw-log rows (columns ``EVENT_COLUMNS``) in one atomic insert."""
        if not rows:
            return
        with self._lock:
            self.client.insert(f"{self.database}.events", rows, column_names=EVENT_COLUMNS)

    def watermarks(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """Highest stored Kafka offset per (topic, partition) among ``topics``."""
        with self._lock:
            rows = self.client.query(
                f"SELECT topic, kafka_partition, max(kafka_offset) FROM "
                f"{self.database}.sink_watermarks WHERE topic IN {{topics:Array(String)}} "
                f"GROUP BY topic, kafka_partition",
                parameters={"topics": list(topics)},
            ).result_rows
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def query(self, sql: str, parameters: dict[str, Any] | None = None,
              settings: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT and return its rows."""
        with self._lock:
            result = self.client.query(sql, parameters=parameters, settings=settings)
            return [tuple(_aware(v) for v in r) for r in result.result_rows]

    def query_dicts(self, sql: str, parameters: dict[str, Any] | None = None,
                    settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT and return rows as dicts keyed by column name."""
        with self._lock:
            result = self.client.query(sql, parameters=parameters, settings=settings)
            return [dict(zip(result.column_names, map(_aware, r), strict=True))
                    for r in result.result_rows]

    def ping(self) -> bool:
        """True when the store answers."""
        try:
            with self._lock:
                return bool(self.client.query("SELECT 1").result_rows)
        except Exception:  # noqa: BLE001 - health check: any failure is "down"
            return False


def _aware(value: Any) -> Any:
    """Stored times are UTC; some result paths drop the zone, so put it back."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
