"""Read routes (scope ``read``): history from ClickHouse, and the live stream (SSE).

The routes are thin: they check and default the request, ask a named query of
streams/queries.py (``ctx.queries``) and shape its rows into the API's models.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.context import ApiContext
from api.live import LIVE_TOPICS, sse
from api.models import (
    Ack,
    Alert,
    Alerts,
    Asic,
    Asics,
    Commands,
    CommandView,
    Energy,
    EnergyPoint,
    FleetSummary,
    Gpu,
    GpuProfile,
    Gpus,
    History,
    Job,
    Jobs,
    Page,
    PriceInterval,
    Prices,
    Profit,
    ProfitWindow,
    Reward,
    Rewards,
    Score,
    Scores,
    Series,
    SeriesPoint,
    ShareWindow,
    TuningTrial,
    TuningTrials,
    Uplink,
    Workers,
    WorkerShares,
    WorkerSummary,
)
from schemas.events import JobState
from schemas.registry import BY_NAME
from streams.queries import NUMERIC

Limit = Annotated[int, Query(ge=1, le=10_000, description="Rows per page")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip")]
Since = Annotated[datetime | None, Query(description="From (ISO-8601); default: until - 1 h")]
Until = Annotated[datetime | None, Query(description="To, exclusive (ISO-8601); default: now")]
Device = Annotated[str, Path(min_length=1, max_length=256)]

_ENVELOPE = frozenset({"event_id", "kind", "schema_version", "site", "device_id", "ts",
                       "source", "command_id", "issued_at", "expires_at", "reason",
                       "issued_by"})

#: What the store's DateTime64 columns can hold (and a few years of margin inside it).
MIN_TIME = datetime(1971, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2261, 1, 1, tzinfo=UTC)


def utc(name: str, t: datetime) -> datetime:
    """A query time in UTC (a time without a zone is UTC, as the API's times are); 422
    outside the history's range (ClickHouse's DateTime64 cannot hold it)."""
    try:
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (OverflowError, ValueError):
        t = MIN_TIME - timedelta(days=1)
    if not MIN_TIME <= t <= MAX_TIME:
        raise HTTPException(422, f"{name} must be between {MIN_TIME.year} and "
                                 f"{MAX_TIME.year} (the history's time range)")
    return t


def window(since: datetime | None, until: datetime | None,
           default: timedelta = timedelta(hours=1)) -> tuple[datetime, datetime]:
    """The [since, until) range in UTC, with defaults; 422 when reversed."""
    u = utc("until", until) if until is not None else datetime.now(UTC)
    s = utc("since", since) if since is not None else u - default
    if s >= u:
        raise HTTPException(422, "since must be before until")
    return s, u


async def render(model: Awaitable[BaseModel]) -> bytes:
    """A snapshot's answer, serialized once (validated when built, not per request)."""
    return (await model).model_dump_json().encode()


def rendered(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def page(limit: int, offset: int, got: int) -> Page:
    """A page whose query asked for ``limit + 1`` rows and got ``got``."""
    return Page(limit=limit, offset=offset, next_offset=offset + limit if got > limit else None)


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(prefix="/v1")

    # -- fleet ----------------------------------------------------------------------------

    @r.get("/fleet", response_model=FleetSummary, tags=["fleet"])
    async def fleet() -> Response:
        """ASICs by state, hashrate and draw, GPUs, energy, alerts and commands at a glance
        (recomputed at most once a second)."""
        return rendered(await ctx.snapshots.get("fleet", lambda: render(fleet_now())))

    async def fleet_now() -> FleetSummary:
        stale = ctx.settings.device_stale_s
        hq = ctx.queries
        asics, g, workers, energy, alerts, cmds = await asyncio.gather(
            hq.asic_states(stale), hq.gpu_totals(stale), hq.active_workers(stale),
            _energy_latest(ctx), _firing(ctx), hq.command_outcomes_last_hour())
        by_sev: dict[str, int] = {}
        for a in alerts:
            by_sev[a.severity] = by_sev.get(a.severity, 0) + 1
        return FleetSummary(
            site=ctx.settings.site, asics={x["state"]: int(x["n"]) for x in asics},
            hashrate_ths=float(sum(x["h"] or 0 for x in asics)),
            asic_power_kw=float(sum(x["p"] or 0 for x in asics)) / 1000.0,
            gpus=int(g.get("n") or 0), gpu_hashrate_mhs=float(g.get("h") or 0.0),
            gpu_temp_max_c=g.get("t") if g.get("n") else None,
            workers=workers, energy=energy, alerts_firing=by_sev, commands_last_hour=cmds)

    @r.get("/asics", response_model=Asics, tags=["fleet"])
    async def asics(
        state: Annotated[str | None, Query(max_length=32, description="Only this state")] = None,
        seen_within_s: Annotated[int, Query(gt=0, description="Seen within, s")] = 86_400,
        limit: Limit = 500, offset: Offset = 0,
    ) -> Response:
        """ASICs: last telemetry, cycles and last-off (folded from applied acks; recomputed
        at most once a second per query)."""
        async def now() -> Asics:
            rows = await ctx.queries.asics(seen_within_s, None, state, limit + 1, offset)
            return Asics(page=page(limit, offset, len(rows)),
                         asics=[Asic.model_validate(x) for x in rows[:limit]])

        key = ("asics", state, seen_within_s, limit, offset)
        return rendered(await ctx.snapshots.get(key, lambda: render(now())))

    @r.get("/asics/{device_id}", response_model=Asic, tags=["fleet"])
    async def asic(device_id: Device) -> Asic:
        """One ASIC (404 when it never reported)."""
        rows = await ctx.queries.asics(10 * 365 * 86_400, device_id, None, 1, 0)
        if not rows:
            raise HTTPException(404, f"no telemetry from ASIC {device_id!r}")
        return Asic.model_validate(rows[0])

    @r.get("/gpus", response_model=Gpus, tags=["fleet"])
    async def gpus(seen_within_s: Annotated[int, Query(gt=0)] = 86_400,
                   limit: Limit = 500, offset: Offset = 0) -> Gpus:
        """GPUs: last telemetry, current OC profile (last applied) and latest reward."""
        rows = await ctx.queries.gpus(seen_within_s, limit + 1, offset)
        ids = [x["device_id"] for x in rows[:limit]]
        prof, rew = await asyncio.gather(
            ctx.queries.gpu_profiles(ids),
            ctx.queries.latest_rewards(ids, ctx.settings.share_windows_s[0]))
        out = []
        for x in rows[:limit]:
            p = prof.get(x["device_id"])
            profile = None if p is None else GpuProfile(
                applied_at=p[0], power_limit_w=p[1], core_offset_mhz=p[2], mem_offset_mhz=p[3],
                intensity=p[4], profile=p[5], issued_by=p[6])
            out.append(Gpu(**x, profile=profile, reward=rew.get(x["device_id"])))
        return Gpus(page=page(limit, offset, len(rows)), gpus=out)

    # -- shares and rewards ---------------------------------------------------------------

    @r.get("/workers", response_model=Workers, tags=["shares"])
    async def workers(
        window_s: Annotated[int | None, Query(gt=0, description="Window length, s")] = None,
        seen_within_s: Annotated[int, Query(gt=0, description="Updated within, s")] = 3600,
        limit: Limit = 500, offset: Offset = 0,
    ) -> Workers:
        """Every worker's latest window (of ``window_s``) and its reward."""
        w = window_s or ctx.settings.share_windows_s[0]
        rows = await ctx.queries.workers(w, seen_within_s, limit + 1, offset)
        rew = await ctx.queries.window_rewards([x["worker"] for x in rows[:limit]], w)
        return Workers(page=page(limit, offset, len(rows)), workers=[
            WorkerSummary(**x, window_s=w, reward=rew.get((x["worker"], x["window_start"])))
            for x in rows[:limit]])

    @r.get("/workers/{worker}/shares", response_model=WorkerShares, tags=["shares"])
    async def worker_shares(
        worker: Annotated[str, Path(min_length=1, max_length=256)],
        window_s: Annotated[int | None, Query(gt=0, description="Window length, s")] = None,
        since: Annotated[datetime | None, Query(description="Windows starting at or after")] = None,
        until: Annotated[datetime | None, Query(description="Windows starting before")] = None,
        limit: Limit = 60,
    ) -> WorkerShares:
        """Latest share ratios of a worker and their history (404 when it has none)."""
        w = window_s or ctx.settings.share_windows_s[0]
        rows = await ctx.queries.worker_windows(
            worker, w, None if since is None else utc("since", since),
            None if until is None else utc("until", until), limit)
        if not rows:
            raise HTTPException(404, f"no share ratios for worker {worker!r} with {w}s windows")
        history = [ShareWindow.model_validate(x) for x in rows]
        return WorkerShares(worker=worker, window_s=w, latest=history[0], history=history)

    @r.get("/rewards", response_model=Rewards, tags=["shares"])
    async def rewards(
        worker: Annotated[str | None, Query(max_length=256)] = None,
        window_s: Annotated[int | None, Query(gt=0)] = None,
        since: Since = None, until: Until = None, limit: Limit = 500, offset: Offset = 0,
    ) -> Rewards:
        """Seed-000 rewards per worker and window (latest revision), newest window first."""
        s, u = window(since, until)
        rows = await ctx.queries.rewards(s, u, window_s or ctx.settings.share_windows_s[0],
                                         worker, limit + 1, offset)
        return Rewards(page=page(limit, offset, len(rows)),
                       rewards=[Reward.model_validate(x) for x in rows[:limit]])

    # -- energy ---------------------------------------------------------------------------

    @r.get("/energy", response_model=Energy, tags=["energy"])
    async def energy(since: Since = None, until: Until = None,
                     bucket_s: Annotated[int, Query(ge=1, le=86_400)] = 10) -> Energy:
        """Latest headroom and its history in buckets (means; frequency: the minimum)."""
        s, u = window(since, until, timedelta(minutes=15))
        rows = await ctx.queries.energy_buckets(ctx.settings.site, s, u, bucket_s)
        return Energy(latest=await _energy_latest(ctx), bucket_s=bucket_s,
                      history=[EnergyPoint.model_validate(x) for x in rows])

    # -- money ----------------------------------------------------------------------------

    @r.get("/profit", response_model=Profit, tags=["energy"])
    async def profit(
        scope: Annotated[Literal["site", "asic", "rig"], Query()] = "site",
        subject: Annotated[str | None, Query(max_length=256, description="One ASIC, rig or "
                                             "site; all when absent")] = None,
        since: Since = None, until: Until = None, limit: Limit = 200, offset: Offset = 0,
    ) -> Profit:
        """Revenue, power cost, profit, J/TH and breakeven per window (the profit agent's
        ``metrics.profit``), newest first, with the range's totals."""
        s, u = window(since, until, timedelta(days=1))
        rows = await ctx.queries.profit(scope, subject, s, u, limit + 1, offset)
        tot = await ctx.queries.profit_totals(scope, subject, s, u)
        return Profit(page=page(limit, offset, len(rows)),
                      windows=[ProfitWindow.model_validate(x) for x in rows[:limit]],
                      total_revenue=float(tot["revenue"] or 0.0),
                      total_power_cost=float(tot["power_cost"] or 0.0),
                      total_profit=float(tot["profit"] or 0.0))

    @r.get("/prices", response_model=Prices, tags=["energy"])
    async def prices(since: Since = None, until: Until = None) -> Prices:
        """Power price intervals (day-ahead and real-time, as last published), the
        hashprice, and the price and efficiency limit in force."""
        s, u = window(since, until, timedelta(hours=6))
        rows = await ctx.queries.prices(s, u)
        latest = await _energy_latest(ctx)
        hp = await ctx.queries.hashprice()
        return Prices(intervals=[PriceInterval.model_validate(x) for x in rows],
                      hashprice_per_th_day=hp if hp is not None
                      else ctx.settings.hashprice_per_th_day,
                      price_now=latest.price_per_mwh if latest is not None else None,
                      max_j_per_th=latest.max_j_per_th if latest is not None else None)

    @r.get("/uplink", response_model=Uplink, tags=["fleet"])
    async def uplink() -> Uplink:
        """The uplink's newest probe and the local pool's accepted shares per minute (the
        failover's fallback while the uplink is down)."""
        x = await ctx.queries.uplink(300)
        probed = bool(x["probes"])
        return Uplink(up=bool(x["up"]) if probed else None, target=x["target"] or "",
                      latency_ms=x["latency_ms"] if probed else None,
                      detail=x["detail"] or "", last_probe=x["last_probe"] if probed else None,
                      local_pool_accepted_per_min=float(x["local_accepted"] or 0) / 5.0,
                      local_pool_workers=int(x["local_workers"] or 0))

    # -- commands and alerts --------------------------------------------------------------

    @r.get("/commands", response_model=Commands, tags=["commands"])
    async def commands(
        device_id: Annotated[str | None, Query(max_length=256)] = None,
        kind: Annotated[str | None, Query(max_length=64, description="e.g. SleepAsic")] = None,
        status: Annotated[Literal["applied", "rejected", "failed", "expired", "pending"] | None,
                          Query(description="Ack status; pending: no ack yet")] = None,
        since: Since = None, until: Until = None, limit: Limit = 200, offset: Offset = 0,
    ) -> Commands:
        """Commands of every command topic with their acks, newest first."""
        s, u = window(since, until)
        rows = await _commands(ctx, s, u, device_id, kind, status, None, limit + 1, offset)
        return Commands(page=page(limit, offset, len(rows)), commands=rows[:limit])

    @r.get("/commands/{command_id}", response_model=CommandView, tags=["commands"])
    async def command(command_id: Annotated[str, Path(pattern=r"^[0-9a-fA-F-]{36}$")]
                      ) -> CommandView:
        """One command and its ack (404 until the history has it)."""
        rows = await _commands(ctx, datetime(2000, 1, 1, tzinfo=UTC),
                               datetime.now(UTC) + timedelta(days=1), None, None, None,
                               command_id, 1, 0)
        if not rows:
            raise HTTPException(404, f"no command {command_id} in the history (yet)")
        return rows[0]

    @r.get("/alerts", response_model=Alerts, tags=["alerts"])
    async def alerts(
        severity: Annotated[Literal["info", "warning", "critical"] | None, Query()] = None,
        since: Since = None, until: Until = None, limit: Limit = 200, offset: Offset = 0,
    ) -> Alerts:
        """Alerts firing now (from the whole history) and alerts fired/resolved in range."""
        s, u = window(since, until, timedelta(days=1))
        firing, hist = await asyncio.gather(_firing(ctx), ctx.queries.alert_history(
            s, u, severity, limit + 1, offset))
        if severity:
            firing = [a for a in firing if a.severity == severity]
        return Alerts(firing=firing, page=page(limit, offset, len(hist)),
                      history=[Alert.model_validate(x) for x in hist[:limit]])

    # -- compute --------------------------------------------------------------------------

    @r.get("/compute/jobs", response_model=Jobs, tags=["compute"])
    async def jobs(state: Annotated[JobState | None, Query()] = None,
                   since: Since = None, until: Until = None, limit: Limit = 200,
                   offset: Offset = 0) -> Jobs:
        """Compute jobs' latest state, most recently changed first."""
        s, u = window(since, until, timedelta(days=1))
        rows = await ctx.queries.jobs(s, u, state, limit + 1, offset)
        return Jobs(page=page(limit, offset, len(rows)),
                    jobs=[Job.model_validate(x) for x in rows[:limit]])

    @r.get("/compute/scores", response_model=Scores, tags=["compute"])
    async def scores(scheme: Annotated[Literal["gpu", "endpoint"] | None, Query()] = None
                     ) -> Scores:
        """Latest seed-001 GPU and seed-004 endpoint score of every subject."""
        rows = await ctx.queries.scores(scheme)
        return Scores(scores=[Score(scheme=x["scheme"], subject=x["subject"], score=x["score"],
                                    components=orjson.loads(x["components"] or "{}"),
                                    ts=x["updated"]) for x in rows])

    @r.get("/tuner/trials", response_model=TuningTrials, tags=["compute"])
    async def tuner_trials(device_id: Annotated[str | None, Query(max_length=256)] = None,
                           since: Since = None, until: Until = None, limit: Limit = 200,
                           offset: Offset = 0) -> TuningTrials:
        """The GPU tuner's trials: settings tried, what each window measured, the outcome."""
        s, u = window(since, until, timedelta(days=7))
        rows = await ctx.queries.tuner_trials(s, u, device_id, limit + 1, offset)
        return TuningTrials(page=page(limit, offset, len(rows)),
                            trials=[TuningTrial.model_validate(x) for x in rows[:limit]])

    # -- history --------------------------------------------------------------------------

    @r.get("/history", response_model=History, tags=["history"])
    async def history(
        table: Annotated[str, Query(description="Typed table, e.g. asic_telemetry")],
        field: Annotated[str, Query(description="Numeric column, e.g. hashrate_ths")],
        agg: Annotated[Literal["avg", "min", "max", "sum", "count"], Query()] = "avg",
        by: Annotated[Literal["device", "fleet"], Query(
            description="device: one series per device; fleet: agg over devices of each "
                        "device's bucket mean (sum of hashrate = fleet hashrate)")] = "device",
        bucket_s: Annotated[int, Query(ge=1, le=86_400 * 31)] = 300,
        device: Annotated[list[str] | None, Query(max_length=1000)] = None,
        since: Since = None, until: Until = None,
    ) -> History:
        """A numeric field aggregated per time bucket, e.g. mean hashrate per 5 minutes per
        device (``table=asic_telemetry&field=hashrate_ths&bucket_s=300``)."""
        if table not in NUMERIC:
            raise HTTPException(422, f"unknown table {table!r}; one of {sorted(NUMERIC)}")
        if field not in NUMERIC[table]:
            raise HTTPException(422, f"{table} has no numeric field {field!r}; one of "
                                     f"{NUMERIC[table]}")
        s, u = window(since, until)
        if (u - s).total_seconds() / bucket_s > 20_000:
            raise HTTPException(422, "more than 20,000 buckets: widen bucket_s")
        rows = await ctx.queries.series(table, field, agg, by, bucket_s, device or [], s, u)
        series: dict[str, list[SeriesPoint]] = {}
        for x in rows:
            v = x["value"]
            series.setdefault(x["key"], []).append(SeriesPoint(
                bucket=x["bucket"], value=None if v is None or v != v else float(v)))
        return History(table=table, field=field, agg=agg, by=by, bucket_s=bucket_s, since=s,
                       until=u, series=[Series(key=k, points=p) for k, p in series.items()])

    # -- live -----------------------------------------------------------------------------

    @r.get("/stream", tags=["live"], response_class=StreamingResponse,
           responses={200: {"content": {"text/event-stream": {}}}})
    async def stream(
        request: Request,
        topics: Annotated[str, Query(description="Comma-separated topics; empty: "
                                                 + ", ".join(LIVE_TOPICS))] = "",
    ) -> StreamingResponse:
        """Server-sent events as they reach Kafka: ``event:`` is the topic, ``data:`` the
        event. A comment every 15 s keeps proxies from closing an idle stream."""
        if ctx.live is None:
            raise HTTPException(503, "this API runs without the live feed")
        wanted = [t for t in topics.split(",") if t]
        unknown = [t for t in wanted if t not in LIVE_TOPICS or t not in BY_NAME]
        if unknown:
            raise HTTPException(422, f"not streamed: {unknown}; streamed: {list(LIVE_TOPICS)}")
        live = ctx.live

        async def events() -> AsyncIterator[bytes]:
            with live.subscribe(wanted) as sub:
                yield b": hashplane live stream\nretry: 2000\n\n"
                while not await request.is_disconnected():
                    try:
                        topic, ev = await asyncio.wait_for(sub.queue.get(), 15.0)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield sse(topic, ev)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    return r


# -- queries shared by routes ---------------------------------------------------------------

async def _energy_latest(ctx: ApiContext) -> EnergyPoint | None:
    row = await ctx.queries.energy_latest(ctx.settings.site)
    return EnergyPoint.model_validate(row) if row is not None else None


async def _firing(ctx: ApiContext) -> list[Alert]:
    return [Alert.model_validate(x) for x in await ctx.queries.firing_alerts()]


async def _commands(ctx: ApiContext, s: datetime, u: datetime, device: str | None,
                    kind: str | None, status: str | None, command_id: str | None, n: int,
                    offset: int) -> list[CommandView]:
    rows = await ctx.queries.commands(s, u, device, kind, status, command_id, n, offset)
    out = []
    for x in rows:
        body = orjson.loads(x["payload"])
        ack = None if x["status"] is None else Ack(
            status=x["status"], detail=x["detail"], latency_ms=x["latency_ms"],
            actuator=x["actuator"], ts=x["ack_ts"])
        out.append(CommandView(
            command_id=body["command_id"], kind=x["kind"], device_id=x["device_id"], ts=x["ts"],
            issued_by=body.get("issued_by", ""), reason=body.get("reason", ""),
            params={k: v for k, v in body.items() if k not in _ENVELOPE}, ack=ack))
    return out

