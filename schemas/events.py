"""Observations published by the source connectors (past tense: something was seen)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from schemas.envelope import Event

AsicState = Literal["running", "sleeping", "waking", "offline", "error"]
JobState = Literal[
    "assigned", "started", "completed", "submitted", "accepted", "rejected", "failed"]


class GridMeasured(Event):
    """One poll of the site's grid meter (SEL-735-class, Modbus TCP)."""

    kind: Literal["GridMeasured"] = "GridMeasured"
    frequency_hz: float = Field(gt=0, lt=100, description="Grid frequency, Hz")
    voltage_v: float = Field(ge=0, description="Line-to-line RMS voltage, V")
    active_power_kw: float = Field(description="Active power through the meter, kW")
    reactive_power_kvar: float = Field(description="Reactive power, kvar")
    nominal_hz: float = Field(default=50.0, description="Nominal grid frequency: 50 or 60 Hz")


class FeedPowerMeasured(Event):
    """One reading of a supply feed's current/voltage sensor (MQTT)."""

    kind: Literal["FeedPowerMeasured"] = "FeedPowerMeasured"
    feed_id: str = Field(min_length=1, description="Supply feed the sensor sits on")
    voltage_v: float = Field(ge=0, description="RMS voltage, V")
    current_a: float = Field(ge=0, description="RMS current, A")
    power_kw: float = Field(description="Power delivered by the feed, kW")
    capacity_kw: float | None = Field(
        default=None, ge=0, description="Supply the feed can give, kW")


class AsicTelemetryObserved(Event):
    """One read of an ASIC miner over the CGMiner RPC; counters are cumulative."""

    kind: Literal["AsicTelemetryObserved"] = "AsicTelemetryObserved"
    model: str = Field(default="", description="Miner model, e.g. Antminer S19j Pro")
    firmware: str = Field(default="", max_length=32, description="Firmware dialect it was "
                          "read with: luxos, braiins, antminer, whatsminer, vnish")
    state: AsicState = Field(description="Operating state as read from the miner")
    hashrate_ths: float = Field(ge=0, description="5-second hashrate, TH/s")
    hashrate_avg_ths: float = Field(ge=0, description="Average hashrate since start, TH/s")
    power_w: float = Field(ge=0, description="Electrical power draw, W")
    power_target_w: float | None = Field(default=None, ge=0, description="Power target set, W")
    temp_chip_c: float | None = Field(default=None, description="Hottest chip temperature, °C")
    temp_board_c: float | None = Field(default=None, description="Hottest board temperature, °C")
    fan_rpm: list[int] = Field(default_factory=list, description="Fan speeds, RPM")
    pool_url: str = Field(default="", description="Stratum URL of the active pool")
    accepted: int = Field(ge=0, description="Cumulative accepted shares since miner start")
    rejected: int = Field(ge=0, description="Cumulative rejected shares since miner start")
    stale: int = Field(ge=0, description="Cumulative stale shares since miner start")
    hardware_errors: int = Field(ge=0, description="Cumulative hardware errors since start")
    elapsed_s: int = Field(ge=0, description="Seconds since the miner process started")


class GpuTelemetryObserved(Event):
    """One reading of a GPU (NVML or RainbowMiner's API)."""

    kind: Literal["GpuTelemetryObserved"] = "GpuTelemetryObserved"
    rig_id: str = Field(description="Rig (host) the GPU sits in")
    gpu_index: int = Field(ge=0, description="Index of the GPU on its rig")
    card: str = Field(description="Card model, e.g. RTX 4090, H100")
    algorithm: str = Field(default="", description="Algorithm mined, if mining")
    miner: str = Field(default="", description="Miner software running on the GPU")
    hashrate_mhs: float = Field(default=0.0, ge=0, description="Hashrate, MH/s")
    power_w: float = Field(ge=0, description="Board power draw, W")
    power_limit_w: float = Field(ge=0, description="Power limit in force, W")
    temp_c: float = Field(description="GPU core temperature, °C")
    core_clock_mhz: float = Field(ge=0, description="Graphics clock, MHz")
    mem_clock_mhz: float = Field(ge=0, description="Memory clock, MHz")
    fan_pct: float = Field(default=0.0, ge=0, le=100, description="Fan duty, %")
    utilization_pct: float = Field(default=0.0, ge=0, le=100, description="GPU utilisation, %")
    mem_temp_c: float | None = Field(default=None, description="Memory (HBM) temperature, °C, "
                                     "where the card reports it")
    power_limit_min_w: float | None = Field(default=None, ge=0, description="Lowest power "
                                            "limit the card accepts, W (NVML)")
    power_limit_max_w: float | None = Field(default=None, ge=0, description="Highest power "
                                            "limit the card accepts, W (NVML)")
    power_limit_default_w: float | None = Field(default=None, ge=0, description="The card's "
                                                "default power limit, W (NVML)")
    mem_used_mib: float | None = Field(default=None, ge=0, description="GPU memory used, MiB")
    mem_total_mib: float | None = Field(default=None, ge=0, description="GPU memory, MiB")
    throttle_reasons: list[str] = Field(default_factory=list, description="Active clock "
                                        "event (throttle) reasons, nvidia-smi's names")
    ecc_uncorrected: int | None = Field(default=None, ge=0, description="Uncorrected ECC "
                                        "errors since the driver loaded, where ECC is on")
    xid_errors: list[int] = Field(default_factory=list, description="NVIDIA Xid critical "
                                  "errors reported since the previous reading")


class ShareCountsObserved(Event):
    """Shares a worker produced in an interval (deltas of the miner's cumulative counters)."""

    kind: Literal["ShareCountsObserved"] = "ShareCountsObserved"
    worker: str = Field(min_length=1, description="Worker name (miner or GPU) the shares are for")
    pool: str = Field(default="", description="Pool URL the shares went to")
    accepted: int = Field(ge=0, description="Accepted shares in the interval")
    rejected: int = Field(ge=0, description="Rejected shares in the interval")
    stale: int = Field(default=0, ge=0, description="Stale shares in the interval")
    difficulty_accepted: float = Field(default=0.0, ge=0, description="Summed difficulty accepted")
    difficulty_rejected: float = Field(default=0.0, ge=0, description="Summed difficulty rejected")
    interval_s: float = Field(ge=0, description="Length of the interval the deltas cover, s")
    counter_reset: bool = Field(default=False, description="The miner's counters were reset")


class MinerEventObserved(Event):
    """Something a miner reported in its log or API (restart, too many rejects, ...)."""

    kind: Literal["MinerEventObserved"] = "MinerEventObserved"
    worker: str = Field(description="Worker the event is about")
    miner: str = Field(default="", description="Miner software")
    event_type: str = Field(description="restart, too_many_rejected, stale_restart, crashed, ...")
    message: str = Field(default="", max_length=4096, description="The log line or detail")


class ComputeJobChanged(Event):
    """A compute job moved through its lifecycle at the coordinator connector."""

    kind: Literal["ComputeJobChanged"] = "ComputeJobChanged"
    job_id: str = Field(description="Coordinator's job id")
    rig_id: str = Field(default="", description="The GPU machine running the job (the "
                        "inventory's coordinator.rig); empty: not known")
    workload: str = Field(description="Workload name, e.g. torch_bench")
    state: JobState = Field(description="Lifecycle state reached")
    detail: str = Field(default="", max_length=4096, description="Error or status detail")
    duration_s: float | None = Field(default=None, ge=0, description="Run time, s")
    credits: float | None = Field(default=None, description="Credits earned, when accepted")
    proof_sha256: str | None = Field(default=None, description="sha256 of the workload output")
    metrics: dict[str, float] = Field(default_factory=dict, description="Workload metrics")
    verified_gpu: str | None = Field(default=None, max_length=200, description="The GPU class "
                                     "the coordinator verified from a proof of GPU (empty: "
                                     "no listed GPU); None: the job was not verified")


class EndpointHealthObserved(Event):
    """One probe of a model endpoint (seed 004) with its score components."""

    kind: Literal["EndpointHealthObserved"] = "EndpointHealthObserved"
    endpoint_url: str = Field(description="Base URL of the endpoint")
    available: bool = Field(description="Answered /health successfully")
    latency_ms: float | None = Field(default=None, ge=0, description="Chat round trip, ms")
    quality: float = Field(default=0.0, ge=0, le=1, description="Known-answer accuracy, 0-1")
    speed: float = Field(default=0.0, ge=0, le=1, description="Speed component, 0-1")
    availability: float = Field(default=0.0, ge=0, le=1, description="Availability component")
    participation: float = Field(default=0.0, ge=0, le=1, description="Participation component")
    score: float = Field(default=0.0, ge=0, le=1, description="0.4q + 0.3s + 0.2a + 0.1p")
    model_name: str = Field(default="", max_length=256, description="/info model_name")
    model_type: str = Field(default="", max_length=64, description="/info model_type")
    model_version: str = Field(default="", max_length=64, description="/info version")
    max_context_length: int | None = Field(default=None, ge=0, description="/info "
                                           "max_context_length, tokens")


class UplinkStatusObserved(Event):
    """One probe of the site's internet uplink."""

    kind: Literal["UplinkStatusObserved"] = "UplinkStatusObserved"
    target: str = Field(description="What was probed (URL or host:port)")
    up: bool = Field(description="The probe succeeded")
    latency_ms: float | None = Field(default=None, ge=0, description="Probe round trip, ms")
    detail: str = Field(default="", max_length=1024, description="Error detail when down")


class PowerPriceObserved(Event):
    """One interval of a power price schedule (day-ahead or real-time) from the price feed;
    ``device_id`` is the feed.  A later publication of the same interval replaces it."""

    kind: Literal["PowerPriceObserved"] = "PowerPriceObserved"
    market: Literal["day_ahead", "real_time"] = Field(
        default="day_ahead", description="Which schedule the interval belongs to")
    interval_start: AwareDatetime = Field(description="Start of the interval, UTC, inclusive")
    interval_end: AwareDatetime = Field(description="End of the interval, UTC, exclusive")
    price_per_mwh: float = Field(ge=-100_000, le=100_000, description="Energy price per MWh "
                                 "(negative prices happen on real markets)")
    currency: str = Field(min_length=3, max_length=3, pattern="^[A-Z]{3}$",
                          description="ISO 4217 currency of the price, e.g. EUR, USD")

    @model_validator(mode="after")
    def _interval(self) -> PowerPriceObserved:
        if self.interval_end <= self.interval_start:
            raise ValueError("interval_end must be after interval_start")
        if (self.interval_end - self.interval_start).total_seconds() > 7 * 86_400:
            raise ValueError("an interval longer than a week is not a market interval")
        return self


class HashpriceObserved(Event):
    """The hashprice in force from ``ts``: mining revenue per TH/s per day (Luxor's Hashrate
    Index, Braiins' hashprice, or the operator's configured value)."""

    kind: Literal["HashpriceObserved"] = "HashpriceObserved"
    hashprice_per_th_day: float = Field(ge=0, le=1_000, description="Revenue per TH/s "
                                        "per day, in ``currency``")
    currency: str = Field(min_length=3, max_length=3, pattern="^[A-Z]{3}$",
                          description="ISO 4217 currency of the hashprice")


class RecordDeadLettered(Event):
    """A record that could not be decoded or validated, kept with the reason."""

    kind: Literal["RecordDeadLettered"] = "RecordDeadLettered"
    source_topic: str = Field(description="Topic (or connector input) the record came from")
    reason: str = Field(max_length=4096, description="Why it was refused")
    raw: str = Field(max_length=8192, description="Raw bytes, base64, truncated to 4 KiB")
    raw_truncated: bool = Field(default=False, description="raw was cut at 4 KiB")
    partition: int | None = Field(default=None, description="Kafka partition, when from Kafka")
    offset: int | None = Field(default=None, description="Kafka offset, when from Kafka")
