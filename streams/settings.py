"""The one configuration object; read once at an entry point (STYLE.md 11)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
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

    # ClickHouse history store
    clickhouse_dsn: str = Field(
        default="",
        description="chdb:///abs/path (in-process engine) or http(s)://user:pw@host:8123; "
        "empty means chdb:///<data_dir>/clickhouse",
    )
    clickhouse_database: str = Field(default="hashplane", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    # History sink
    sink_group: str = Field(default="hashplane-history-sink", description="Sink consumer group")
    sink_batch_max: int = Field(default=20_000, ge=1, description="Rows per insert, at most")
    sink_batch_window_s: float = Field(default=1.0, gt=0, description="Insert at least this often")
    sink_retry_max_s: float = Field(default=30.0, gt=0, description="Cap of the outage backoff")

    # Agents
    share_window_s: int = Field(default=60, gt=0, description="Share-ratio window length, s")
    share_grace_s: int = Field(default=30, ge=0, description="Lateness accepted before closing")

    # Connectors
    asic_poll_s: float = Field(default=10.0, gt=0, description="ASIC telemetry sweep period, s")
    asic_concurrency: int = Field(default=512, ge=1, description="ASIC reads in flight")
    asic_timeout_s: float = Field(default=3.0, gt=0, description="Per-ASIC read timeout, s")

    meter_poll_s: float = Field(default=0.2, gt=0, description="Grid meter poll period, s")
    rig_poll_s: float = Field(default=5.0, gt=0, description="RainbowMiner rig poll period, s")
    model_probe_s: float = Field(default=30.0, gt=0, description="Model endpoint probe period")
    compute_miner_id: str = Field(default="hashplane-miner-1", description="Coordinator miner id")
    compute_wallet: str = Field(default="hashplane-wallet", description="Wallet credited")
    compute_poll_s: float = Field(default=3.0, gt=0, description="Job poll period, s")
    uplink_poll_s: float = Field(default=5.0, gt=0, description="Uplink probe period, s")

    # API
    api_host: str = Field(default="127.0.0.1")
    api_port: int = Field(default=8080, ge=0, le=65535)

    log_level: str = Field(default="INFO")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def history_dsn(self) -> str:
        """The ClickHouse DSN in force (the embedded engine under data_dir by default)."""
        return self.clickhouse_dsn or f"chdb://{self.data_dir / 'clickhouse'}"

    @property
    def embedded_history(self) -> bool:
        """True when the history store is the in-process engine (one owner process)."""
        return self.history_dsn.startswith("chdb:")
