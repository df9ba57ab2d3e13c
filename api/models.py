"""API request and response models; those mirroring an event derive from the registry's
schemas (schemas are the single source of truth, STYLE.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
)

from schemas.commands import PoolPassword, PoolUrl, PoolWorker
from schemas.metrics import EnergyHeadroomComputed, ProfitComputed, ShareRatioComputed

_WINDOW_FIELDS = (
    "window_start", "window_end", "final", "accepted", "rejected", "stale", "accepted_pct",
    "rejected_pct", "stale_pct", "shares_per_s", "difficulty_accepted", "difficulty_rejected",
    "events",
)
_ENERGY_FIELDS = (
    "ts", "supply_kw", "margin_kw", "available_kw", "load_kw", "asic_load_kw", "gpu_load_kw",
    "headroom_kw", "frequency_hz", "band", "target_load_kw", "cap_kw", "price_per_mwh",
    "hashprice_per_th_day", "max_j_per_th",
)
_PROFIT_FIELDS = (
    "scope", "subject", "window_s", "window_start", "final", "currency", "seconds",
    "energy_kwh", "hashrate_ths", "revenue", "power_cost", "profit", "j_per_th",
    "breakeven_per_mwh",
)


def _derive(name: str, source: type[BaseModel], fields: tuple[str, ...], doc: str) -> Any:
    spec = {f: (source.model_fields[f].annotation, source.model_fields[f]) for f in fields}
    model = create_model(name, __config__=ConfigDict(frozen=True), __doc__=doc, **spec)  # type: ignore[call-overload]
    return model


ShareWindow = _derive("ShareWindow", ShareRatioComputed, _WINDOW_FIELDS,
                      "Share ratios of one window (latest revision).")
EnergyPoint = _derive("EnergyPoint", EnergyHeadroomComputed, _ENERGY_FIELDS,
                      "A site's supply, load, headroom and target at one instant.")
ProfitWindow = _derive("ProfitWindow", ProfitComputed, _PROFIT_FIELDS,
                       "Revenue, power cost and profit of a unit or the site over a window.")


class Page(BaseModel):
    """Pagination of a list: pass ``next_offset`` as ``offset`` for the next page."""

    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last")


class WorkerShares(BaseModel):
    """A worker's latest share ratios and their history, newest first."""

    worker: str
    window_s: int
    latest: ShareWindow | None = Field(description="Most recent window")  # type: ignore[valid-type]
    history: list[ShareWindow] = Field(description="Windows, newest first")  # type: ignore[valid-type]


class WorkerSummary(BaseModel):
    """A worker's latest window and its reward in that window."""

    worker: str
    window_s: int
    window_start: datetime
    final: bool
    accepted: int
    rejected: int
    stale: int
    accepted_pct: float
    rejected_pct: float
    stale_pct: float
    shares_per_s: float
    reward: float | None = Field(default=None, description="Seed-000 reward, 0-100")


class Workers(BaseModel):
    """Workers' latest share ratios."""

    page: Page
    workers: list[WorkerSummary]


class Asic(BaseModel):
    """An ASIC: its last telemetry and its event-sourced cycle count and last-off time."""

    device_id: str
    model: str
    firmware: str = Field(default="", description="Firmware dialect it is read with")
    state: str = Field(description="running, sleeping, waking, offline, ...")
    hashrate_ths: float
    power_w: float
    power_target_w: float | None
    temp_chip_c: float | None
    pool_url: str
    last_seen: datetime
    cycles: int = Field(description="Applied sleeps (each is one power cycle)")
    last_off: datetime | None = Field(description="Last applied sleep")
    last_on: datetime | None = Field(description="Last applied wake")
    last_command: str | None = Field(default=None, description="Newest command to it")
    last_command_at: datetime | None = None
    last_ack: str | None = Field(default=None, description="That command's ack: applied, "
                                 "rejected, failed, expired, or pending")


class Asics(BaseModel):
    """ASICs, by device id."""

    page: Page
    asics: list[Asic]


class GpuProfile(BaseModel):
    """The last OC profile applied to a GPU (from commands.gpu and its applied ack)."""

    applied_at: datetime
    power_limit_w: float | None
    core_offset_mhz: int | None
    mem_offset_mhz: int | None
    intensity: int | None
    profile: str
    issued_by: str


class Gpu(BaseModel):
    """A GPU: last telemetry, current OC profile and latest reward."""

    device_id: str
    rig_id: str
    gpu_index: int
    card: str
    algorithm: str
    hashrate_mhs: float
    power_w: float
    power_limit_w: float
    temp_c: float
    core_clock_mhz: float
    mem_clock_mhz: float
    fan_pct: float
    last_seen: datetime
    profile: GpuProfile | None
    reward: float | None = Field(description="Latest 1-window seed-000 reward of its worker")


class Gpus(BaseModel):
    """GPUs, by device id."""

    page: Page
    gpus: list[Gpu]


class Reward(BaseModel):
    """A worker's seed-000 reward in one window (latest revision)."""

    worker: str
    window_s: int
    window_start: datetime
    reward: float
    accepted_pct: float
    rejected_pct: float
    temp_c: float | None
    temp_max_c: float
    worker_accepted: int
    cluster_accepted: int


class Rewards(BaseModel):
    """Rewards, newest window first."""

    page: Page
    rewards: list[Reward]


class Energy(BaseModel):
    """The site's latest headroom and its bucketed history."""

    latest: EnergyPoint | None  # type: ignore[valid-type]
    bucket_s: int
    history: list[EnergyPoint] = Field(  # type: ignore[valid-type]
        description="Bucket means (frequency: bucket minimum), oldest first")


class Ack(BaseModel):
    """The outcome of a command."""

    status: str = Field(description="applied, rejected, failed or expired")
    detail: str
    latency_ms: float
    actuator: str
    ts: datetime


class CommandView(BaseModel):
    """A command with its ack (null while none has arrived)."""

    command_id: UUID
    kind: str
    device_id: str
    ts: datetime
    issued_by: str
    reason: str
    params: dict[str, Any] = Field(description="The command's own fields")
    ack: Ack | None


class Commands(BaseModel):
    """Commands, newest first."""

    page: Page
    commands: list[CommandView]


class Alert(BaseModel):
    """An alert event (fired or resolved)."""

    kind: str = Field(description="AlertFired or AlertResolved")
    ts: datetime
    rule: str
    severity: str
    dedup_key: str
    device_id: str
    message: str
    value: float | None
    threshold: float | None


class Alerts(BaseModel):
    """Alerts firing now, and the alert history newest first."""

    firing: list[Alert]
    page: Page
    history: list[Alert]


class Job(BaseModel):
    """A compute job's latest state."""

    job_id: str
    workload: str
    state: str
    detail: str
    duration_s: float | None
    credits: float | None
    proof_sha256: str | None
    updated: datetime


class Jobs(BaseModel):
    """Compute jobs, latest change first."""

    page: Page
    jobs: list[Job]


class Score(BaseModel):
    """A compute score (seed-001 GPU, seed-004 endpoint)."""

    scheme: str
    subject: str
    score: float
    components: dict[str, float]
    ts: datetime


class Scores(BaseModel):
    """Latest score of every subject."""

    scores: list[Score]


class TuningTrial(BaseModel):
    """One GPU tuning trial (TuningTrialEvaluated)."""

    ts: datetime
    device_id: str
    card: str
    trial: int
    optimizer: str
    power_limit_w: float
    core_offset_mhz: int
    mem_offset_mhz: int
    intensity: int
    hashrate_mhs: float
    power_w: float
    temp_max_c: float
    reward: float
    objective: float
    efficiency_mh_per_j: float
    feasible: bool
    outcome: str
    objective_kind: str = Field(description="What the tuner maximised: j or profit")
    price_per_mwh: float | None = Field(description="Power price the trial was scored at")
    profit_per_day: float | None = Field(
        description="Revenue minus power cost per day at that price (None: no price known)")


class TuningTrials(BaseModel):
    """Tuning trials, newest first."""

    page: Page
    trials: list[TuningTrial]


class FleetSummary(BaseModel):
    """What an operator looks at first."""

    site: str
    asics: dict[str, int] = Field(description="ASICs by last reported state")
    hashrate_ths: float
    asic_power_kw: float
    gpus: int
    gpu_hashrate_mhs: float
    gpu_temp_max_c: float | None
    workers: int
    energy: EnergyPoint | None  # type: ignore[valid-type]
    alerts_firing: dict[str, int] = Field(description="By severity")
    commands_last_hour: dict[str, int] = Field(description="By ack status ('pending': none)")


class SeriesPoint(BaseModel):
    """One bucket of a history series."""

    bucket: datetime
    value: float | None


class Series(BaseModel):
    """A bucketed series (one per device, or the fleet)."""

    key: str = Field(description="Device id, or 'fleet'")
    points: list[SeriesPoint]


class History(BaseModel):
    """A field aggregated per bucket over a time range."""

    table: str
    field: str
    agg: str
    by: str
    bucket_s: int
    since: datetime
    until: datetime
    series: list[Series]


class RequestBody(BaseModel):
    """Base of request bodies: strict types (``false`` is not 0, ``"5"`` is not 5), no NaN or
    infinity, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class AsicPool(RequestBody):
    """Body of a pool switch."""

    pool_url: PoolUrl = Field(description="stratum+tcp://host:port (or stratum+ssl, stratum2+tcp)")
    worker: PoolWorker = ""
    password: PoolPassword = "x"
    reason: str = Field(default="", max_length=512)


class AsicPowerTarget(RequestBody):
    """Body of a power-target change."""

    power_target_w: float = Field(gt=0, le=100_000)
    reason: str = Field(default="", max_length=512)


class Reason(RequestBody):
    """Optional body of sleep and wake."""

    reason: str = Field(default="", max_length=512)


class SiteCap(RequestBody):
    """Body of a site curtailment: cap the load at ``limit_kw`` (null lifts the cap)."""

    limit_kw: float | None = Field(ge=0, le=1_000_000, description="Load cap, kW; null lifts it")
    duration_s: float | None = Field(default=None, gt=0, le=7 * 86_400,
                                     description="How long; null: until lifted")
    reason: str = Field(default="", max_length=512)


class Issued(BaseModel):
    """A command the API published, and its ack if it came within ``wait_s``."""

    command_id: UUID
    kind: str
    topic: str
    device_id: str
    issued_by: str
    expires_at: AwareDatetime
    ack: Ack | None = Field(description="Null: no ack within wait_s; see GET /v1/commands/{id}")


class SqlQuery(RequestBody):
    """A read-only query over the history."""

    sql: str = Field(min_length=1, max_length=20_000, description="One SELECT/WITH/SHOW/"
                     "DESCRIBE/EXPLAIN statement; {db} is the history database")
    max_rows: int | None = Field(default=None, ge=1, description="At most the server's limit")


class SqlResult(BaseModel):
    """Rows of a SQL query (values as JSON: times ISO-8601 UTC)."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool = Field(description="More rows matched than were returned")
    elapsed_ms: float


class Health(BaseModel):
    """Liveness of the API and its dependencies."""

    status: str = Field(description="ok or degraded")
    history_store: bool = Field(description="ClickHouse answers and the history can be written")
    live_feed: bool = Field(default=False, description="Following Kafka")
    version: str


class RestoredState(BaseModel):
    """The site agents' durable state rebuilt from the history (``streams.replay.restore``):
    what a worker loads into its tables when the broker lost their changelogs."""

    as_of: datetime = Field(description="The state as of this time (UTC)")
    window_s: float = Field(description="History folded through every site agent, s")
    events: int = Field(description="Events folded")
    tables: dict[str, dict[str, Any]] = Field(
        description="Faust table name -> key (site/...) -> value, as the tables hold them")


class ErrorBody(BaseModel):
    """Error body of every non-2xx answer."""

    detail: Any


SortOrder = Literal["asc", "desc"]


class Profit(BaseModel):
    """Profit windows, newest first, and their sums over the range."""

    page: Page
    windows: list[ProfitWindow]  # type: ignore[valid-type]
    total_revenue: float
    total_power_cost: float
    total_profit: float


class PriceInterval(BaseModel):
    """A power price interval as last published."""

    market: str
    start: datetime
    end: datetime
    price_per_mwh: float
    currency: str


class Prices(BaseModel):
    """The power prices over a range, the hashprice, and what they mean now."""

    intervals: list[PriceInterval]
    hashprice_per_th_day: float | None = Field(description="Newest observed (or configured)")
    price_now: float | None = Field(description="Price in force at the latest headroom")
    max_j_per_th: float | None = Field(description="The efficiency limit in force: ASICs "
                                       "less efficient sleep on price")


class Uplink(BaseModel):
    """The internet uplink as last probed, and the local pool's share rate."""

    up: bool | None = Field(description="None: never probed")
    target: str
    latency_ms: float | None
    detail: str
    last_probe: datetime | None
    local_pool_accepted_per_min: float = Field(description="Shares the local Stratum pool "
                                               "accepted per minute, last 5 minutes")
    local_pool_workers: int

