"""Alerts the alert agent raises and clears; subscribers (SMS, webhooks) consume them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.envelope import Event

Severity = Literal["info", "warning", "critical"]


class AlertFired(Event):
    """An alert rule started firing."""

    kind: Literal["AlertFired"] = "AlertFired"
    rule: str = Field(description="Rule name, e.g. grid_frequency_low")
    severity: Severity = Field(description="info, warning or critical")
    dedup_key: str = Field(description="Identity of the condition; one firing per key")
    message: str = Field(max_length=2048, description="Human-readable text")
    value: float | None = Field(default=None, description="Observed value")
    threshold: float | None = Field(default=None, description="Threshold crossed")


class AlertResolved(Event):
    """A firing alert cleared."""

    kind: Literal["AlertResolved"] = "AlertResolved"
    rule: str = Field(description="Rule name")
    severity: Severity = Field(description="Severity it fired with")
    dedup_key: str = Field(description="Identity of the condition that cleared")
    message: str = Field(max_length=2048, description="Human-readable text")
    value: float | None = Field(default=None, description="Observed value when it cleared")
