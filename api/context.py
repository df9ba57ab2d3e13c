"""What the API's routes share: settings, the history store, the live feed, a publisher.

Reads run on the API's own connections to the store, a small pool (``api_store_connections``),
never on the sink's: a slow read never holds a lock the sink or the other routes need.  What
they ask is in streams/queries.py (``ApiContext.queries``).  An error of the store is
logged with its text and the SQL; the client gets a 503 without them.  Any other exception
is a bug: it propagates, is logged with its traceback and answered 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from api.live import LiveFeed
from schemas.settings import Settings
from streams.history import STORE_ERRORS, HistoryStore
from streams.publish import Publisher
from streams.queries import SETTINGS, Queries

log = logging.getLogger(__name__)

@dataclass
class Snapshots:
    """The dashboard's hottest answers (``/v1/fleet``, ``/v1/asics``), computed at most every
    ``fresh_s`` per distinct request: a caller gets the last answer at once while a newer one
    is computed (stale while revalidate); it waits only for the first, or for one older than
    ``max_stale_s``.  32 dashboards polling cost one query a second, not 32."""

    fresh_s: float = 1.0
    max_stale_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _entries: dict[Hashable, tuple[Any, float]] = field(default_factory=dict)
    _computing: dict[Hashable, asyncio.Task[Any]] = field(default_factory=dict)

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry[1] < self.fresh_s:
            return entry[0]
        task = self._computing.get(key)
        if task is None:
            task = asyncio.create_task(self._compute(key, compute))
            self._computing[key] = task
        if entry is not None and now - entry[1] < self.max_stale_s:
            return entry[0]
        return await asyncio.shield(task)

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = await compute()
            self._entries[key] = (value, self.clock())
            if len(self._entries) > 256:  # distinct query strings: keep the newest only
                self._entries.pop(next(iter(self._entries)))
            return value
        finally:
            self._computing.pop(key, None)


@dataclass
class ApiContext:
    """Shared by the routers (one per app)."""

    settings: Settings
    store: HistoryStore  # the owner's store (the sink writes through it): health only
    live: LiveFeed | None = None
    publisher: Publisher | None = None
    readers: list[HistoryStore] = field(default_factory=list)
    sql_reader: HistoryStore | None = None  # POST /v1/sql's own session (opened on first use)
    snapshots: Snapshots = field(default_factory=Snapshots)
    _pool: asyncio.Queue[HistoryStore] | None = None

    def pool(self) -> asyncio.Queue[HistoryStore]:
        """The read connections (opened on first use, one per ``api_store_connections``)."""
        if self._pool is None:
            self._pool = asyncio.Queue()
            n = max(1, self.settings.api_store_connections)
            self.readers = [self.store.sibling() for _ in range(n)]
            for r in self.readers:
                self._pool.put_nowait(r)
        return self._pool

    def close(self) -> None:
        for r in [*self.readers, *([self.sql_reader] if self.sql_reader else [])]:
            r.close()
        self.readers, self.sql_reader, self._pool = [], None, None

    @property
    def db(self) -> str:
        return self.settings.clickhouse_database

    @property
    def queries(self) -> Queries:
        """The named history queries, read through this context's pool."""
        return Queries(self.q, self.db)

    async def q(self, sql: str, params: dict[str, Any] | None = None,
                settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query off the event loop on a pooled connection; a store failure is a 503
        (its text logged, not sent), not a crash; anything else propagates (a 500)."""
        pool = self.pool()
        store = await pool.get()
        try:
            return await asyncio.to_thread(store.query_dicts, sql, params or {},
                                           {**SETTINGS, **(settings or {})})
        except STORE_ERRORS as exc:
            log.error("history read failed: %s\n%s", str(exc)[:2000], sql[:2000])
            raise HTTPException(503, "history store unavailable") from exc
        finally:
            pool.put_nowait(store)
