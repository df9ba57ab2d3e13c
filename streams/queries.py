"""Every read of the history store, by name: one function per question, in one module.

The API's routes (api/read.py) and the tuner's training (``hashplane tuner``) ask these
and shape the answers; no SQL lives anywhere else.  Each query reads deduplicated rows
(``LIMIT 1 BY event_id``, ``argMax``): the ReplacingMergeTree tables may hold a
redelivered event until their next merge.  Domain rules shared with the agents are taken
from the agents, not restated: a cycle is what the scheduler counts as one
(``agents.scheduler.CYCLE_KIND``/``CYCLE_STATUS``), an alert fires while the last event of
its dedup key is an ``AlertFired`` (``agents.alerts.FIRING``).

``Reader`` is how a query runs: the API passes its pooled, off-loop reader
(``ApiContext.q``), anything else a ``HistoryStore`` through ``store_reader``.  A failure of
the store is ``streams.history.StoreError``; any other exception is a bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from agents.alerts import FIRING
from agents.scheduler import CYCLE_KIND, CYCLE_STATUS, WAKE_KIND
from schemas.registry import TOPICS
from streams.ddl import typed_columns
from streams.history import HistoryStore

Row = dict[str, Any]
#: ``reader(sql, params, settings) -> rows``
Reader = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], Awaitable[list[Row]]]

#: Output columns are named like the stored ones; let argMax(x, ...) see the column x.
SETTINGS = {"prefer_column_name_to_alias": 1, "join_use_nulls": 1}
#: For queries whose aliases shadow a column they aggregate.
ALIASES_FIRST = {"prefer_column_name_to_alias": 0}

#: Every command topic (the acks are answers, not commands).
COMMAND_TOPICS = tuple(t.name for t in TOPICS if t.name.startswith("commands.")
                       and t.name != "commands.acks")
#: Tables and numeric fields a time series can be asked of (from the registry).
NUMERIC: dict[str, list[str]] = {
    t: f for t, f in {
        spec.table: [c.name for c in typed_columns(spec)
                     if c.type.removeprefix("Nullable(").startswith(("Float", "Int", "UInt"))]
        for spec in TOPICS}.items() if f}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_T = "DateTime64(3, 'UTC')"
#: Profit windows of one scope (and one subject, or all) starting in [s, u).
_PROFIT_RANGE = (f"window_start >= {{s:{_T}}} AND window_start < {{u:{_T}}} AND scope = "
                 "{scope:String} AND ({subj:String} = '' OR subject = {subj:String})")


def store_reader(store: HistoryStore) -> Reader:
    """A ``Reader`` over one store connection, off the event loop."""
    async def read(sql: str, params: dict[str, Any] | None = None,
                   settings: dict[str, Any] | None = None) -> list[Row]:
        return await asyncio.to_thread(store.query_dicts, sql, params or {},
                                       {**SETTINGS, **(settings or {})})
    return read


class Queries:
    """The named reads over one history database."""

    def __init__(self, read: Reader, database: str) -> None:
        self.read, self.db = read, database

    # -- fleet ----------------------------------------------------------------------------

    async def asic_states(self, seen_within_s: float) -> list[Row]:
        """ASICs seen within ``seen_within_s``, by their latest state: count, hashrate, draw."""
        return await self.read(
            f"SELECT state, count() AS n, sum(h) AS h, sum(p) AS p FROM ("
            f"SELECT device_id, argMax(state, ts) AS state, argMax(hashrate_ths, ts) AS h,"
            f" argMax(power_w, ts) AS p FROM {self.db}.asic_telemetry "
            f"WHERE ts >= now64(3) - toIntervalSecond({{st:UInt32}}) GROUP BY device_id) "
            f"GROUP BY state", {"st": int(seen_within_s)}, None)

    async def gpu_totals(self, seen_within_s: float) -> Row:
        """GPUs seen within ``seen_within_s``: count, hashrate sum, hottest latest reading."""
        rows = await self.read(
            f"SELECT count() AS n, sum(h) AS h, max(t) AS t FROM (SELECT device_id, "
            f"argMax(hashrate_mhs, ts) AS h, argMax(temp_c, ts) AS t "
            f"FROM {self.db}.gpu_telemetry WHERE ts >= now64(3) - toIntervalSecond("
            f"{{st:UInt32}}) GROUP BY device_id)", {"st": int(seen_within_s)}, None)
        return rows[0] if rows else {}

    async def active_workers(self, seen_within_s: float) -> int:
        """Workers with a share ratio within ``seen_within_s``."""
        rows = await self.read(
            f"SELECT uniqExact(subject) AS n FROM {self.db}.metrics_shares WHERE scope = "
            f"'worker' AND ts >= now64(3) - toIntervalSecond({{st:UInt32}})",
            {"st": int(seen_within_s)}, None)
        return int(rows[0]["n"]) if rows else 0

    async def command_outcomes_last_hour(self) -> dict[str, int]:
        """Commands of the last hour by their first ack's status ('pending': none yet)."""
        rows = await self.read(
            f"SELECT ifNull(a.status, 'pending') AS status, count() AS n FROM ("
            f"SELECT toUUID(JSONExtractString(payload, 'command_id')) AS cid "
            f"FROM {self.db}.events WHERE topic IN {{topics:Array(String)}} AND ts >= "
            f"now64(3) - toIntervalHour(1) LIMIT 1 BY event_id) AS c LEFT JOIN ("
            f"SELECT command_id, argMin(status, ts) AS status FROM {self.db}.commands_acks "
            f"WHERE ts >= now64(3) - toIntervalHour(2) GROUP BY command_id) AS a "
            f"ON a.command_id = c.cid GROUP BY status", {"topics": list(COMMAND_TOPICS)}, None)
        return {x["status"]: int(x["n"]) for x in rows}

    async def asics(self, seen_within_s: int, device: str | None, state: str | None, n: int,
                    offset: int) -> list[Row]:
        """ASICs' latest telemetry with their cycles, last-off and last-on, folded from the
        applied acks by the scheduler's rule; ordered by device id."""
        db = self.db
        rows = await self.read(
            f"SELECT t.device_id AS device_id, t.model AS model, t.firmware AS firmware, "
            f"t.state AS state, "
            f"t.hashrate_ths AS hashrate_ths, t.power_w AS power_w, t.power_target_w AS "
            f"power_target_w, t.temp_chip_c AS temp_chip_c, t.pool_url AS pool_url, "
            f"t.last_seen AS last_seen, ifNull(c.cycles, 0) AS cycles, c.last_off AS last_off, "
            f"c.last_on AS last_on FROM (SELECT device_id, argMax(model, ts) AS model, "
            f"argMax(firmware, ts) AS firmware, "
            f"argMax(state, ts) AS state, argMax(hashrate_ths, ts) AS hashrate_ths, "
            f"argMax(power_w, ts) AS power_w, argMax(power_target_w, ts) AS power_target_w, "
            f"argMax(temp_chip_c, ts) AS temp_chip_c, argMax(pool_url, ts) AS pool_url, "
            f"max(ts) AS last_seen FROM {db}.asic_telemetry WHERE ts >= now64(3) - "
            f"toIntervalSecond({{s:UInt32}}) AND ({{d:String}} = '' OR device_id = {{d:String}})"
            f" GROUP BY device_id) AS t LEFT JOIN (SELECT device_id, countIf(command_kind = "
            f"{{cycle:String}}) AS cycles, maxIf(ts, command_kind = {{cycle:String}}) AS "
            f"last_off, maxIf(ts, command_kind = {{wake:String}}) AS last_on FROM (SELECT * "
            f"FROM {db}.commands_acks WHERE status = {{applied:String}} AND ({{d:String}} = '' "
            f"OR device_id = {{d:String}}) LIMIT 1 BY command_id) GROUP BY device_id) AS c "
            f"ON c.device_id = t.device_id WHERE {{st:String}} = '' OR t.state = {{st:String}} "
            f"ORDER BY device_id LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": seen_within_s, "d": device or "", "st": state or "", "n": n, "o": offset,
             "cycle": CYCLE_KIND, "wake": WAKE_KIND, "applied": CYCLE_STATUS}, ALIASES_FIRST)
        for x in rows:  # maxIf over no row is the epoch, not null
            for k in ("last_off", "last_on"):
                if x[k] is not None and x[k] <= _EPOCH:
                    x[k] = None
        last = {x["device_id"]: x for x in await self.last_commands(
            [x["device_id"] for x in rows])} if rows else {}
        for x in rows:
            c = last.get(x["device_id"], {})
            x["last_command"] = c.get("kind")
            x["last_command_at"] = c.get("ts")
            x["last_ack"] = c.get("status") or ("pending" if c else None)
        return rows

    async def last_commands(self, devices: list[str]) -> list[Row]:
        """Each device's newest ASIC command and its ack status (None: no ack yet)."""
        db = self.db
        return await self.read(
            f"SELECT c.device_id AS device_id, c.kind AS kind, c.at AS ts, a.status AS status "
            f"FROM (SELECT device_id, argMax(kind, ts) AS kind, argMax(command_id, ts) AS cid, "
            f"max(ts) AS at FROM {db}.commands_asic WHERE device_id IN {{d:Array(String)}} "
            f"GROUP BY device_id) AS c LEFT JOIN (SELECT command_id, any(status) AS status "
            f"FROM {db}.commands_acks WHERE device_id IN {{d:Array(String)}} GROUP BY "
            f"command_id) AS a ON a.command_id = c.cid",
            {"d": devices}, {"join_use_nulls": 1})

    async def gpus(self, seen_within_s: int, n: int, offset: int) -> list[Row]:
        """GPUs' latest telemetry, ordered by device id."""
        return await self.read(
            f"SELECT device_id, argMax(rig_id, ts) AS rig_id, argMax(gpu_index, ts) AS gpu_index,"
            f" argMax(card, ts) AS card, argMax(algorithm, ts) AS algorithm, "
            f"argMax(hashrate_mhs, ts) AS hashrate_mhs, argMax(power_w, ts) AS power_w, "
            f"argMax(power_limit_w, ts) AS power_limit_w, argMax(temp_c, ts) AS temp_c, "
            f"argMax(core_clock_mhz, ts) AS core_clock_mhz, argMax(mem_clock_mhz, ts) AS "
            f"mem_clock_mhz, argMax(fan_pct, ts) AS fan_pct, max(ts) AS last_seen "
            f"FROM {self.db}.gpu_telemetry WHERE ts >= now64(3) - toIntervalSecond({{s:UInt32}}) "
            f"GROUP BY device_id ORDER BY device_id LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": seen_within_s, "n": n, "o": offset}, None)

    async def gpu_profiles(self, devices: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """Each GPU's last applied profile: (applied at, power limit, core and memory
        offsets, intensity, profile name, issued by)."""
        rows = await self.read(
            f"SELECT c.device_id AS device_id, argMax(tuple(a.ts, c.power_limit_w, "
            f"c.core_offset_mhz, c.mem_offset_mhz, c.intensity, c.profile, c.issued_by), "
            f"a.ts) AS p FROM (SELECT * FROM {self.db}.commands_gpu WHERE device_id IN "
            f"{{ids:Array(String)}} LIMIT 1 BY event_id) AS c INNER JOIN (SELECT "
            f"command_id, ts FROM {self.db}.commands_acks WHERE status = 'applied' AND "
            f"command_kind = 'ApplyGpuProfile' LIMIT 1 BY command_id) AS a "
            f"ON a.command_id = c.command_id GROUP BY c.device_id", {"ids": list(devices)}, None)
        return {x["device_id"]: x["p"] for x in rows}

    # -- shares and rewards ---------------------------------------------------------------

    async def latest_rewards(self, workers: Sequence[str], window_s: int) -> dict[str, float]:
        """Each worker's reward of its latest ``window_s`` window."""
        rows = await self.read(
            f"SELECT worker, argMax(reward, (window_start, ts)) AS reward "
            f"FROM {self.db}.metrics_rewards WHERE kind = 'RewardComputed' AND worker IN "
            f"{{ids:Array(String)}} AND window_s = {{w:UInt32}} GROUP BY worker",
            {"ids": list(workers), "w": window_s}, None)
        return {x["worker"]: x["reward"] for x in rows}

    async def workers(self, window_s: int, seen_within_s: int, n: int,
                      offset: int) -> list[Row]:
        """Every worker's latest ``window_s`` share window, ordered by worker."""
        key = "(window_start, events, ts)"
        return await self.read(
            f"SELECT subject AS worker, argMax(window_start, {key}) AS "
            f"window_start, argMax(final, {key}) AS final, "
            + ", ".join(f"argMax({c}, {key}) AS {c}" for c in (
                "accepted", "rejected", "stale", "accepted_pct", "rejected_pct", "stale_pct",
                "shares_per_s"))
            + f" FROM {self.db}.metrics_shares WHERE scope = 'worker' AND window_s = "
            f"{{w:UInt32}} AND ts >= now64(3) - toIntervalSecond({{s:UInt32}}) GROUP BY subject "
            f"ORDER BY subject LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"w": window_s, "s": max(seen_within_s, 2 * window_s), "n": n, "o": offset}, None)

    async def window_rewards(self, workers: Sequence[str],
                             window_s: int) -> dict[tuple[str, Any], float]:
        """(worker, window start) -> reward, latest revision."""
        rows = await self.read(
            f"SELECT worker, window_start, argMax(reward, ts) AS reward FROM "
            f"{self.db}.metrics_rewards WHERE kind = 'RewardComputed' AND window_s = "
            f"{{w:UInt32}} AND worker IN {{ids:Array(String)}} GROUP BY worker, window_start",
            {"w": window_s, "ids": list(workers)}, None)
        return {(x["worker"], x["window_start"]): x["reward"] for x in rows}

    async def worker_windows(self, worker: str, window_s: int, since: datetime | None,
                             until: datetime | None, n: int) -> list[Row]:
        """A worker's share windows (latest revision each), newest first."""
        where = ["scope = 'worker'", "subject = {w:String}", "window_s = {ws:UInt32}"]
        params: dict[str, Any] = {"w": worker, "ws": window_s, "n": n}
        if since is not None:
            where.append(f"window_start >= {{since:{_T}}}")
            params["since"] = since
        if until is not None:
            where.append(f"window_start < {{until:{_T}}}")
            params["until"] = until
        cols = ", ".join(f"argMax({c}, (events, ts)) AS {c}" for c in (
            "accepted", "rejected", "stale", "accepted_pct", "rejected_pct", "stale_pct",
            "shares_per_s", "difficulty_accepted", "difficulty_rejected", "events"))
        return await self.read(
            f"SELECT window_start, any(window_end) AS window_end, max(final) AS final, "
            f"{cols} FROM {self.db}.metrics_shares WHERE {' AND '.join(where)} "
            f"GROUP BY window_start ORDER BY window_start DESC LIMIT {{n:UInt32}}", params, None)

    async def rewards(self, since: datetime, until: datetime, window_s: int,
                      worker: str | None, n: int, offset: int) -> list[Row]:
        """Seed-000 rewards per worker and window (latest revision), newest window first."""
        return await self.read(
            "SELECT worker, window_s, window_start, "
            + ", ".join(f"argMax({c}, ts) AS {c}" for c in (
                "reward", "accepted_pct", "rejected_pct", "temp_c", "temp_max_c",
                "worker_accepted", "cluster_accepted"))
            + f" FROM {self.db}.metrics_rewards WHERE kind = 'RewardComputed' AND window_start "
            f">= {{s:{_T}}} AND window_start < {{u:{_T}}} AND window_s = {{w:UInt32}} AND "
            f"({{wk:String}} = '' OR worker = {{wk:String}}) GROUP BY worker, window_s, "
            f"window_start ORDER BY window_start DESC, worker LIMIT {{n:UInt32}} "
            f"OFFSET {{o:UInt32}}",
            {"s": since, "u": until, "w": window_s, "wk": worker or "", "n": n, "o": offset},
            None)

    # -- energy ---------------------------------------------------------------------------

    async def energy_latest(self, site: str) -> Row | None:
        """The site's latest headroom metric."""
        rows = await self.read(
            f"SELECT * FROM {self.db}.metrics_energy WHERE site = {{site:String}} "
            f"ORDER BY ts DESC, event_id DESC LIMIT 1", {"site": site}, None)
        return rows[0] if rows else None

    async def energy_buckets(self, site: str, since: datetime, until: datetime,
                             bucket_s: int) -> list[Row]:
        """The site's headroom per bucket: means, the lowest frequency, the last band and
        cap."""
        return await self.read(
            "SELECT toStartOfInterval(ts, toIntervalSecond({b:UInt32})) AS ts, "
            + ", ".join(f"avg({c}) AS {c}" for c in (
                "supply_kw", "margin_kw", "available_kw", "load_kw", "asic_load_kw",
                "gpu_load_kw", "headroom_kw", "target_load_kw"))
            + f", min(frequency_hz) AS frequency_hz, argMax(band, e.ts) AS band, "
            f"argMax(cap_kw, e.ts) AS cap_kw, argMax(price_per_mwh, e.ts) AS price_per_mwh, "
            f"argMax(hashprice_per_th_day, e.ts) AS hashprice_per_th_day, "
            f"argMax(max_j_per_th, e.ts) AS max_j_per_th FROM (SELECT * FROM "
            f"{self.db}.metrics_energy WHERE ts >= {{s:{_T}}} AND ts < {{u:{_T}}} AND "
            f"site = {{site:String}} LIMIT 1 BY event_id) AS e GROUP BY ts ORDER BY ts LIMIT 10000",
            {"b": bucket_s, "s": since, "u": until, "site": site}, ALIASES_FIRST)

    # -- money ----------------------------------------------------------------------------

    async def profit(self, scope: str, subject: str | None, since: datetime, until: datetime,
                     n: int, offset: int) -> list[Row]:
        """Profit windows of ``scope`` (one subject or all), newest first."""
        return await self.read(
            f"SELECT * FROM (SELECT * FROM {self.db}.metrics_profit WHERE {_PROFIT_RANGE} "
            f"ORDER BY ts DESC LIMIT 1 BY event_id) ORDER BY window_start DESC, subject "
            f"LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": since, "u": until, "scope": scope, "subj": subject or "", "n": n,
             "o": offset}, None)

    async def profit_totals(self, scope: str, subject: str | None, since: datetime,
                            until: datetime) -> Row:
        """Revenue, power cost and profit summed over the windows of a range."""
        rows = await self.read(
            f"SELECT sum(revenue) AS revenue, sum(power_cost) AS power_cost, sum(profit) AS "
            f"profit FROM (SELECT * FROM {self.db}.metrics_profit WHERE {_PROFIT_RANGE} "
            f"LIMIT 1 BY event_id)",
            {"s": since, "u": until, "scope": scope, "subj": subject or ""}, None)
        return rows[0]

    async def prices(self, since: datetime, until: datetime) -> list[Row]:
        """Power price intervals overlapping [since, until), each as last published."""
        return await self.read(
            f"SELECT market, interval_start AS start, argMax(interval_end, ts) AS end, "
            f"argMax(price_per_mwh, ts) AS price_per_mwh, argMax(currency, ts) AS currency "
            f"FROM {self.db}.prices WHERE kind = 'PowerPriceObserved' AND interval_start < "
            f"{{u:{_T}}} AND interval_end > {{s:{_T}}} GROUP BY market, interval_start "
            f"HAVING end > {{s:{_T}}} ORDER BY start, market LIMIT 5000",
            {"s": since, "u": until}, ALIASES_FIRST)

    async def hashprice(self) -> float | None:
        """The newest observed hashprice."""
        rows = await self.read(
            f"SELECT argMax(hashprice_per_th_day, ts) AS h, count() AS n FROM {self.db}.prices "
            f"WHERE kind = 'HashpriceObserved'", None, None)
        return float(rows[0]["h"]) if rows and rows[0]["n"] else None

    async def uplink(self, local_window_s: int) -> Row:
        """The uplink's newest probe, and what the local pool accepted in the last
        ``local_window_s`` (shares it accounted, source ``pool:local``)."""
        db = self.db
        rows = await self.read(
            f"SELECT (SELECT count() FROM {db}.uplink_status) AS probes, (SELECT argMax(up, ts) "
            f"FROM {db}.uplink_status) AS up, (SELECT argMax(target, ts) FROM "
            f"{db}.uplink_status) AS target, (SELECT argMax(latency_ms, ts) FROM "
            f"{db}.uplink_status) AS latency_ms, (SELECT argMax(detail, ts) FROM "
            f"{db}.uplink_status) AS detail, (SELECT max(ts) FROM {db}.uplink_status) AS "
            f"last_probe, (SELECT sum(accepted) FROM {db}.shares WHERE source = 'pool:local' AND "
            f"ts >= now64(3) - toIntervalSecond({{w:UInt32}})) AS local_accepted, (SELECT "
            f"uniqExact(worker) FROM {db}.shares WHERE source = 'pool:local' AND ts >= now64(3) "
            f"- toIntervalSecond({{w:UInt32}})) AS local_workers",
            {"w": local_window_s}, ALIASES_FIRST)
        return rows[0]

    # -- commands and alerts --------------------------------------------------------------

    async def commands(self, since: datetime, until: datetime, device: str | None,
                       kind: str | None, status: str | None, command_id: str | None, n: int,
                       offset: int) -> list[Row]:
        """Commands of every command topic with their first ack, newest first."""
        db = self.db
        return await self.read(
            f"SELECT c.kind AS kind, c.device_id AS device_id, c.ts AS ts, c.payload AS "
            f"payload, a.status AS status, a.detail AS detail, a.latency_ms AS latency_ms, "
            f"a.actuator AS actuator, a.first_ack AS ack_ts FROM (SELECT kind, device_id, ts, "
            f"payload, event_id, toUUID(JSONExtractString(payload, 'command_id')) AS cid FROM "
            f"{db}.events WHERE topic IN {{topics:Array(String)}} AND ts >= {{s:{_T}}} AND "
            f"ts < {{u:{_T}}} AND ({{d:String}} = '' OR device_id = {{d:String}}) AND "
            f"({{k:String}} = '' OR kind = {{k:String}}) AND ({{id:String}} = '' OR "
            f"JSONExtractString(payload, 'command_id') = {{id:String}}) LIMIT 1 BY event_id) "
            f"AS c LEFT JOIN (SELECT command_id, argMin(status, ts) AS status, argMin(detail, "
            f"ts) AS detail, argMin(latency_ms, ts) AS latency_ms, argMin(actuator, ts) AS "
            f"actuator, min(ts) AS first_ack FROM {db}.commands_acks WHERE ts >= {{s:{_T}}} "
            f"AND ({{id:String}} = '' OR toString(command_id) = {{id:String}}) GROUP BY "
            f"command_id) AS a ON a.command_id = c.cid WHERE {{st:String}} = '' OR "
            f"ifNull(a.status, 'pending') = {{st:String}} ORDER BY c.ts DESC, c.event_id "
            f"LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"topics": list(COMMAND_TOPICS), "s": since, "u": until, "d": device or "",
             "k": kind or "", "id": (command_id or "").lower(), "st": status or "", "n": n,
             "o": offset}, ALIASES_FIRST)

    async def firing_alerts(self) -> list[Row]:
        """Alerts firing now, over the whole history: the dedup keys whose last event is an
        ``AlertFired``, newest first (the alerts agent's own rule)."""
        rows = await self.read(
            f"SELECT dedup_key, argMax(tuple(kind, ts, rule, severity, device_id, message, "
            f"value, threshold), ts) AS a FROM {self.db}.alerts GROUP BY dedup_key "
            f"HAVING a.1 = {{firing:String}} ORDER BY a.2 DESC", {"firing": FIRING}, None)
        names = ("kind", "ts", "rule", "severity", "device_id", "message", "value", "threshold")
        return [{"dedup_key": x["dedup_key"], **dict(zip(names, x["a"], strict=True))}
                for x in rows]

    async def alert_history(self, since: datetime, until: datetime, severity: str | None,
                            n: int, offset: int) -> list[Row]:
        """Alerts fired and resolved in [since, until), newest first."""
        return await self.read(
            f"SELECT kind, ts, rule, severity, dedup_key, device_id, message, value, threshold "
            f"FROM {self.db}.alerts WHERE ts >= {{s:{_T}}} AND ts < {{u:{_T}}} AND "
            f"({{sev:String}} = '' OR severity = {{sev:String}}) ORDER BY ts DESC, event_id "
            f"LIMIT 1 BY event_id LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": since, "u": until, "sev": severity or "", "n": n, "o": offset}, None)

    # -- compute --------------------------------------------------------------------------

    async def jobs(self, since: datetime, until: datetime, state: str | None, n: int,
                   offset: int) -> list[Row]:
        """Compute jobs' latest state, most recently changed first."""
        return await self.read(
            f"SELECT * FROM (SELECT job_id, argMax(workload, ts) AS workload, "
            f"argMax(state, ts) AS state, argMax(detail, ts) AS detail, "
            f"argMax(duration_s, ts) AS duration_s, argMax(credits, ts) AS credits, "
            f"argMax(proof_sha256, ts) AS proof_sha256, max(ts) AS updated "
            f"FROM {self.db}.compute_jobs WHERE ts >= {{s:{_T}}} AND ts < {{u:{_T}}} GROUP BY "
            f"job_id) WHERE {{st:String}} = '' OR state = {{st:String}} ORDER BY updated DESC, "
            f"job_id LIMIT {{n:UInt32}} OFFSET {{o:UInt32}}",
            {"s": since, "u": until, "st": state or "", "n": n, "o": offset}, None)

    async def scores(self, scheme: str | None) -> list[Row]:
        """Latest seed-001 GPU and seed-004 endpoint score of every subject."""
        return await self.read(
            f"SELECT scheme, subject, argMax(score, ts) AS score, argMax(components, ts) AS "
            f"components, max(ts) AS updated FROM {self.db}.metrics_rewards WHERE kind = "
            f"'ComputeScoreComputed' AND ({{sc:String}} = '' OR scheme = {{sc:String}}) "
            f"GROUP BY scheme, subject ORDER BY scheme, score DESC",
            {"sc": scheme or ""}, ALIASES_FIRST)

    async def tuner_trials(self, since: datetime, until: datetime, device: str | None,
                           n: int, offset: int) -> list[Row]:
        """The GPU tuner's trials in [since, until), newest first."""
        return await self.read(
            f"SELECT ts, device_id, card, trial, optimizer, power_limit_w, core_offset_mhz, "
            f"mem_offset_mhz, intensity, hashrate_mhs, power_w, temp_max_c, reward, objective, "
            f"efficiency_mh_per_j, feasible, outcome, ifNull(objective_kind, 'j') AS "
            f"objective_kind, price_per_mwh, profit_per_day FROM (SELECT * FROM "
            f"{self.db}.metrics_rewards WHERE kind = 'TuningTrialEvaluated' AND ts >= "
            f"{{s:{_T}}} AND ts < {{u:{_T}}} AND ({{d:String}} = '' OR device_id = {{d:String}})"
            f" LIMIT 1 BY event_id) ORDER BY ts DESC, device_id LIMIT {{n:UInt32}} "
            f"OFFSET {{o:UInt32}}",
            {"s": since, "u": until, "d": device or "", "n": n, "o": offset}, None)

    # -- time series ----------------------------------------------------------------------

    async def series(self, table: str, field: str, agg: str, by: str, bucket_s: int,
                     devices: Sequence[str], since: datetime, until: datetime) -> list[Row]:
        """A numeric field aggregated per bucket: per device, or over the fleet of each
        device's bucket mean (``count``: the sum of each device's count).  ``table`` and
        ``field`` must be in ``NUMERIC`` (they are names, not parameters)."""
        if field not in NUMERIC.get(table, ()):
            raise ValueError(f"{table}.{field} is not a numeric history field")
        if agg not in ("avg", "min", "max", "sum", "count"):
            raise ValueError(f"unknown aggregate {agg!r}")
        inner = (f"SELECT toStartOfInterval(ts, toIntervalSecond({{b:UInt32}})) AS bucket, "
                 f"device_id, `{field}` AS v FROM {self.db}.{table} WHERE ts >= {{s:{_T}}} AND "
                 f"ts < {{u:{_T}}} AND (empty({{d:Array(String)}}) OR has({{d:Array(String)}}, "
                 f"device_id)) LIMIT 1 BY event_id")
        if by == "device":
            sql = (f"SELECT device_id AS key, bucket, {agg}(v) AS value FROM ({inner}) "
                   f"GROUP BY key, bucket ORDER BY key, bucket LIMIT 200000")
        else:
            per, over = ("count", "sum") if agg == "count" else ("avg", agg)
            sql = (f"SELECT 'fleet' AS key, bucket, {over}(dv) AS value FROM (SELECT bucket, "
                   f"device_id, {per}(v) AS dv FROM ({inner}) GROUP BY bucket, device_id) "
                   f"GROUP BY bucket ORDER BY bucket LIMIT 200000")
        return await self.read(sql, {"b": bucket_s, "s": since, "u": until,
                                     "d": list(devices)}, ALIASES_FIRST)

    # -- the tuner's training -------------------------------------------------------------

    async def tuning_trials(self, since: datetime, until: datetime) -> list[Row]:
        """Tuning trials of [since, until) as training data (deduplicated, oldest first)."""
        return await self.read(*_tuning_trials(self.db, since, until), None)


def _tuning_trials(db: str, since: datetime, until: datetime) -> tuple[str, dict[str, Any]]:
    return (f"SELECT card, power_limit_w, core_offset_mhz, mem_offset_mhz, intensity, "
            f"objective, temp_max_c, accepted, rejected, stale, hashrate_mhs, power_w FROM ("
            f"SELECT * FROM {db}.metrics_rewards WHERE kind = 'TuningTrialEvaluated' "
            f"AND ts >= {{s:{_T}}} AND ts < {{u:{_T}}} LIMIT 1 BY event_id) ORDER BY ts, "
            f"event_id", {"s": since, "u": until})


def tuning_trials(store: HistoryStore, since: datetime, until: datetime) -> list[Row]:
    """``Queries.tuning_trials`` from synchronous code (the CLI, the tests)."""
    return store.query_dicts(*_tuning_trials(store.database, since, until), SETTINGS)
