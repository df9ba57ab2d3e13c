"""Read routes (scope ``read``): history from ClickHouse, and the live stream (SSE).

Every query reads deduplicated rows (``LIMIT 1 BY event_id`` or ``argMax``) because the
ReplacingMergeTree tables may hold a redelivered event until their next merge.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

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
    Reward,
    Rewards,
    Score,
    Scores,
    Series,
    SeriesPoint,
    ShareWindow,
    TuningTrial,
    TuningTrials,
    Workers,
    WorkerShares,
    WorkerSummary,
)
from schemas.events import JobState
from schemas.registry import BY_NAME, TOPICS
from streams.ddl import typed_columns

Limit = Annotated[int, Query(ge=1, le=10_000, description="Rows per page")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip")]
Since = Annotated[datetime | None, Query(description="From (ISO-8601); default: until - 1 h")]
Until = Annotated[datetime | None, Query(description="To, exclusive (ISO-8601); default: now")]
Device = Annotated[str, Path(min_length=1, max_length=256)]

COMMAND_TOPICS = tuple(t.name for t in TOPICS if t.name.startswith("commands.")
                       and t.name != "commands.acks")
_SHARE_COLS = ", ".join(
    f"argMax({c}, (events, ts)) AS {c}" for c in (
        "accepted", "rejected", "stale", "accepted_pct", "rejected_pct", "stale_pct",
        "shares_per_s", "difficulty_accepted", "difficulty_rejected", "events"))
_ENVELOPE = frozenset({"event_id", "kind", "schema_version", "site", "device_id", "ts",
                       "source", "command_id", "issued_at", "expires_at", "reason",
                       "issued_by"})
#: Tables and numeric fields the history endpoint serves (from the registry).
NUMERIC: dict[str, list[str]] = {
    spec.table: [c.name for c in typed_columns(spec)
                 if c.type.removeprefix("Nullable(").startswith(("Float", "Int", "UInt"))]
    for spec in TOPICS}
NUMERIC = {t: f for t, f in NUMERIC.items() if f}


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
    db = ctx.db

    # -- fleet ----------------------------------------------------------------------------

    @r.get("/fleet", response_model=FleetSummary, tags=["fleet"])
    async def fleet() -> Response:
        """ASICs by state, hashrate and draw, GPUs, energy, alerts and commands at a glance
        (recomputed at most once a second)."""
        return rendered(await ctx.snapshots.get("fleet", lambda: render(fleet_now())))

    async def fleet_now() -> FleetSummary:
        stale = ctx.settings.device_stale_s
        asics, gpus, workers, energy, alerts, cmds = await asyncio.gather(
            ctx.q(f"SELECT state, count() AS n, sum(h) AS h, sum(p) AS p FROM ("
                  f"SELECT device_id, argMax(state, ts) AS state, argMax(hashrate_ths, ts) AS h,"
                  f" argMax(power_w, ts) AS p FROM {db}.asic_telemetry "
                  f"WHERE ts >= now64(3) - toIntervalSecond({{st:UInt32}}) GROUP BY device_id) "
                  f"GROUP BY state", {"st": int(stale)}),
            ctx.q(f"SELECT count() AS n, sum(h) AS h, max(t) AS t FROM (SELECT device_id, "
                  f"argMax(hashrate_mhs, ts) AS h, argMax(temp_c, ts) AS t "
                  f"FROM {db}.gpu_telemetry WHERE ts >= now64(3) - toIntervalSecond("
                  f"{{st:UInt32}}) GROUP BY device_id)", {"st": int(stale)}),
            ctx.q(f"SELECT uniqExact(subject) AS n FROM {db}.metrics_shares WHERE scope = "
                  f"'worker' AND ts >= now64(3) - toIntervalSecond({{st:UInt32}})",
                  {"st": int(stale)}),
            _energy_latest(ctx),
            _firing(ctx),
            ctx.q(f"SELECT ifNull(a.status, 'pending') AS status, count() AS n FROM ("
                  f"SELECT toUUID(JSONExtractString(payload, 'command_id')) AS cid "
                  f"FROM {db}.events WHERE topic IN {{topics:Array(String)}} AND ts >= "
                  f"now64(3) - toIntervalHour(1) LIMIT 1 BY event_id) AS c LEFT JOIN ("
                  f"SELECT command_id, argMin(status, ts) AS status FROM {db}.commands_acks "
                  f"WHERE ts >= now64(3) - toIntervalHour(2) GROUP BY command_id) AS a "
                  f"ON a.command_id = c.cid GROUP BY status", {"topics": list(COMMAND_TOPICS)}))
        g = gpus[0] if gpus else {}
        by_sev: dict[str, int] = {}
        for a in alerts:
            by_sev[a.severity] = by_sev.get(a.severity, 0) + 1
        return FleetSummary(
            site=ctx.settings.site, asics={x["state"]: int(x["n"]) for x in asics},
            hashrate_ths=float(sum(x["h"] or 0 for x in asics)),
            asic_power_kw=float(sum(x["p"] or 0 for x in asics)) / 1000.0,
            gpus=int(g.get("n") or 0), gpu_hashrate_mhs=float(g.get("h") or 0.0),
            gpu_temp_max_c=g.get("t") if g.get("n") else None,
            workers=int(workers[0]["n"]) if workers else 0, energy=energy,
            alerts_firing=by_sev, commands_last_hour={x["status"]: int(x["n"]) for x in cmds})

    @r.get("/asics", response_model=Asics, tags=["fleet"])
    async def asics(
        state: Annotated[str | None, Query(max_length=32, description="Only this state")] = None,
        seen_within_s: Annotated[int, Query(gt=0, description="Seen within, s")] = 86_400,
        limit: Limit = 500, offset: Offset = 0,
    ) -> Response:
        """ASICs: last telemetry, cycles and last-off (folded from applied acks; recomputed
        at most once a second per query)."""
        async def now() -> Asics:
            rows = await _asics(ctx, seen_within_s, None, state, limit + 1, offset)
            return Asics(page=page(limit, offset, len(rows)),
                         asics=[Asic.model_validate(x) for x in rows[:limit]])

        key = ("asics", state, seen_within_s, limit, offset)
        return rendered(await ctx.snapshots.get(key, lambda: render(now())))

    @r.get("/asics/{device_id}", response_model=Asic, tags=["fleet"])
    async def asic(device_id: Device) -> Asic:
        """One ASIC (404 when it never reported)."""
        rows = await _asics(ctx, 10 * 365 * 86_400, device_id, None, 1, 0)
        if not rows:
            raise HTTPException(404, f"no telemetry from ASIC {device_id!r}")
        return Asic.model_validate(rows[0])

    @r.get("/gpus", response_model=Gpus, tags=["fleet"])
    async def gpus(seen_within_s: Annotated[int, Query(gt=0)] = 86_400,
                   limit: Limit = 500, offset: Offset = 0) -> Gpus:
        """GPUs: last telemetry, current OC profile (last applied) and latest reward."""
        rows = await ctx.q(
            f"SELECT device_id, argMax(rig_id, ts) AS rig_id, argMax(gpu_index, ts) AS gpu_index,"
            f" argMax(card, ts) AS card, argMax(algorithm, ts) AS algorithm, "
            f"argMax(hashrate_mhs, ts) AS hashrate_mhs, argMax(power_w, ts) AS power_w, "
            f"argMax(power_limit_w, ts) AS power_limit_w, argMax(temp_c, ts) AS temp_c, "
            f"argMax(core_clock_mhz, ts) AS core_clock_mhz, argMax(mem_clock_mhz, ts) AS "
            f"mem_clock_mhz, argMax(fan_pct, ts) AS fan_pct, max(ts) AS last_seen "
            f"FROM {db}.gpu_telemetry WHERE ts >= now64(3) - toIntervalSecond({{s:UInt32}}) "
            f"GROUP BY device_id ORDER BY device_id LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": seen_within_s, "n": limit + 1, "o": offset})
        ids = [x["device_id"] for x in rows[:limit]]
        profiles, rewards = await asyncio.gather(
            ctx.q(f"SELECT c.device_id AS device_id, argMax(tuple(a.ts, c.power_limit_w, "
                  f"c.core_offset_mhz, c.mem_offset_mhz, c.intensity, c.profile, c.issued_by), "
                  f"a.ts) AS p FROM (SELECT * FROM {db}.commands_gpu WHERE device_id IN "
                  f"{{ids:Array(String)}} LIMIT 1 BY event_id) AS c INNER JOIN (SELECT "
                  f"command_id, ts FROM {db}.commands_acks WHERE status = 'applied' AND "
                  f"command_kind = 'ApplyGpuProfile' LIMIT 1 BY command_id) AS a "
                  f"ON a.command_id = c.command_id GROUP BY c.device_id", {"ids": ids}),
            ctx.q(f"SELECT worker, argMax(reward, (window_start, ts)) AS reward "
                  f"FROM {db}.metrics_rewards WHERE kind = 'RewardComputed' AND worker IN "
                  f"{{ids:Array(String)}} AND window_s = {{w:UInt32}} GROUP BY worker",
                  {"ids": ids, "w": ctx.settings.share_windows_s[0]}))
        prof = {x["device_id"]: x["p"] for x in profiles}
        rew = {x["worker"]: x["reward"] for x in rewards}
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
        rows = await ctx.q(
            "SELECT subject AS worker, argMax(window_start, (window_start, events, ts)) AS "
            "window_start, argMax(final, (window_start, events, ts)) AS final, "
            + ", ".join(f"argMax({c}, (window_start, events, ts)) AS {c}" for c in (
                "accepted", "rejected", "stale", "accepted_pct", "rejected_pct", "stale_pct",
                "shares_per_s"))
            + f" FROM {db}.metrics_shares WHERE scope = 'worker' AND window_s = {{w:UInt32}} "
            f"AND ts >= now64(3) - toIntervalSecond({{s:UInt32}}) GROUP BY subject "
            f"ORDER BY subject LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"w": w, "s": max(seen_within_s, 2 * w), "n": limit + 1,
             "o": offset})
        rewards = await ctx.q(
            f"SELECT worker, window_start, argMax(reward, ts) AS reward FROM {db}.metrics_rewards"
            f" WHERE kind = 'RewardComputed' AND window_s = {{w:UInt32}} AND worker IN "
            f"{{ids:Array(String)}} GROUP BY worker, window_start",
            {"w": w, "ids": [x["worker"] for x in rows[:limit]]})
        rew = {(x["worker"], x["window_start"]): x["reward"] for x in rewards}
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
        where = ["scope = 'worker'", "subject = {w:String}", "window_s = {ws:UInt32}"]
        params: dict[str, Any] = {"w": worker, "ws": w, "n": limit}
        if since is not None:
            where.append("window_start >= {since:DateTime64(3, 'UTC')}")
            params["since"] = utc("since", since)
        if until is not None:
            where.append("window_start < {until:DateTime64(3, 'UTC')}")
            params["until"] = utc("until", until)
        rows = await ctx.q(
            f"SELECT window_start, any(window_end) AS window_end, max(final) AS final, "
            f"{_SHARE_COLS} FROM {db}.metrics_shares WHERE {' AND '.join(where)} "
            f"GROUP BY window_start ORDER BY window_start DESC LIMIT {{n:UInt32}}", params)
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
        rows = await ctx.q(
            "SELECT worker, window_s, window_start, "
            + ", ".join(f"argMax({c}, ts) AS {c}" for c in (
                "reward", "accepted_pct", "rejected_pct", "temp_c", "temp_max_c",
                "worker_accepted", "cluster_accepted"))
            + f" FROM {db}.metrics_rewards WHERE kind = 'RewardComputed' AND window_start >= "
            f"{{s:DateTime64(3, 'UTC')}} AND window_start < {{u:DateTime64(3, 'UTC')}} "
            f"AND window_s = {{w:UInt32}} AND ({{wk:String}} = '' OR worker = {{wk:String}}) "
            f"GROUP BY worker, window_s, window_start ORDER BY window_start DESC, worker "
            f"LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": s, "u": u, "w": window_s or ctx.settings.share_windows_s[0],
             "wk": worker or "", "n": limit + 1, "o": offset})
        return Rewards(page=page(limit, offset, len(rows)),
                       rewards=[Reward.model_validate(x) for x in rows[:limit]])

    # -- energy ---------------------------------------------------------------------------

    @r.get("/energy", response_model=Energy, tags=["energy"])
    async def energy(since: Since = None, until: Until = None,
                     bucket_s: Annotated[int, Query(ge=1, le=86_400)] = 10) -> Energy:
        """Latest headroom and its history in buckets (means; frequency: the minimum)."""
        s, u = window(since, until, timedelta(minutes=15))
        rows = await ctx.q(
            "SELECT toStartOfInterval(ts, toIntervalSecond({b:UInt32})) AS ts, "
            + ", ".join(f"avg({c}) AS {c}" for c in (
                "supply_kw", "margin_kw", "available_kw", "load_kw", "asic_load_kw",
                "gpu_load_kw", "headroom_kw", "target_load_kw"))
            + f", min(frequency_hz) AS frequency_hz, argMax(band, e.ts) AS band, "
            f"argMax(cap_kw, e.ts) AS cap_kw FROM (SELECT * FROM {db}.metrics_energy "
            f"WHERE ts >= {{s:DateTime64(3, 'UTC')}} AND ts < {{u:DateTime64(3, 'UTC')}} "
            f"AND site = {{site:String}} LIMIT 1 BY event_id) AS e GROUP BY ts ORDER BY ts "
            f"LIMIT 10000",
            {"b": bucket_s, "s": s, "u": u, "site": ctx.settings.site},
            {"prefer_column_name_to_alias": 0})
        return Energy(latest=await _energy_latest(ctx), bucket_s=bucket_s,
                      history=[EnergyPoint.model_validate(x) for x in rows])

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
        firing, hist = await asyncio.gather(_firing(ctx), ctx.q(
            f"SELECT kind, ts, rule, severity, dedup_key, device_id, message, value, threshold "
            f"FROM {db}.alerts WHERE ts >= {{s:DateTime64(3, 'UTC')}} AND ts < "
            f"{{u:DateTime64(3, 'UTC')}} AND ({{sev:String}} = '' OR severity = {{sev:String}})"
            f" ORDER BY ts DESC, event_id LIMIT 1 BY event_id LIMIT {{n:UInt32}} "
            f"OFFSET {{o:UInt32}}",
            {"s": s, "u": u, "sev": severity or "", "n": limit + 1, "o": offset}))
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
        rows = await ctx.q(
            f"SELECT * FROM (SELECT job_id, argMax(workload, ts) AS workload, "
            f"argMax(state, ts) AS state, argMax(detail, ts) AS detail, "
            f"argMax(duration_s, ts) AS duration_s, argMax(credits, ts) AS credits, "
            f"argMax(proof_sha256, ts) AS proof_sha256, max(ts) AS updated "
            f"FROM {db}.compute_jobs WHERE ts >= {{s:DateTime64(3, 'UTC')}}"
            f" AND ts < {{u:DateTime64(3, 'UTC')}} GROUP BY job_id) "
            f"WHERE {{st:String}} = '' OR state = {{st:String}} ORDER BY updated DESC, job_id "
            f"LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": s, "u": u, "st": state or "", "n": limit + 1, "o": offset})
        return Jobs(page=page(limit, offset, len(rows)),
                    jobs=[Job.model_validate(x) for x in rows[:limit]])

    @r.get("/compute/scores", response_model=Scores, tags=["compute"])
    async def scores(scheme: Annotated[Literal["gpu", "endpoint"] | None, Query()] = None
                     ) -> Scores:
        """Latest seed-001 GPU and seed-004 endpoint score of every subject."""
        rows = await ctx.q(
            f"SELECT scheme, subject, argMax(score, ts) AS score, argMax(components, ts) AS "
            f"components, max(ts) AS updated FROM {db}.metrics_rewards WHERE kind = "
            f"'ComputeScoreComputed' AND ({{sc:String}} = '' OR scheme = {{sc:String}}) "
            f"GROUP BY scheme, subject ORDER BY scheme, score DESC",
            {"sc": scheme or ""}, {"prefer_column_name_to_alias": 0})
        return Scores(scores=[Score(scheme=x["scheme"], subject=x["subject"], score=x["score"],
                                    components=orjson.loads(x["components"] or "{}"),
                                    ts=x["updated"]) for x in rows])

    @r.get("/tuner/trials", response_model=TuningTrials, tags=["compute"])
    async def tuner_trials(device_id: Annotated[str | None, Query(max_length=256)] = None,
                           since: Since = None, until: Until = None, limit: Limit = 200,
                           offset: Offset = 0) -> TuningTrials:
        """The GPU tuner's trials: settings tried, what each window measured, the outcome."""
        s, u = window(since, until, timedelta(days=7))
        rows = await ctx.q(
            f"SELECT ts, device_id, card, trial, optimizer, power_limit_w, core_offset_mhz, "
            f"mem_offset_mhz, intensity, hashrate_mhs, power_w, temp_max_c, reward, objective, "
            f"efficiency_mh_per_j, feasible, outcome FROM (SELECT * FROM {db}.metrics_rewards "
            f"WHERE kind = 'TuningTrialEvaluated' AND ts >= {{s:DateTime64(3, 'UTC')}} AND ts "
            f"< {{u:DateTime64(3, 'UTC')}} AND ({{d:String}} = '' OR device_id = {{d:String}})"
            f" LIMIT 1 BY event_id) ORDER BY ts DESC, device_id LIMIT {{n:UInt32}} "
            f"OFFSET {{o:UInt32}}",
            {"s": s, "u": u, "d": device_id or "", "n": limit + 1, "o": offset})
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
        inner = (f"SELECT toStartOfInterval(ts, toIntervalSecond({{b:UInt32}})) AS bucket, "
                 f"device_id, `{field}` AS v FROM {db}.{table} WHERE ts >= "
                 f"{{s:DateTime64(3, 'UTC')}} AND ts < {{u:DateTime64(3, 'UTC')}} AND "
                 f"(empty({{d:Array(String)}}) OR has({{d:Array(String)}}, device_id)) "
                 f"LIMIT 1 BY event_id")
        params = {"b": bucket_s, "s": s, "u": u, "d": device or []}
        if by == "device":
            sql = (f"SELECT device_id AS key, bucket, {agg}(v) AS value FROM ({inner}) "
                   f"GROUP BY key, bucket ORDER BY key, bucket LIMIT 200000")
        else:
            per = "count" if agg == "count" else "avg"
            sql = (f"SELECT 'fleet' AS key, bucket, {agg}(dv) AS value FROM (SELECT bucket, "
                   f"device_id, {per}(v) AS dv FROM ({inner}) GROUP BY bucket, device_id) "
                   f"GROUP BY bucket ORDER BY bucket LIMIT 200000")
        if agg == "count" and by == "fleet":
            sql = sql.replace("count(dv)", "sum(dv)")
        rows = await ctx.q(sql, params, {"prefer_column_name_to_alias": 0})
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

async def _energy_latest(ctx: ApiContext) -> Any:
    rows = await ctx.q(
        f"SELECT * FROM {ctx.db}.metrics_energy WHERE site = {{site:String}} "
        f"ORDER BY ts DESC, event_id DESC LIMIT 1", {"site": ctx.settings.site})
    return EnergyPoint.model_validate(rows[0]) if rows else None


async def _firing(ctx: ApiContext) -> list[Alert]:
    rows = await ctx.q(
        f"SELECT dedup_key, argMax(tuple(kind, ts, rule, severity, device_id, message, value, "
        f"threshold), ts) AS a FROM {ctx.db}.alerts GROUP BY dedup_key "
        f"HAVING a.1 = 'AlertFired' ORDER BY a.2 DESC")
    return [Alert(kind=x["a"][0], ts=x["a"][1], rule=x["a"][2], severity=x["a"][3],
                  dedup_key=x["dedup_key"], device_id=x["a"][4], message=x["a"][5],
                  value=x["a"][6], threshold=x["a"][7]) for x in rows]


async def _asics(ctx: ApiContext, seen_within_s: int, device: str | None, state: str | None,
                 n: int, offset: int) -> list[dict[str, Any]]:
    db = ctx.db
    rows = await ctx.q(
        f"SELECT t.device_id AS device_id, t.model AS model, t.state AS state, "
        f"t.hashrate_ths AS hashrate_ths, t.power_w AS power_w, t.power_target_w AS "
        f"power_target_w, t.temp_chip_c AS temp_chip_c, t.pool_url AS pool_url, "
        f"t.last_seen AS last_seen, ifNull(c.cycles, 0) AS cycles, c.last_off AS last_off, "
        f"c.last_on AS last_on FROM (SELECT device_id, argMax(model, ts) AS model, "
        f"argMax(state, ts) AS state, argMax(hashrate_ths, ts) AS hashrate_ths, "
        f"argMax(power_w, ts) AS power_w, argMax(power_target_w, ts) AS power_target_w, "
        f"argMax(temp_chip_c, ts) AS temp_chip_c, argMax(pool_url, ts) AS pool_url, "
        f"max(ts) AS last_seen FROM {db}.asic_telemetry WHERE ts >= now64(3) - "
        f"toIntervalSecond({{s:UInt32}}) AND ({{d:String}} = '' OR device_id = {{d:String}}) "
        f"GROUP BY device_id) AS t LEFT JOIN (SELECT device_id, countIf(command_kind = "
        f"'SleepAsic') AS cycles, maxIf(ts, command_kind = 'SleepAsic') AS last_off, "
        f"maxIf(ts, command_kind = 'WakeAsic') AS last_on FROM (SELECT * FROM {db}.commands_acks "
        f"WHERE status = 'applied' AND ({{d:String}} = '' OR device_id = {{d:String}}) "
        f"LIMIT 1 BY command_id) GROUP BY device_id) AS c ON c.device_id = t.device_id "
        f"WHERE {{st:String}} = '' OR t.state = {{st:String}} ORDER BY device_id "
        f"LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
        {"s": seen_within_s, "d": device or "", "st": state or "", "n": n, "o": offset},
        {"prefer_column_name_to_alias": 0})
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for x in rows:  # maxIf over no row is the epoch, not null
        for k in ("last_off", "last_on"):
            if x[k] is not None and x[k] <= epoch:
                x[k] = None
    return rows


async def _commands(ctx: ApiContext, s: datetime, u: datetime, device: str | None,
                    kind: str | None, status: str | None, command_id: str | None, n: int,
                    offset: int) -> list[CommandView]:
    db = ctx.db
    rows = await ctx.q(
        f"SELECT c.kind AS kind, c.device_id AS device_id, c.ts AS ts, c.payload AS payload, "
        f"a.status AS status, a.detail AS detail, a.latency_ms AS latency_ms, a.actuator AS "
        f"actuator, a.first_ack AS ack_ts FROM (SELECT kind, device_id, ts, payload, event_id, "
        f"toUUID(JSONExtractString(payload, 'command_id')) AS cid FROM {db}.events WHERE "
        f"topic IN {{topics:Array(String)}} AND ts >= {{s:DateTime64(3, 'UTC')}} AND ts < "
        f"{{u:DateTime64(3, 'UTC')}} AND ({{d:String}} = '' OR device_id = {{d:String}}) AND "
        f"({{k:String}} = '' OR kind = {{k:String}}) AND ({{id:String}} = '' OR "
        f"JSONExtractString(payload, 'command_id') = {{id:String}}) LIMIT 1 BY event_id) AS c "
        f"LEFT JOIN (SELECT command_id, argMin(status, ts) AS status, argMin(detail, ts) AS "
        f"detail, argMin(latency_ms, ts) AS latency_ms, argMin(actuator, ts) AS actuator, "
        f"min(ts) AS first_ack FROM {db}.commands_acks WHERE ts >= {{s:DateTime64(3, 'UTC')}} AND "
        f"({{id:String}} = '' OR toString(command_id) = {{id:String}}) GROUP BY command_id) "
        f"AS a ON a.command_id = c.cid WHERE {{st:String}} = '' OR ifNull(a.status, 'pending') "
        f"= {{st:String}} ORDER BY c.ts DESC, c.event_id LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
        {"topics": list(COMMAND_TOPICS), "s": s, "u": u, "d": device or "", "k": kind or "",
         "id": (command_id or "").lower(), "st": status or "", "n": n, "o": offset},
        {"prefer_column_name_to_alias": 0})
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

