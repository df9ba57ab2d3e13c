"""The one configuration object; read once at an entry point (STYLE.md 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """hashplane configuration. Every field is ``HASHPLANE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="HASHPLANE_", env_file=".env", extra="ignore")

    site: str = Field(default="site-1", description="Site identifier stamped on events")
    data_dir: Path = Field(default=Path("var"), description="Embedded broker logs, ClickHouse")

    # Kafka
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    topic_replication: int = Field(default=1, ge=1, description="Replication of created topics")
    app_id: str = Field(default="hashplane", description="Faust app id (consumer group prefix)")
    worker_rebalance_timeout_s: float = Field(default=3.0, gt=0)
    worker_session_timeout_s: float = Field(default=3.0, gt=0)
    worker_heartbeat_interval_s: float = Field(default=0.5, gt=0)
    control_lane: bool = Field(
        default=True, description="`hashplane up` runs the control path's agents (energy, "
        "scheduler) and the site feed's forwarder in a worker process of their own, "
        "consumer group <app_id>-control")
    control_process: bool = Field(
        default=True, description="`hashplane up` runs the control path's connectors (the "
        "grid meter and the ASIC actuator) in a child process of their own (`hashplane "
        "connect meter,asic-actuator`), so a grid dip's reading, commands and acks never wait "
        "behind the sink's, the API's and the telemetry connectors' work")
    main_lane_nice: int = Field(
        default=10, ge=0, le=19, description="`hashplane up` runs the main lane's worker (every "
        "agent off the control path) at this niceness, so the control path's processes get "
        "the cores first when a fleet's poll arrives in a burst; 0: the same priority")

    # ClickHouse history store
    clickhouse_dsn: str = Field(
        default="",
        description="chdb:///abs/path (in-process engine) or http(s)://user:pw@host:8123; "
        "empty means chdb:///<data_dir>/clickhouse",
    )
    clickhouse_database: str = Field(default="hashplane", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    # Worker start after the broker lost its state (streams/restore.py)
    state_url: str = Field(
        default="", description="API base URL the worker restores the site state from "
        "when the history is the embedded ClickHouse of another process (the demo sets it)")
    restore_window_s: float = Field(
        default=3600.0, gt=0, description="History folded through every site agent on "
        "restore; acks, caps and home pools from before it are folded too")
    restore_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest a starting worker waits for the restored "
        "state before it starts without it (loudly)")

    # History sink
    sink_group: str = Field(default="hashplane-history-sink", description="Sink consumer group")
    sink_batch_max: int = Field(default=20_000, ge=1, description="Rows per insert, at most")
    sink_batch_window_s: float = Field(default=1.0, gt=0, description="Insert at least this often")
    sink_retry_max_s: float = Field(default=30.0, gt=0, description="Cap of the outage backoff")

    # Agents: share ratios and rewards
    share_windows_s: list[int] = Field(
        default=[60, 900, 3600], min_length=1, description="Share-ratio window lengths, s (JSON)")
    share_grace_s: int = Field(default=30, ge=0, description="Lateness accepted before closing")
    share_update_s: int = Field(
        default=30, ge=0, description="Event time between provisional revisions of a window, s")
    reward_temp_max_c: float = Field(default=90.0, description="T_max of the seed-000 reward, °C")

    # Agents: energy headroom and grid-frequency bands
    energy_margin_kw: float = Field(default=10.0, ge=0, description="Safety margin off supply, kW")
    energy_emit_s: float = Field(
        default=1.0, ge=0, description="Event time between headroom metrics (band changes: now)")
    bands_50hz: list[tuple[float, float]] = Field(
        default=[(49.8, 0.5), (49.5, 0.0)],
        description="[[below_hz, target fraction of available supply], ...] on 50 Hz grids")
    bands_60hz: list[tuple[float, float]] = Field(
        default=[(59.8, 0.5), (59.5, 0.0)], description="The same on 60 Hz grids")
    band_hysteresis_hz: float = Field(default=0.05, ge=0, description="Release above edge + this")
    band_hold_s: float = Field(
        default=30.0, ge=0, description="Frequency must stay released this long to relax a band")
    feed_stale_s: float = Field(default=10.0, gt=0, description="A silent feed leaves the supply")
    meter_stale_s: float = Field(
        default=5.0, ge=0, description="No grid reading for this long: no decisions (supply "
        "unknown) and a critical alert; 0 when the site has no meter")
    energy_warmup_s: float = Field(
        default=5.0, ge=0, description="After a worker (re)start, no headroom for this long "
        "(wall clock): the backlog is folded first, its partitions read out of event-time step")
    energy_max_age_s: float = Field(
        default=30.0, ge=0, description="No headroom from a reading older than this (wall "
        "clock): no decision on the past while a backlog is folded; 0: off")
    supply_feeds: list[str] = Field(
        default_factory=list,
        description="The site's supply feeds (JSON list of feed ids): the supply is unknown "
        "until each has reported, or feed_stale_s after the first did (the demo sets it)")
    device_stale_s: float = Field(
        default=600.0, gt=0, description="A device silent this long leaves the measured load")

    # Money: price-aware curtailment (energy agent, scheduler) and profit
    currency: str = Field(default="USD", pattern="^[A-Z]{3}$",
                          description="Currency of power prices and the hashprice (ISO 4217)")
    hashprice_per_th_day: float | None = Field(
        default=None, ge=0, le=1_000, description="Mining revenue per TH/s per day when no "
        "HashpriceObserved event says otherwise; unset: no price-aware curtailment until one "
        "does")
    price_margin_per_mwh: float = Field(
        default=0.0, description="An ASIC sleeps when the power price exceeds its breakeven "
        "plus this margin (per MWh; negative: curtail before breakeven)")
    price_hysteresis_per_mwh: float = Field(
        default=2.0, ge=0, description="The efficiency limit relaxes only as far as the price "
        "plus this allows, so a price hovering at a breakeven does not flap the fleet")
    gpu_revenue_per_mh_day: float = Field(
        default=0.0, ge=0, le=1_000, description="What the GPU rigs' algorithm earns per MH/s "
        "per day (their profit windows' revenue); 0: power cost only")
    profit_window_s: float = Field(
        default=900.0, ge=10, le=86_400, description="Event-time window of the profit agent's "
        "revenue, power cost and profit per unit (15 minutes: a market's settlement period)")
    profit_grace_s: float = Field(
        default=30.0, ge=0, description="A profit window is published this long (event time) "
        "after its end, for late readings")
    profit_max_gap_s: float = Field(
        default=120.0, gt=0, description="A device silent longer than this: the gap is not "
        "accrued (no money on a guess)")
    price_hold_s: float = Field(
        default=300.0, ge=0, description="The price must stay lower this long (event time) "
        "before the efficiency limit relaxes; it tightens at once")

    # Agents: ASIC scheduler and pool failover
    sched_min_on_s: float = Field(default=120.0, ge=0, description="Minimum run before a sleep, s")
    sched_min_off_s: float = Field(default=60.0, ge=0, description="Minimum sleep before a wake")
    sched_hysteresis_kw: float = Field(
        default=5.0, ge=0, description="Spare budget kept when waking ASICs, kW")
    sched_wake_batch: int = Field(default=20, ge=1, description="ASICs woken per stagger step")
    sched_wake_interval_s: float = Field(default=5.0, ge=0, description="Stagger step, s")
    sched_boot_s: float = Field(
        default=300.0, ge=0, description="A woken ASIC reporting no hashrate yet (restarting "
        "its hashboards) counts as waking this long after its wake's ack: load a dip sheds; "
        "after it, a miner still hashing nothing is in error, s")
    asic_default_w: float = Field(
        default=3250.0, gt=0, description="Draw assumed for an ASIC never seen running, W")
    command_ttl_s: float = Field(default=10.0, gt=0, description="Agents' commands expire after")
    local_pool_url: str = Field(
        default="stratum+tcp://127.0.0.1:3333",
        description="Local Stratum pool for outages: the address failover gives the ASICs "
        "(a LAN address they reach) and the port the pool listens on")
    local_pool_bind: str = Field(
        default="0.0.0.0",
        description="Address the local pool listens on (0.0.0.0: every interface; open its "
        "port to the miners' network only)")
    local_pool_difficulty: float = Field(
        default=65536.0, gt=0,
        description="Share difficulty the local pool sets; every share's hash is checked "
        "against its target")
    uplink_down_after: int = Field(
        default=2, ge=1, description="Failed uplink probes in a row that mean 'down'")
    uplink_hold_down_s: float = Field(
        default=120.0, ge=0, description="Uplink healthy this long before switching back, s")

    # Agents: compute gate
    gate_pause_kw: float = Field(default=0.0, description="Pause job intake below this headroom")
    gate_resume_kw: float = Field(default=20.0, description="Resume at or above this headroom")
    gate_hold_s: float = Field(default=30.0, ge=0, description="Headroom held this long to resume")

    # Agents: alerts
    alert_freq_warn_hz: float = Field(default=0.2, gt=0, description="Below nominal: warning")
    alert_freq_crit_hz: float = Field(default=0.5, gt=0, description="Below nominal: critical")
    alert_load_pct: float = Field(default=95.0, gt=0, description="Load % of available: warning")
    alert_asic_temp_c: float = Field(default=95.0, description="ASIC chip temperature alert, °C")
    alert_gpu_temp_c: float = Field(default=88.0, description="GPU temperature alert, °C")
    alert_reject_pct: float = Field(default=5.0, ge=0, description="Reject % alert (1-min window)")
    alert_reject_min_shares: int = Field(default=10, ge=1, description="Shares needed to judge")
    alert_offline_intervals: int = Field(
        default=3, ge=1, description="Missed telemetry polls before 'miner offline'")
    alert_job_failures: int = Field(default=3, ge=1, description="Job failures that alert")
    alert_job_window_s: float = Field(default=900.0, gt=0, description="...within this window")
    alert_confirm_s: float = Field(
        default=30.0, gt=0, description="An applied sleep/wake must show in telemetry within")
    alert_fault_clear_s: float = Field(
        default=300.0, gt=0, description="A device fault clears after this long without "
        "refused input from the device, s")
    alert_cooldown_s: float = Field(
        default=300.0, ge=0, description="A resolved alert does not re-fire within this, s")

    # Agents: GPU tuner (agents/tuning.py)
    tuner_gpus: list[str] = Field(
        default_factory=list, description="GPUs in tuning mode (JSON list of device ids)")
    tuner_optimizer: Literal["botorch", "bandit", "random"] = Field(
        default="botorch", description="Optimiser proposing the trials")
    tuner_trials: int = Field(default=25, ge=1, description="Trials per GPU before keeping best")
    tuner_settle_s: float = Field(default=120.0, ge=0, description="Settling time per trial, s")
    tuner_window_s: float = Field(default=300.0, gt=0, description="Measured window per trial")
    tuner_max_step: float = Field(
        default=0.25, gt=0, le=1, description="Largest change per knob per trial (of its range)")
    tuner_reject_max_pct: float = Field(default=1.0, ge=0, description="Reject % constraint")
    tuner_objective: Literal["j", "profit"] = Field(
        default="j", description="What the GPU tuner maximises: j (reward-weighted accepted "
        "hashrate) or profit (accepted MH/s x HASHPLANE_GPU_REVENUE_PER_MH_DAY minus the power "
        "cost at the price in force)")
    tuner_power_price_per_mwh: float | None = Field(
        default=None, ge=-1_000, le=100_000, description="Power price the profit objective uses "
        "while no price is in force on the prices topic, per MWh")
    tuner_checkpoint: str = Field(
        default="", description="Trained checkpoint warm-starting the optimiser (tuner train)")

    # Connectors
    asic_poll_s: float = Field(default=10.0, gt=0, description="ASIC telemetry sweep period, s")
    asic_concurrency: int = Field(default=512, ge=1, description="ASIC reads in flight")
    asic_timeout_s: float = Field(default=3.0, gt=0, description="Per-ASIC read timeout, s")

    asic_min_power_w: float = Field(default=500.0, gt=0, description="Lowest power target, W")
    asic_max_power_w: float = Field(default=6000.0, gt=0, description="Highest power target, W")
    asic_maintenance: list[str] = Field(
        default_factory=list, description="ASICs no command may touch (JSON list of ids)")
    actuators_own_site: bool = Field(
        default=True, description="One ASIC and one GPU actuator for the site: unknown "
        "devices are "
        "rejected (false when actuators shard the fleet)")

    meter_poll_s: float = Field(default=0.2, gt=0, description="Grid meter poll period, s")
    rig_poll_s: float = Field(default=5.0, gt=0, description="RainbowMiner rig poll period, s")
    model_probe_s: float = Field(default=30.0, gt=0, description="Model endpoint probe period")
    compute_miner_id: str = Field(default="hashplane-miner-1", description="Coordinator miner id")
    compute_wallet: str = Field(default="hashplane-wallet", description="Wallet credited")
    compute_poll_s: float = Field(default=3.0, gt=0, description="Job poll period, s")
    compute_max_slots: int = Field(default=1, ge=1, le=64, description="Jobs the coordinator "
                                   "account may run at once (seed 002's MAX_CONCURRENCY); "
                                   "the miner runs min(this, usable GPUs)")
    uplink_poll_s: float = Field(default=5.0, gt=0, description="Uplink probe period, s")

    # Alert sinks (SMS credentials: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, as Twilio reads)
    sms_to: list[str] = Field(default_factory=list, description="SMS recipients (JSON list)")
    sms_from: str = Field(default="", description="Twilio number SMS are sent from")
    sms_min_interval_s: float = Field(
        default=60.0, ge=0, description="At most one SMS per recipient this often; digests")
    sms_severities: list[Literal["info", "warning", "critical"]] = Field(
        default=["critical"],
        description="Severities sent by SMS (JSON list); the webhooks get every alert")
    sms_rules: dict[str, bool] = Field(
        default_factory=dict,
        description="Per-rule SMS override (JSON object rule -> true/false), over severity")
    sms_quiet_hours: str = Field(
        default="", pattern=r"^$|^\d{2}:\d{2}-\d{2}:\d{2}$",
        description="HH:MM-HH:MM: only critical SMS then; the rest as a digest after")
    sms_timezone: str = Field(default="UTC", description="Time zone of the quiet hours")
    sms_resolution_digest_s: float = Field(
        default=300.0, ge=0, description="Resolutions are gathered this long into one SMS")
    twilio_base_url: str = Field(
        default="", description="Twilio API base URL override (regional proxy; tests)")
    alert_webhooks: list[str] = Field(
        default_factory=list, description="URLs every alert is POSTed to (JSON list)")

    # API
    api_host: str = Field(default="127.0.0.1", description="API listen address")
    api_port: int = Field(default=8080, ge=0, le=65535, description="API port (0: any free)")
    api_key: str = Field(
        default="", description="An operator key (the demo generates and prints one if empty)")
    api_keys: dict[str, Literal["read", "operator"]] = Field(
        default_factory=dict, description='More keys: JSON {"<key>": "read"|"operator"}')
    sql_max_rows: int = Field(default=10_000, ge=1, description="Rows the SQL endpoint returns")
    sql_max_bytes: int = Field(
        default=64 << 20, ge=1024, description="Bytes a SQL answer may hold (ClickHouse side)")
    sql_max_memory: int = Field(
        default=2 << 30, ge=1 << 20, description="Memory a SQL query may use, bytes")
    sql_concurrency: int = Field(default=2, ge=1, description="SQL queries run at once")
    api_store_connections: int = Field(
        default=4, ge=1, description="The API's own connections to the store for reads")
    sql_max_s: float = Field(default=10.0, gt=0, description="Time a SQL query may run, s")
    api_live_s: float = Field(
        default=10.0, gt=0, description="Consumer-lag refresh period of /metrics, s")

    log_level: str = Field(default="INFO")

    @field_validator("sms_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (an IANA name, e.g. Europe/Berlin)") from None
        return v

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _profit_objective_has_its_rates(self) -> Settings:
        if self.tuner_objective == "profit":
            missing = [name for name, ok in (
                ("HASHPLANE_GPU_REVENUE_PER_MH_DAY", self.gpu_revenue_per_mh_day > 0),
                ("HASHPLANE_TUNER_POWER_PRICE_PER_MWH",
                 self.tuner_power_price_per_mwh is not None)) if not ok]
            if missing:
                raise ValueError(f"HASHPLANE_TUNER_OBJECTIVE=profit needs {' and '.join(missing)}"
                                 " (the revenue rate, and the price used until the prices topic"
                                 " has one in force)")
        return self

    @property
    def history_dsn(self) -> str:
        """The ClickHouse DSN in force (the embedded engine under data_dir by default)."""
        return self.clickhouse_dsn or f"chdb://{self.data_dir / 'clickhouse'}"

    @property
    def embedded_history(self) -> bool:
        """True when the history store is the in-process engine (one owner process)."""
        return self.history_dsn.startswith("chdb:")
