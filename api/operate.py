"""Operator routes (scope ``operator``): manual commands and read-only SQL.

A manual command is an ordinary command on the contract topic, issued by
``operator:<key name>``: the same actuator carries it out and acks it, and the agents see its
ack exactly as they see their own (an applied sleep is one cycle).  The route waits up to
``wait_s`` for the ack and returns it; otherwise ``GET /v1/commands/{id}`` has it later.

SQL: one statement, parsed by the engine and checked (``api/sqlguard.py``: read-shaped, no
INTO OUTFILE, no SETTINGS, no table function that reads files or the network, the history
database and a few system tables only), then run on the endpoint's own connection (never the
sink's) with ``readonly=1``, at most ``sql_max_rows`` rows, ``sql_max_bytes``,
``sql_max_memory`` and ``sql_max_s``, and at most ``sql_concurrency`` queries at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from api.auth import KeyRing, Principal, require
from api.context import ApiContext
from api.models import (
    Ack,
    AsicPool,
    AsicPowerTarget,
    Issued,
    Reason,
    SiteCap,
    SqlQuery,
    SqlResult,
)
from api.sqlguard import RefusedSql, check_tree, parse_tree
from schemas.commands import (
    CapSiteLoad,
    SetAsicPowerTarget,
    SleepAsic,
    SwitchAsicPool,
    WakeAsic,
)
from schemas.envelope import Command
from schemas.registry import topic_of
from streams.history import HistoryStore

Device = Annotated[str, Path(min_length=1, max_length=256)]
WaitS = Annotated[float, Query(ge=0, le=60, description="Wait this long for the ack, s")]
_FIRST_WORD = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*([A-Za-z]+)", re.S)
READ_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})


def check_sql(sql: str) -> str:
    """The statement to run, or 422: one read statement, no trailing second statement."""
    body = sql.strip().rstrip(";").strip()
    m = _FIRST_WORD.match(body)
    if m is None or m.group(1).upper() not in READ_STATEMENTS:
        raise HTTPException(422, "only one SELECT, WITH, SHOW, DESCRIBE or EXPLAIN statement")
    if ";" in _strip_literals(body):
        raise HTTPException(422, "one statement per request")
    return body


def _strip_literals(sql: str) -> str:
    return re.sub(r"'(?:[^'\\]|\\.)*'|`[^`]*`|\"[^\"]*\"", "''", sql)


def router(ctx: ApiContext, ring: KeyRing) -> APIRouter:
    r = APIRouter(prefix="/v1")
    operator = Depends(require(ring, "operator"))
    s = ctx.settings

    async def issue(cmd: Command, wait_s: float) -> Issued:
        if ctx.publisher is None:
            raise HTTPException(503, "the API cannot reach Kafka: no command was issued")
        fut = ctx.live.expect_ack(str(cmd.command_id)) if ctx.live is not None else None
        try:
            await ctx.publisher.publish(cmd)
        except Exception as exc:
            if ctx.live is not None:
                ctx.live.forget(str(cmd.command_id))
            raise HTTPException(503, f"publishing the command failed: {exc}") from exc
        ack = None
        if fut is not None and wait_s > 0:
            try:
                a = await asyncio.wait_for(asyncio.shield(fut), wait_s)
                ack = Ack(status=a.status, detail=a.detail, latency_ms=a.latency_ms,
                          actuator=a.actuator, ts=a.ts)
            except TimeoutError:
                pass
        if ctx.live is not None and ack is None:
            ctx.live.forget(str(cmd.command_id))
        return Issued(command_id=cmd.command_id, kind=cmd.kind, topic=topic_of(type(cmd)).name,
                      device_id=cmd.device_id, issued_by=cmd.issued_by,
                      expires_at=cmd.expires_at, ack=ack)

    def envelope(who: Principal, device: str, reason: str, what: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {"command_id": uuid4(), "event_id": uuid4(), "site": s.site, "device_id": device,
                "ts": now, "source": "api", "issued_at": now,
                "expires_at": now + timedelta(seconds=s.command_ttl_s),
                "issued_by": f"operator:{who.name}", "reason": reason or f"operator: {what}"}

    @r.post("/asics/{device_id}/sleep", response_model=Issued, status_code=202,
            tags=["operate"])
    async def sleep(device_id: Device, body: Reason | None = None, wait_s: WaitS = 5.0,
                    who: Principal = operator) -> Issued:
        """Put an ASIC to sleep (the scheduler may wake it when the budget allows)."""
        return await issue(SleepAsic(**envelope(who, device_id, body.reason if body else "",
                                                "sleep")), wait_s)

    @r.post("/asics/{device_id}/wake", response_model=Issued, status_code=202,
            tags=["operate"])
    async def wake(device_id: Device, body: Reason | None = None, wait_s: WaitS = 5.0,
                   who: Principal = operator) -> Issued:
        """Wake an ASIC (the scheduler may sleep it again if the site is over budget)."""
        return await issue(WakeAsic(**envelope(who, device_id, body.reason if body else "",
                                               "wake")), wait_s)

    @r.post("/asics/{device_id}/pool", response_model=Issued, status_code=202,
            tags=["operate"])
    async def pool(device_id: Device, body: AsicPool, wait_s: WaitS = 5.0,
                   who: Principal = operator) -> Issued:
        """Point an ASIC at another Stratum pool."""
        return await issue(SwitchAsicPool(
            **envelope(who, device_id, body.reason, f"pool {body.pool_url}"),
            pool_url=body.pool_url, worker=body.worker, password=body.password), wait_s)

    @r.post("/asics/{device_id}/power-target", response_model=Issued, status_code=202,
            tags=["operate"])
    async def power_target(device_id: Device, body: AsicPowerTarget, wait_s: WaitS = 5.0,
                           who: Principal = operator) -> Issued:
        """Set an ASIC's power target (the actuator clamps to the configured safety band)."""
        return await issue(SetAsicPowerTarget(
            **envelope(who, device_id, body.reason, f"power target {body.power_target_w:g} W"),
            power_target_w=body.power_target_w), wait_s)

    @r.post("/site/cap", response_model=Issued, status_code=202, tags=["operate"])
    async def site_cap(body: SiteCap, wait_s: WaitS = 5.0, who: Principal = operator) -> Issued:
        """Curtail the site to ``limit_kw`` (null lifts the cap): the energy agent acks and
        lowers the target load; the scheduler sleeps ASICs with its own commands."""
        what = "lift load cap" if body.limit_kw is None else f"cap load at {body.limit_kw:g} kW"
        return await issue(CapSiteLoad(**envelope(who, s.site, body.reason, what),
                                       limit_kw=body.limit_kw, duration_s=body.duration_s),
                           wait_s)

    running = asyncio.Semaphore(s.sql_concurrency)

    @r.post("/sql", response_model=SqlResult, tags=["operate"])
    async def sql(body: SqlQuery) -> SqlResult:
        """A read-only query over the history (``{db}`` stands for the history database)."""
        statement = check_sql(body.sql).replace("{db}", ctx.db)
        limit = min(body.max_rows or s.sql_max_rows, s.sql_max_rows)
        settings = {"readonly": 1, "max_result_rows": limit + 1, "result_overflow_mode": "break",
                    "max_result_bytes": s.sql_max_bytes, "max_memory_usage": s.sql_max_memory,
                    "max_execution_time": s.sql_max_s}
        if ctx.sql_reader is None:
            ctx.sql_reader = ctx.store.sibling()
        t0 = time.perf_counter()
        if running.locked():
            raise HTTPException(429, f"{s.sql_concurrency} queries are running; try again")
        async with running:
            try:
                result = await asyncio.wait_for(asyncio.to_thread(
                    _run, ctx.sql_reader, ctx.db, statement, settings), s.sql_max_s + 5.0)
            except TimeoutError as exc:
                raise HTTPException(504, f"query ran over {s.sql_max_s:g} s") from exc
            except RefusedSql as exc:
                raise HTTPException(422, str(exc)) from exc
            except Exception as exc:  # a bad query is the caller's error, with its reason
                raise HTTPException(400, f"query failed: {_first_line(exc)}") from exc
        columns, types, rows = result
        return SqlResult(columns=columns, types=types, rows=rows[:limit],
                         row_count=min(len(rows), limit), truncated=len(rows) > limit,
                         elapsed_ms=(time.perf_counter() - t0) * 1000.0)

    return r


def _run(store: HistoryStore, database: str, statement: str, settings: dict[str, Any],
         ) -> tuple[list[str], list[str], list[list[Any]]]:
    """Parse (EXPLAIN AST runs nothing), check the tree, then run on the SQL connection."""
    _, _, tree = store.query_table(f"EXPLAIN AST {statement}")  # parses, runs nothing
    check_tree(parse_tree([str(r[0]) for r in tree]), database)
    columns, types, rows = store.query_table(statement, settings)
    return columns, types, [[_json(v) for v in row] for row in rows]


def _json(v: Any) -> Any:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:500]
