"""API response models, derived from the registry's schemas where they mirror an event."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from schemas.metrics import ShareRatioComputed

_WINDOW_FIELDS = (
    "window_start", "window_end", "final", "accepted", "rejected", "stale", "accepted_pct",
    "rejected_pct", "stale_pct", "shares_per_s", "difficulty_accepted", "difficulty_rejected",
    "events",
)


def _derive(name: str, source: type[BaseModel], fields: tuple[str, ...], doc: str) -> Any:
    spec = {f: (source.model_fields[f].annotation, source.model_fields[f]) for f in fields}
    model = create_model(name, __config__=ConfigDict(frozen=True), __doc__=doc, **spec)  # type: ignore[call-overload]
    return model


ShareWindow = _derive("ShareWindow", ShareRatioComputed, _WINDOW_FIELDS,
                      "Share ratios of one window (latest revision).")


class WorkerShares(BaseModel):
    """A worker's latest share ratios and their history, newest first."""

    worker: str
    window_s: int
    latest: ShareWindow | None = Field(description="Most recent window")  # type: ignore[valid-type]
    history: list[ShareWindow] = Field(description="Windows, newest first")  # type: ignore[valid-type]


class Health(BaseModel):
    """Liveness of the API and its dependencies."""

    status: str = Field(description="ok or degraded")
    history_store: bool = Field(description="ClickHouse answers")
    version: str


class ErrorBody(BaseModel):
    """Error body of every non-2xx answer."""

    detail: str
