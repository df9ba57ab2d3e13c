"""The operator's API (FastAPI): history from ClickHouse, live state and SSE from Kafka,
manual commands through the same topics and acks as the agents, Prometheus metrics and the
dashboard.  Routes live in api/read.py, api/operate.py; this module wires them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import alertmanager, dashboard, operate, read
from api.auth import KeyRing, require
from api.context import ApiContext
from api.live import LiveFeed
from api.metrics import HashplaneCollector, exposition
from api.models import ErrorBody, Health, RestoredState
from schemas.settings import Settings
from streams.feed import group_id as feed_group
from streams.feed import partition_group_id
from streams.history import HistoryStore
from streams.publish import Publisher
from streams.replay import restore

log = logging.getLogger(__name__)

try:
    VERSION = version("hashplane")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0.0.0"


def pipeline_groups(s: Settings) -> list[str]:
    """Consumer groups whose lag /metrics reports (the worker's and its control lane's, and
    their forwarders': the site feed's, the partition feeds')."""
    return [s.app_id, f"{s.app_id}-control", feed_group(s.app_id),
            feed_group(f"{s.app_id}-control"), partition_group_id(s.app_id), s.sink_group,
            f"{s.app_id}-asic-actuator",
            f"{s.app_id}-gpu-actuator", f"{s.app_id}-alert-sinks"]


def create_api(settings: Settings, store: HistoryStore, *, live: bool = True,
               connector_stats: Callable[[], dict[str, Any]] | None = None,
               sink_stats: Callable[[], Any] | None = None,
               outbox_stats: Callable[[], Any] | None = None) -> FastAPI:
    """The API app reading ``store``; with ``live``, following Kafka (SSE, commands' acks,
    /metrics) and publishing operators' commands."""
    ring = KeyRing.from_settings(settings.api_key, settings.api_keys)
    feed = LiveFeed(settings.kafka_bootstrap, groups=pipeline_groups(settings),
                    lag_s=settings.api_live_s)
    ctx = ApiContext(settings=settings, store=store, live=feed if live else None)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not live:
            yield
            return
        stop = asyncio.Event()
        task = asyncio.create_task(feed.run(stop), name="api-live-feed")
        # Connects in the background (retrying while the broker is away): reads work at
        # once, commands answer 503 until the broker is there.
        ctx.publisher = Publisher(settings.kafka_bootstrap, client_id="hashplane-api")
        connecting = asyncio.create_task(ctx.publisher.start(), name="api-publisher")
        try:
            yield
        finally:
            stop.set()
            connecting.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            await ctx.publisher.stop()
            ctx.close()

    app = FastAPI(
        title="hashplane", version=VERSION, lifespan=lifespan,
        description=(
            "Operator API of the hashplane control plane. Times are ISO-8601 UTC. Every route "
            "but /healthz and the dashboard page needs an API key (Authorization: Bearer <key>"
            " or X-API-Key): scope read for GETs, operator for commands and SQL."),
        responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody},
                   404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    app.state.ctx = ctx

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with where and why, never the input echoed back (it may be NaN, which JSON
        cannot carry, or megabytes)."""
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))} for e in exc.errors()]})

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> Response:
        """Every 422 has one shape, the validation error's (a list of where and why)."""
        if exc.status_code == 422 and isinstance(exc.detail, str):
            return JSONResponse(status_code=422, content={"detail": [
                {"loc": [], "msg": exc.detail, "type": "value_error"}]})
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not an outage (those are 503, api/context.py): 500, its traceback logged."""
        log.error("unhandled error answering %s %s", request.method, request.url.path,
                  exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal error (logged)"})

    reader, operator = Depends(require(ring, "read")), Depends(require(ring, "operator"))

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        ok = await asyncio.to_thread(store.writable)  # the sink can store, not only read
        following = ctx.live is not None and ctx.live.ready.is_set() and not ctx.live.error
        return Health(status="ok" if ok else "degraded", history_store=ok,
                      live_feed=following, version=VERSION)

    @app.get("/v1/state", response_model=RestoredState, tags=["ops"], dependencies=[reader])
    async def state() -> RestoredState:
        """The site agents' durable state rebuilt from the history now: ASIC cycles,
        last-off/on and commands in flight, home pools, firing alerts, caps, the compute
        gate.  A worker that finds its changelogs gone (the embedded broker restarted)
        loads this (``HASHPLANE_STATE_URL``)."""
        now = datetime.now(UTC)
        fold = await asyncio.to_thread(restore, store, settings, now)
        return RestoredState(as_of=now, window_s=settings.restore_window_s, events=fold.events,
                             tables=fold.tables())

    collector = HashplaneCollector(feed, settings.site, connector_stats, sink_stats,
                                   outbox_stats)

    @app.get("/metrics", tags=["ops"], dependencies=[reader],
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        """Prometheus exposition: fleet, energy, pipeline (events, lag, dlq, acks, latency)."""
        return Response(exposition(collector),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(read.router(ctx), dependencies=[reader])
    app.include_router(operate.router(ctx, ring), dependencies=[operator])
    app.include_router(alertmanager.router(ctx), dependencies=[operator])
    app.include_router(dashboard.router())
    return app
