"""The ClickHouse history store: connection, versioned migrations, inserts, stored events.

Deduplication (choice and why): every table is a ReplacingMergeTree whose sorting key ends
in ``event_id``, so an event sent twice by a producer collapses on merge, and exact read
paths use ``LIMIT 1 BY event_id`` or ``uniqExact(event_id)`` instead of ``FINAL``.  On top of
that the sink keeps redelivered records from being written at all: after a restart, a
rebalance or a partition whose offsets went back, it asks the raw log which of the fetched
events it already holds, by event id (``stored_ids``: the sorting key's prefix and the
batch's time range find them), and skips exactly those.  A Kafka offset alone never
identifies a stored record: the embedded broker keeps topics in memory, so after its
restart offsets start again at 0 and the same (topic, partition, offset) names a new
record (the offset is still stored, for operators).  The sink asks the raw log itself, not a
side table, because an insert killed between the log and its materialized views leaves the
log ahead of any view.  Insert deduplication tokens were not chosen: they only match a
redelivered batch cut at exactly the same offsets, which a time-bounded batcher does not
guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.registry import TOPICS
from streams.ddl import (
    LOG_COLUMNS,
    ONE_SERVER,
    Layout,
    create_inbox,
    create_typed_table,
    create_typed_view,
    inbox,
    typed_columns,
)

log = logging.getLogger(__name__)

#: What a failing store raises: ClickHouse's errors (a query refused, a server error, the
#: embedded engine's) and the connection's (refused, reset, timed out).  Anything else from
#: a read is a bug, not an outage.
STORE_ERRORS: tuple[type[BaseException], ...] = (ClickHouseError, OSError)

EVENT_COLUMNS = LOG_COLUMNS
#: Their types, as migration 1 created them (given to the client with each insert, so it
#: does not ask the table for them first).
EVENT_TYPES = (
    "UUID", "LowCardinality(String)", "LowCardinality(String)", "UInt16",
    "LowCardinality(String)", "String", "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')",
    "LowCardinality(String)", "String", "UInt32", "UInt64",
)
#: Each topic's inbox (``streams.ddl.inbox``), where its rows are inserted.
INBOXES = {spec.name: inbox(spec) for spec in TOPICS}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(t: datetime) -> int:
    """A ``DateTime64(3, 'UTC')`` value as the log stores it: whole milliseconds since the
    epoch (exact: integer arithmetic, the same value the client computes from ``t``)."""
    return (t - _EPOCH) // _MS


@dataclass(frozen=True)
class Migration:
    """A numbered, named DDL step; applied once, recorded in ``schema_migrations``."""

    version: int
    name: str
    statements: Callable[[str, Layout], list[str]]


def _m1_log(db: str, layout: Layout) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {layout.stored(db, "events")}{layout.on()} (
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
  kafka_offset UInt64,
  INDEX kafka_offset_minmax kafka_offset TYPE minmax GRANULARITY 1
) ENGINE = {layout.engine(db, "events", "ingested_at")}
PARTITION BY toYYYYMM(ts)
ORDER BY (topic, site, device_id, ts, event_id)
COMMENT 'raw event log: every record of every topic, as it was on Kafka'""",
        *layout.distributed(db, "events"),
    ]


def _m2_typed(db: str, layout: Layout) -> list[str]:
    out: list[str] = []
    for spec in TOPICS:
        out += [create_typed_table(db, spec, layout), *layout.distributed(db, spec.table),
                create_typed_view(db, spec, layout, source="events")]
    return out


def _m3_views_parse_once(db: str, layout: Layout) -> list[str]:
    # The views of migration 2 parsed a payload once per column.  Run with the sink
    # stopped (``hashplane migrate``, before the sink's unit): an insert between the drop
    # and the create would reach the log but not its typed table.
    out: list[str] = []
    for spec in TOPICS:
        out += [f"DROP VIEW IF EXISTS {db}.{spec.table}_mv{layout.on()}",
                create_typed_view(db, spec, layout, source="events")]
    return out


def _m4_inboxes(db: str, layout: Layout) -> list[str]:
    # Every view hung off ``events``, so every insert ran all 21 of them (each a few ms to
    # plan, whatever the insert held).  Each topic's records now go into its own inbox,
    # which runs two.  Run with the sink stopped, as migration 3: an insert between the
    # drop and the create would reach the log but not its typed table.
    out: list[str] = []
    for spec in TOPICS:
        out += [*create_inbox(db, spec, layout),
                f"DROP VIEW IF EXISTS {db}.{spec.table}_mv{layout.on()}",
                create_typed_view(db, spec, layout)]
    return out


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "raw event log", _m1_log),
    Migration(2, "typed tables per topic, fed by materialized views", _m2_typed),
    Migration(3, "typed views parse each payload once", _m3_views_parse_once),
    Migration(4, "each topic inserted through its own inbox and views", _m4_inboxes),
)


def ddl_script(database: str = "hashplane", cluster: str = "") -> str:
    """Every migration's DDL as one SQL script (``infra/clickhouse/schema.sql``; with
    ``cluster``, the replicated and distributed tables of a ClickHouse cluster:
    ``streams.ddl.Layout``)."""
    layout = Layout(cluster)
    how = f" --cluster {cluster}" if cluster else ""
    parts = [f"-- hashplane ClickHouse schema, generated by `hashplane ddl{how}`; do not edit.\n"
             f"CREATE DATABASE IF NOT EXISTS {database}{layout.on()};\n"]
    for m in MIGRATIONS:
        parts.append(f"\n-- migration {m.version}: {m.name}\n")
        parts += [stmt.strip() + ";\n" for stmt in m.statements(database, layout)]
    return "".join(parts)


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
        self._siblings: list[HistoryStore] = []

    def sibling(self) -> HistoryStore:
        """Another connection to the same store, with its own lock (the API's readers, the
        SQL endpoint's own session: never the sink's client); closed with this one (the
        embedded engine's directory is free again only when every connection is)."""
        s = HistoryStore(self.dsn, self.database)
        with self._lock:
            self._siblings.append(s)
        return s

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
            siblings, self._siblings = self._siblings, []
        for sib in siblings:
            sib.close()
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
                for stmt in m.statements(db, ONE_SERVER):
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
            if inbox(spec) not in have:  # a topic added since the last migration
                for stmt in create_inbox(db, spec):
                    self.client.command(stmt)
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
        """Insert raw-log rows (columns ``EVENT_COLUMNS``): one insert per topic, into its
        inbox, which writes the log and the typed table (a topic with no inbox: the log
        alone).  A column's values are all of one form: the event id a ``UUID`` or its
        ``int``, the times ``datetime`` or ``epoch_ms`` integers, the payload ``str`` or
        UTF-8 ``bytes`` (the sink's rows: the client writes those as they are).  Not
        atomic across topics: a failed call is retried whole, and what a retry stores
        twice collapses in the ReplacingMergeTree."""
        by_topic: dict[str, list[Sequence[Any]]] = {}
        for row in rows:
            by_topic.setdefault(row[1], []).append(row)
        with self._lock:
            for topic, part in by_topic.items():
                self.client.insert(f"{self.database}.{INBOXES.get(topic, 'events')}", part,
                                   column_names=EVENT_COLUMNS, column_type_names=EVENT_TYPES)

    def stored_ids(self, topic: str, keys: Sequence[StoredKey]) -> set[UUID]:
        """Which of these events (site, device, ts, event id) of ``topic`` the log already
        holds.  The sorting key's prefix (topic, site, device_id) and the time range keep
        the lookup to the granules those devices wrote in that range."""
        if not keys:
            return set()
        with self._lock:
            rows = self.client.query(
                f"SELECT DISTINCT event_id FROM {self.database}.events WHERE "
                f"{_KEYS_IN}", parameters=_keys_params(topic, keys)).result_rows
        return {r[0] for r in rows}

    def repair_typed(self, topic: str, keys: Sequence[StoredKey]) -> int:
        """Fill the typed table with stored log rows of these events that its view missed
        (an insert killed between the log and its views); return how many were added."""
        from schemas.registry import topic as spec_of
        from streams.ddl import typed_select

        if not keys:
            return 0
        spec = spec_of(topic)
        db, params = self.database, _keys_params(topic, keys)
        missing = (f"FROM {db}.events WHERE {_KEYS_IN} AND event_id NOT IN (SELECT event_id "
                   f"FROM {db}.{spec.table} WHERE ts >= {{lo:DateTime64(3, 'UTC')}} AND "
                   f"ts <= {{hi:DateTime64(3, 'UTC')}} AND event_id IN {{ids:Array(UUID)}})")
        with self._lock:
            n = int(self.client.query(f"SELECT uniqExact(event_id) {missing}",
                                      parameters=params).result_rows[0][0])
            if n:
                self.client.command(
                    f"INSERT INTO {db}.{spec.table} {typed_select(spec, missing)} "
                    f"LIMIT 1 BY event_id", parameters=params)
        return n

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

    def query_table(self, sql: str, settings: dict[str, Any] | None = None) -> tuple[
            list[str], list[str], list[tuple[Any, ...]]]:
        """Run any read statement: column names, ClickHouse types, rows (the SQL endpoint)."""
        with self._lock:
            result = self.client.query(sql, settings=settings)
            return (list(result.column_names), [t.name for t in result.column_types],
                    [tuple(_aware(v) for v in r) for r in result.result_rows])

    def writable(self) -> bool:
        """True when the store answers and this connection may write (the sink's)."""
        try:
            with self._lock:
                rows = self.client.query("SELECT getSetting('readonly')").result_rows
            return bool(rows) and int(rows[0][0]) == 0
        except Exception:  # noqa: BLE001 - health check: any failure means no
            return False

    def ping(self) -> bool:
        """True when the store answers."""
        try:
            with self._lock:
                return bool(self.client.query("SELECT 1").result_rows)
        except Exception:  # noqa: BLE001 - health check: any failure means down
            return False


async def open_retrying(store: HistoryStore, stop: asyncio.Event, retry_max_s: float = 30.0,
                        ) -> bool:
    """Open and migrate the store, retrying with capped backoff while it fails (a server
    down, a disk full); False when ``stop`` was set first.  An embedded directory locked by
    another process is not retried: that is a configuration error, raised at once."""
    delay = 0.5
    while not stop.is_set():
        try:
            await asyncio.to_thread(lambda: store.open().migrate())
            return True
        except Exception as exc:
            if "Cannot lock file" in str(exc):
                raise
            store.close()
            log.warning("history store %s unavailable (%s); retrying in %.1fs", store.dsn, exc,
                        delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(retry_max_s, delay * 2)
    return False


#: (site, device_id, ts, event_id) of one event: enough to find it by the sorting key.
StoredKey = tuple[str, str, datetime, UUID]

_KEYS_IN = ("topic = {t:String} AND ts >= {lo:DateTime64(3, 'UTC')} AND ts <= "
            "{hi:DateTime64(3, 'UTC')} AND (site, device_id) IN {devices:Array(Tuple(String, "
            "String))} AND event_id IN {ids:Array(UUID)}")


def _keys_params(topic: str, keys: Sequence[StoredKey]) -> dict[str, Any]:
    # stored times have millisecond precision: widen the range by a millisecond each way
    ms = timedelta(milliseconds=1)
    return {"t": topic, "lo": min(k[2] for k in keys) - ms, "hi": max(k[2] for k in keys) + ms,
            "devices": sorted({(k[0], k[1]) for k in keys}), "ids": [k[3] for k in keys]}


def _aware(value: Any) -> Any:
    """Stored times are UTC; some result paths drop the zone, so put it back."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, tuple):
        return tuple(_aware(v) for v in value)
    return value
