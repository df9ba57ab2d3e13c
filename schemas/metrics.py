"""Derived facts computed by the agents (past tense: something was computed)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from schemas.envelope import Event

Scope = Literal["worker", "device", "pool", "site"]


class ShareRatioComputed(Event):
    """Share ratios of one subject over one event-time window; later revisions supersede."""

    kind: Literal["ShareRatioComputed"] = "ShareRatioComputed"
    scope: Scope = Field(description="What the subject is: worker, device, pool or site")
    subject: str = Field(description="Worker, device, pool URL or site the ratios are for")
    window_s: int = Field(gt=0, description="Window length, s (60, 900, 3600)")
    window_start: AwareDatetime = Field(description="Start of the window, UTC, inclusive")
    window_end: AwareDatetime = Field(description="End of the window, UTC, exclusive")
    final: bool = Field(default=False, description="The window is closed; no later revision")
    accepted: int = Field(ge=0, description="Accepted shares in the window")
    rejected: int = Field(ge=0, description="Rejected shares in the window")
    stale: int = Field(ge=0, description="Stale shares in the window")
    accepted_pct: float = Field(ge=0, le=100, description="Accepted share of all shares, %")
    rejected_pct: float = Field(ge=0, le=100, description="Rejected share of all shares, %")
    stale_pct: float = Field(ge=0, le=100, description="Stale share of all shares, %")
    shares_per_s: float = Field(ge=0, description="All shares per second of window")
    difficulty_accepted: float = Field(default=0.0, ge=0, description="Summed accepted difficulty")
    difficulty_rejected: float = Field(default=0.0, ge=0, description="Summed rejected difficulty")
    events: int = Field(ge=0, description="Share-count events folded into the window")


class RewardComputed(Event):
    """Seed-000 reward of one worker over one window."""

    kind: Literal["RewardComputed"] = "RewardComputed"
    worker: str = Field(description="Worker the reward is for")
    window_s: int = Field(gt=0, description="Window length, s")
    window_start: AwareDatetime = Field(description="Start of the window, UTC")
    reward: float = Field(ge=0, le=100, description="Reward, 0-100")
    accepted_pct: float = Field(ge=0, le=100, description="Worker's accepted %, of its shares")
    rejected_pct: float = Field(ge=0, le=100, description="Worker's rejected %, of its shares")
    temp_c: float | None = Field(default=None, description="GPU temperature used, °C")
    temp_max_c: float = Field(default=90.0, description="T_max used, °C")
    worker_accepted: int = Field(ge=0, description="Worker's accepted shares in the window")
    cluster_accepted: int = Field(ge=0, description="Cluster's accepted shares in the window")


class EnergyHeadroomComputed(Event):
    """Supply, load and headroom of a site, and the target load the grid asks for."""

    kind: Literal["EnergyHeadroomComputed"] = "EnergyHeadroomComputed"
    supply_kw: float = Field(ge=0, description="Measured supply, sum of feeds, kW")
    margin_kw: float = Field(ge=0, description="Safety margin subtracted from supply, kW")
    available_kw: float = Field(description="supply_kw - margin_kw")
    load_kw: float = Field(ge=0, description="Measured load, kW")
    asic_load_kw: float = Field(ge=0, description="ASIC share of the load, kW")
    gpu_load_kw: float = Field(ge=0, description="GPU share of the load, kW")
    headroom_kw: float = Field(description="available_kw - load_kw")
    frequency_hz: float | None = Field(default=None, description="Latest grid frequency, Hz")
    band: str = Field(default="normal", description="Demand-response band in force")
    target_load_kw: float = Field(ge=0, description="Load the site should run at, kW")
    cap_kw: float | None = Field(
        default=None, ge=0, description="Operator load cap in force (CapSiteLoad), kW")
    price_per_mwh: float | None = Field(
        default=None, description="Power price in force, per MWh (None: no price known)")
    hashprice_per_th_day: float | None = Field(
        default=None, ge=0, description="Hashprice in force, per TH/s per day")
    max_j_per_th: float | None = Field(
        default=None, gt=0, description="Price-aware curtailment: ASICs less efficient than "
        "this (J/TH) lose money at the price in force plus the margin and should sleep; None: "
        "every ASIC pays (or no price is known)")


class ProfitComputed(Event):
    """Revenue, power cost and profit of one unit (ASIC, GPU rig) or the site over one
    event-time window, with the unit's breakeven power price; later revisions supersede."""

    kind: Literal["ProfitComputed"] = "ProfitComputed"
    scope: Literal["asic", "rig", "site"] = Field(description="What the subject is")
    subject: str = Field(description="ASIC, rig or site the figures are for")
    window_s: int = Field(gt=0, description="Window length, s")
    window_start: AwareDatetime = Field(description="Start of the window, UTC, inclusive")
    final: bool = Field(default=False, description="The window is closed; no later revision")
    currency: str = Field(default="", max_length=3, description="Currency of the money fields")
    seconds: float = Field(ge=0, description="Seconds of the window the unit was measured")
    energy_kwh: float = Field(ge=0, description="Energy used in the window, kWh")
    hashrate_ths: float = Field(ge=0, description="Mean hashrate over the measured seconds")
    revenue: float = Field(ge=0, description="Hashrate x hashprice over the window")
    power_cost: float = Field(description="Energy x power price (negative at negative prices)")
    profit: float = Field(description="revenue - power_cost")
    j_per_th: float | None = Field(default=None, ge=0, description="Efficiency measured in "
                                   "the window, J/TH (None: no hashrate)")
    breakeven_per_mwh: float | None = Field(default=None, description="Power price at which "
                                            "the unit's revenue pays its power")


class ComputeScoreComputed(Event):
    """A compute score: seed-001 GPU score or seed-004 endpoint score."""

    kind: Literal["ComputeScoreComputed"] = "ComputeScoreComputed"
    scheme: Literal["gpu", "endpoint"] = Field(description="seed-001 gpu or seed-004 endpoint")
    subject: str = Field(description="GPU, rig or endpoint scored")
    score: float = Field(ge=0, description="Score value")
    components: dict[str, float] = Field(default_factory=dict, description="Score components")


class TuningTrialEvaluated(Event):
    """One GPU tuning trial: the settings tried, what the window measured, its scores."""

    kind: Literal["TuningTrialEvaluated"] = "TuningTrialEvaluated"
    card: str = Field(description="Card family tuned (RTX 3090, A100, ...)")
    trial: int = Field(ge=0, description="Trial number of this GPU's run")
    optimizer: str = Field(description="Optimiser that proposed it (botorch, bandit, ...)")
    power_limit_w: float = Field(gt=0, description="NVML power limit tried, W")
    core_offset_mhz: int = Field(description="Core clock offset tried, MHz")
    mem_offset_mhz: int = Field(description="Memory clock offset tried, MHz")
    intensity: int = Field(ge=0, description="Miner intensity tried")
    window_s: float = Field(ge=0, description="Measured window, s (after settling)")
    hashrate_mhs: float = Field(ge=0, description="Mean reported hashrate in the window")
    power_w: float = Field(ge=0, description="Mean power in the window, W")
    temp_max_c: float = Field(description="Peak GPU temperature in the window, °C")
    accepted: int = Field(ge=0, description="Accepted shares in the window")
    rejected: int = Field(ge=0, description="Rejected shares in the window")
    stale: int = Field(ge=0, description="Stale shares in the window")
    reward: float = Field(ge=0, le=100, description="Seed-000 reward of the window")
    objective: float = Field(ge=0, description="Reward-weighted accepted MH/s (tuner's J)")
    efficiency_mh_per_j: float = Field(ge=0, description="Accepted MH per joule")
    feasible: bool = Field(description="Temperature and reject ratio within limits")
    outcome: Literal["kept", "rolled_back"] = Field(description="What the tuner did next")
    objective_kind: Literal["j", "profit"] = Field(
        default="j", description="What the tuner maximised: J, or profit per day")
    price_per_mwh: float | None = Field(
        default=None, description="Power price the trial was scored at, per MWh (None: none "
        "known)")
    profit_per_day: float | None = Field(
        default=None, description="Accepted hashrate's revenue minus the power's cost per day "
        "at that price, in the site's currency (None: no price known)")
