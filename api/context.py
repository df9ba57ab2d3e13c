"""What the API's routes share: settings, the history store, the live feed, a publisher."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from api.live import LiveFeed
from streams.history import HistoryStore
from streams.publish import Publisher
from streams.settings import Settings

# Output columns are named like the stored ones; let argMax(x, ...) see the column x.
QUERY_SETTINGS = {"prefer_column_name_to_alias": 1, "join_use_nulls": 1}


@dataclass
class ApiContext:
    """Shared by the routers (one per app)."""

    settings: Settings
    store: HistoryStore
    live: LiveFeed | None = None
    publisher: Publisher | None = None

    @property
    def db(self) -> str:
        return self.settings.clickhouse_database

    async def q(self, sql: str, params: dict[str, Any] | None = None,
                settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query off the event loop; a store failure is a 503, not a crash."""
        try:
            return await asyncio.to_thread(self.store.query_dicts, sql, params or {},
                                           {**QUERY_SETTINGS, **(settings or {})})
        except Exception as exc:
            raise HTTPException(503, f"history store unavailable: {exc}") from exc
