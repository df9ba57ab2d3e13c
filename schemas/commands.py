"""Commands (imperative) the agents and operators issue, and the actuators' acks."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, Field

from schemas.envelope import Command, Event

AckStatus = Literal["applied", "rejected", "failed", "expired"]


class SleepAsic(Command):
    """Put an ASIC to sleep (hashing stops, draw falls to near zero)."""

    kind: Literal["SleepAsic"] = "SleepAsic"


class WakeAsic(Command):
    """Wake a sleeping ASIC."""

    kind: Literal["WakeAsic"] = "WakeAsic"


#: A Stratum pool URL a miner can be pointed at: scheme, host (name or address), port.
POOL_URL = re.compile(r"^stratum2?\+(tcp|ssl)://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\])"
                      r":(?P<port>\d{1,5})(/[A-Za-z0-9._~/-]*)?$")
#: Characters a miner's firmware splits a pool entry on (LuxOS ``addpool url,user,pass``),
#: or that would end a quoted value.
SEPARATORS = frozenset(',;"\'\\`')


def check_pool_url(v: str) -> str:
    """``v`` when it is a pool URL a miner can take, else ValueError saying why."""
    m = POOL_URL.fullmatch(v)
    if m is None:
        raise ValueError("pool_url must be stratum+tcp://host:port (or stratum+ssl, "
                         "stratum2+tcp), with a host name or address and a port")
    if not 1 <= int(m["port"]) <= 65535:
        raise ValueError("pool_url port must be 1-65535")
    return v


def check_no_separators(what: str, v: str) -> str:
    """``v`` when it holds nothing a firmware would split a command on."""
    bad = sorted({c for c in v if c in SEPARATORS or ord(c) < 32 or c.isspace()})
    if bad:
        raise ValueError(f"{what} may not contain {''.join(bad)!r}")
    return v


#: A pool entry's fields as a firmware takes them (the API's bodies use the same types).
PoolUrl = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(check_pool_url)]
PoolWorker = Annotated[str, Field(max_length=256),
                       AfterValidator(lambda v: check_no_separators("worker", v))]
PoolPassword = Annotated[str, Field(max_length=256),
                         AfterValidator(lambda v: check_no_separators("password", v))]


class SwitchAsicPool(Command):
    """Point an ASIC at another Stratum pool."""

    kind: Literal["SwitchAsicPool"] = "SwitchAsicPool"
    pool_url: PoolUrl = Field(description="stratum+tcp://host:port")
    worker: PoolWorker = Field(default="", description="Worker (user) name on that pool")
    password: PoolPassword = Field(default="x", description="Pool password")


class SetAsicPowerTarget(Command):
    """Set an ASIC's power target (firmware power limit)."""

    kind: Literal["SetAsicPowerTarget"] = "SetAsicPowerTarget"
    power_target_w: float = Field(gt=0, le=100_000, description="Power target, W")


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
