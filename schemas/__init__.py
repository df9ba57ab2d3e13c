"""hashplane's event catalogue: the single source of truth for topics and their records."""

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
from schemas.envelope import Command, Event
from schemas.events import (
    AsicTelemetryObserved,
    ComputeJobChanged,
    EndpointHealthObserved,
    FeedPowerMeasured,
    GpuTelemetryObserved,
    GridMeasured,
    MinerEventObserved,
    RecordDeadLettered,
    ShareCountsObserved,
    UplinkStatusObserved,
)
from schemas.metrics import (
    ComputeScoreComputed,
    EnergyHeadroomComputed,
    RewardComputed,
    ShareRatioComputed,
    TuningTrialEvaluated,
)
from schemas.registry import TOPICS, TopicSpec, topic, topic_of

__all__ = [
    "TOPICS",
    "AlertFired",
    "AlertResolved",
    "ApplyGpuProfile",
    "AsicTelemetryObserved",
    "CapSiteLoad",
    "Command",
    "CommandAcknowledged",
    "ComputeJobChanged",
    "ComputeScoreComputed",
    "EndpointHealthObserved",
    "EnergyHeadroomComputed",
    "Event",
    "FeedPowerMeasured",
    "GpuTelemetryObserved",
    "GridMeasured",
    "MinerEventObserved",
    "PauseComputeIntake",
    "RecordDeadLettered",
    "ResumeComputeIntake",
    "RewardComputed",
    "SetAsicPowerTarget",
    "ShareCountsObserved",
    "ShareRatioComputed",
    "SleepAsic",
    "SwitchAsicPool",
    "TopicSpec",
    "TuningTrialEvaluated",
    "UplinkStatusObserved",
    "WakeAsic",
    "topic",
    "topic_of",
]
