"""The read API (FastAPI) over the ClickHouse history."""

from __future__ import annotations

import asyncio
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query

from api.models import ErrorBody, Health, ShareWindow, WorkerShares
from streams.history import HistoryStore
from streams.settings import Settings

try:
    VERSION = version("hashplane")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0.0.0"

_SHARE_COLS = ", ".join(
    f"argMax({c}, (events, ts)) AS {c}" for c in (
        "accepted", "rejected", "stale", "accepted_pct", "rejected_pct", "stale_pct",
        "shares_per_s", "difficulty_accepted", "difficulty_rejected", "events"))


# Output columns are named like the stored ones; let argMax(x, ...) see the column x.
_SETTINGS = {"prefer_column_name_to_alias": 1}


def create_api(settings: Settings, store: HistoryStore) -> FastAPI:
    """The API app reading ``store``."""
    app = FastAPI(
        title="hashplane", version=VERSION,
        description="Read API of the hashplane control plane. Times are ISO-8601 UTC.",
        responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    db = settings.clickhouse_database

    async def q(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return await asyncio.to_thread(store.query_dicts, sql, params, _SETTINGS)
        except Exception as exc:  # store down is a 503, not a crash
            raise HTTPException(503, f"history store unavailable: {exc}") from exc

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        ok = await asyncio.to_thread(store.ping)
        return Health(status="ok" if ok else "degraded", history_store=ok, version=VERSION)

    @app.get("/v1/workers/{worker}/shares", response_model=WorkerShares, tags=["shares"])
    async def worker_shares(
        worker: Annotated[str, Path(min_length=1, max_length=256)],
        window_s: Annotated[int, Query(gt=0, description="Window length, s")] = (
            settings.share_windows_s[0]),
        since: Annotated[datetime | None, Query(description="Windows starting at or after")] = None,
        until: Annotated[datetime | None, Query(description="Windows starting before")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 60,
    ) -> WorkerShares:
        """Latest share ratios of a worker and their history from ClickHouse."""
        where = ["scope = 'worker'", "subject = {w:String}", "window_s = {ws:UInt32}"]
        params: dict[str, Any] = {"w": worker, "ws": window_s, "n": limit}
        if since is not None:
            where.append("window_start >= {since:DateTime64(3, 'UTC')}")
            params["since"] = since
        if until is not None:
            where.append("window_start < {until:DateTime64(3, 'UTC')}")
            params["until"] = until
        rows = await q(
            f"SELECT window_start, any(window_end) AS window_end, max(final) AS final, "
            f"{_SHARE_COLS} FROM {db}.metrics_shares WHERE {' AND '.join(where)} "
            f"GROUP BY window_start ORDER BY window_start DESC LIMIT {{n:UInt32}}", params)
        if not rows:
            raise HTTPException(404, f"no share ratios for worker {worker!r} "
                                     f"with {window_s}s windows")
        history = [ShareWindow.model_validate(r) for r in rows]
        return WorkerShares(worker=worker, window_s=window_s, latest=history[0], history=history)

    return app
