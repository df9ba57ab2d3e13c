"""Alertmanager's webhook receiver (``POST /v1/alerts/alertmanager``, scope ``operator``).

Prometheus' alerts reach the farm's people through the same sinks as the agents' alerts:
each alert of Alertmanager's webhook payload (version 4, Prometheus' ``webhook_config``
documentation) becomes an ``AlertFired`` or ``AlertResolved`` on the ``alerts`` topic, so
the SMS policy (severity, per-rule, quiet hours, digests) and the webhooks apply to both,
and a condition both raise is sent once: a rule's ``dedup_key`` label names the alerts
agent's key (infra/prometheus/hashplane-rules.yml), else the key is Alertmanager's
fingerprint.  The rule is ``alertname``, the severity its ``severity`` label (``warning``
when missing or unknown), the text the ``summary`` or ``description`` annotation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import uuid4

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.context import ApiContext
from schemas.alerts import AlertFired, AlertResolved

SOURCE = "alertmanager"
Text = Annotated[str, StringConstraints(max_length=4096)]
SEVERITIES = ("info", "warning", "critical")


class AmAlert(BaseModel):
    """One alert of the payload (the fields hashplane reads; the rest are ignored)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[Text, Text] = Field(max_length=64)
    annotations: dict[Text, Text] = Field(default_factory=dict, max_length=64)
    startsAt: datetime | None = None  # Alertmanager's field names
    endsAt: datetime | None = None
    fingerprint: Annotated[str, StringConstraints(max_length=64)] = ""


class AmPayload(BaseModel):
    """Alertmanager's webhook body."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: Text = ""
    alerts: list[AmAlert] = Field(max_length=1000)


class Received(BaseModel):
    published: int = Field(description="Alerts put on the alerts topic")


def to_events(payload: AmPayload, site: str, now: datetime) -> list[AlertFired | AlertResolved]:
    """The alerts-topic events of a webhook payload (pure)."""
    out: list[AlertFired | AlertResolved] = []
    for a in payload.alerts:
        rule = a.labels.get("alertname", "")
        if not rule:
            raise HTTPException(422, "an alert without an alertname label")
        severity = a.labels.get("severity", "warning")
        sev = severity if severity in SEVERITIES else "warning"
        key = a.labels.get("dedup_key") or f"prometheus/{rule}/{a.fingerprint or 'none'}"
        text = a.annotations.get("summary") or a.annotations.get("description") or rule
        common = dict(site=a.labels.get("site", site),
                      device_id=a.labels.get("device") or a.labels.get("site") or site,
                      ts=now, source=SOURCE, rule=rule, severity=sev, dedup_key=key,
                      message=f"{text} (Prometheus)"[:2048], event_id=uuid4())
        out.append(AlertFired(**common) if a.status == "firing"  # type: ignore[arg-type]
                   else AlertResolved(**common))  # type: ignore[arg-type]
    return out


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.post("/alerts/alertmanager", response_model=Received, tags=["operate"])
    async def alertmanager(body: AmPayload) -> Received:
        """Alertmanager's webhook: its alerts onto the ``alerts`` topic, to be sent by the
        same sinks and policy as the agents' (deduplicated by ``dedup_key``)."""
        if ctx.publisher is None:
            raise HTTPException(503, "the API cannot reach Kafka: the alerts were not taken")
        events = to_events(body, ctx.settings.site, datetime.now(UTC))
        try:
            await ctx.publisher.publish_many(events)
        except Exception as exc:
            # Alertmanager retries a webhook that fails: nothing is lost.
            raise HTTPException(503, f"publishing the alerts failed: {exc}") from exc
        return Received(published=len(events))

    return r
