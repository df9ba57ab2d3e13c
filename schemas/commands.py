"""Commands (imperative) the agents and operators issue, and the actuators' acks."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from schemas.envelope import Command, Event

AckStatus = Literal["applied", "rejected", "failed", "expired"]


class SleepAsic(Command):
    """Put an ASIC to sleep (hashing stops, draw falls to near zero)."""

    kind: Literal["SleepAsic"] = "SleepAsic"


class WakeAsic(Command):
    """Wake a sleeping ASIC."""

    kind: Literal["WakeAsic"] = "WakeAsic"


class SwitchAsicPool(Command):
    """Point an ASIC at another Stratum pool."""

    kind: Literal["SwitchAsicPool"] = "SwitchAsicPool"
    pool_url: str = Field(min_length=1, description="stratum+tcp://host:port")
    worker: str = Field(default="", description="Worker (user) name on that pool")
    password: str = Field(default="x", description="Pool password")


class SetAsicPowerTarget(Command):
    """Set an ASIC's power target (firmware power limit)."""

    kind: Literal["SetAsicPowerTarget"] = "SetAsicPowerTarget"
    power_target_w: float = Field(gt=0, description="Power target, W")


class ApplyGpuProfile(Command):
    """Apply overclock settings to one GPU (RainbowMiner OC profile and NVML)."""

    kind: Literal["ApplyGpuProfile"] = "ApplyGpuProfile"
    rig_id: str = Field(description="Rig the GPU sits in")
    gpu_index: int = Field(ge=0, description="GPU index on the rig")
    power_limit_w: float | None = Field(default=None, gt=0, description="Power limit, W")
    core_offset_mhz: int | None = Field(default=None, description="Core clock offset, MHz")
    mem_offset_mhz: int | None = Field(default=None, description="Memory clock offset, MHz")
    intensity: int | None = Field(default=None, ge=0, description="Miner intensity")
    profile: str = Field(default="", description="Name of the OC profile to write")


class PauseComputeIntake(Command):
    """Stop taking new compute jobs (running jobs finish)."""

    kind: Literal["PauseComputeIntake"] = "PauseComputeIntake"


class ResumeComputeIntake(Command):
    """Take compute jobs again."""

    kind: Literal["ResumeComputeIntake"] = "ResumeComputeIntake"


class CapSiteLoad(Command):
    """Operator demand: keep the site's load at or under ``limit_kw`` (None lifts the cap).

    Carried out by the energy agent, which acks it and lowers the target load it publishes;
    the scheduler then sleeps ASICs with its own commands and acks. ``device_id`` is the site.
    """

    kind: Literal["CapSiteLoad"] = "CapSiteLoad"
    limit_kw: float | None = Field(default=None, ge=0, description="Load cap, kW; None lifts it")
    duration_s: float | None = Field(
        default=None, gt=0, description="Cap lasts this long from the command's ts; None: "
        "until lifted")


class CommandAcknowledged(Event):
    """The one and only outcome of a command, published by the actuator that handled it."""

    kind: Literal["CommandAcknowledged"] = "CommandAcknowledged"
    command_id: UUID = Field(description="Command this acknowledges")
    command_kind: str = Field(description="Kind of that command")
    status: AckStatus = Field(description="applied, rejected, failed or expired")
    detail: str = Field(default="", max_length=4096, description="What happened, for operators")
    latency_ms: float = Field(ge=0, description="From command issue to outcome, ms")
    actuator: str = Field(description="Actuator that handled the command")
