"""The topic registry: topic -> models -> key field -> partitions -> retention -> table.

Faust topics, the broker's topic creation, ClickHouse tables, JSON Schema export and the
API's models are all derived from ``TOPICS``; ``tests/unit/test_registry.py`` checks they
agree.  Topic and table names are contracts (STYLE.md 12): rename only with a migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from schemas.alerts import AlertFired, AlertResolved
from schemas.commands import (
    ApplyGpuProfile,
    CapSiteLoad,
    CommandAcknowledged,
    PauseComputeIntake,
    ResumeComputeIntake,
    SetAsicPowerTarget,
    SleepAsic,
    SwitchAsicPool,
    WakeAsic,
)
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    ComputeJobChanged,
    EndpointHealthObserved,
    FeedPowerMeasured,
    GpuTelemetryObserved,
    GridMeasured,
    HashpriceObserved,
    MinerEventObserved,
    PowerPriceObserved,
    RecordDeadLettered,
    ShareCountsObserved,
    UplinkStatusObserved,
)
from schemas.metrics import (
    ComputeScoreComputed,
    EnergyHeadroomComputed,
    ProfitComputed,
    RewardComputed,
    ShareRatioComputed,
    TuningTrialEvaluated,
)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract and everything derived from it."""

    name: str
    models: tuple[type[Event], ...]
    schema: str
    key: str = "device_id"
    partitions: int = 4
    retention_ms: int = 7 * DAY_MS
    description: str = ""

    @property
    def table(self) -> str:
        """Typed ClickHouse table of the topic (dots become underscores)."""
        return self.name.replace(".", "_")

    @property
    def kinds(self) -> tuple[str, ...]:
        """Event kinds allowed on the topic."""
        return tuple(kind_of(m) for m in self.models)

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        """Validator for a record of this topic (discriminated on ``kind`` when several)."""
        if len(self.models) == 1:
            return TypeAdapter(self.models[0])
        union = Annotated[Union[self.models], Field(discriminator="kind")]  # type: ignore[name-defined]  # noqa: UP007
        return TypeAdapter(union)

    def model_for(self, kind: str) -> type[Event] | None:
        """Model of ``kind`` on this topic, or None when the topic does not carry it."""
        for m in self.models:
            if kind_of(m) == kind:
                return m
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly description, as printed by ``hashplane topics --json``."""
        return {
            "name": self.name,
            "key": self.key,
            "schema": self.schema,
            "kinds": list(self.kinds),
            "partitions": self.partitions,
            "retention_ms": self.retention_ms,
            "table": self.table,
            "description": self.description,
        }


def kind_of(model: type[Event]) -> str:
    """The ``kind`` literal a model carries."""
    default = model.model_fields["kind"].default
    assert isinstance(default, str) and default, f"{model.__name__} has no kind default"
    return default


def _t(name: str, *models: type[Event], schema: str | None = None, **kw: Any) -> TopicSpec:
    return TopicSpec(name=name, models=models, schema=schema or models[0].__name__, **kw)


TOPICS: tuple[TopicSpec, ...] = (
    _t("grid.readings", GridMeasured, partitions=1, retention_ms=3 * DAY_MS,
       description="Grid meter polls: frequency, voltage, kW, kvar"),
    _t("power.readings", FeedPowerMeasured, partitions=1, retention_ms=3 * DAY_MS,
       description="Supply feed sensors: V, A, kW"),
    _t("asic.telemetry", AsicTelemetryObserved, partitions=8,
       description="ASIC reads over the CGMiner RPC"),
    _t("gpu.telemetry", GpuTelemetryObserved, partitions=4,
       description="GPU readings from NVML or RainbowMiner"),
    _t("shares", ShareCountsObserved, partitions=8,
       description="Share-count deltas per worker and interval"),
    _t("miner.events", MinerEventObserved, partitions=2,
       description="Miner log and API events"),
    _t("compute.jobs", ComputeJobChanged, partitions=2,
       description="Compute job lifecycle"),
    _t("compute.health", EndpointHealthObserved, partitions=2,
       description="Model endpoint probes with seed-004 score components"),
    _t("uplink.status", UplinkStatusObserved, partitions=1,
       description="Internet uplink probes"),
    _t("prices", PowerPriceObserved, HashpriceObserved, schema="MarketPrice", partitions=1,
       retention_ms=90 * DAY_MS, description="Power price intervals and the hashprice"),
    _t("metrics.shares", ShareRatioComputed, partitions=4, retention_ms=30 * DAY_MS,
       description="Share ratios per worker/device/pool/site and window"),
    _t("metrics.rewards", RewardComputed, ComputeScoreComputed, TuningTrialEvaluated,
       schema="RewardMetric",
       partitions=4, retention_ms=30 * DAY_MS,
       description="Seed-000 rewards, compute scores, GPU tuning trials"),
    _t("metrics.energy", EnergyHeadroomComputed, partitions=1, retention_ms=30 * DAY_MS,
       description="Supply, load, headroom and target load per site"),
    _t("metrics.profit", ProfitComputed, partitions=4, retention_ms=90 * DAY_MS,
       description="Revenue, power cost, profit and breakeven per ASIC, rig, site, window"),
    _t("commands.asic", SleepAsic, WakeAsic, SwitchAsicPool, SetAsicPowerTarget,
       schema="AsicCommand", partitions=8, retention_ms=30 * DAY_MS,
       description="Commands to ASIC actuators"),
    _t("commands.gpu", ApplyGpuProfile, schema="GpuCommand", partitions=4,
       retention_ms=30 * DAY_MS, description="Commands to GPU actuators"),
    _t("commands.compute", PauseComputeIntake, ResumeComputeIntake, schema="ComputeCommand",
       partitions=1, retention_ms=30 * DAY_MS, description="Commands to compute connectors"),
    _t("commands.site", CapSiteLoad, schema="SiteCommand", partitions=1,
       retention_ms=30 * DAY_MS, description="Site-level operator commands (load cap)"),
    _t("commands.acks", CommandAcknowledged, partitions=8, retention_ms=30 * DAY_MS,
       description="Exactly one outcome per command"),
    _t("alerts", AlertFired, AlertResolved, schema="Alert", partitions=1,
       retention_ms=30 * DAY_MS, description="Alerts firing and resolving"),
    _t("dlq", RecordDeadLettered, partitions=1, retention_ms=30 * DAY_MS,
       description="Undecodable or invalid input, with the reason"),
)

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}


def topic(name: str) -> TopicSpec:
    """Spec of a contract topic; KeyError names the valid topics."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(BY_NAME)}") from None


def topic_of(model: type[Event]) -> TopicSpec:
    """The topic a model is published on."""
    for spec in TOPICS:
        if model in spec.models:
            return spec
    raise KeyError(f"{model.__name__} is on no topic")


def all_models() -> list[type[Event]]:
    """Every event and command model of the catalogue."""
    return [m for spec in TOPICS for m in spec.models]
