"""Valid sample events of any kind, built from the model's own field types."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Union, get_args, get_origin
from uuid import UUID, uuid4

from pydantic import AwareDatetime

from schemas.envelope import Command, Event

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _value(name: str, annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _value(name, args[0])
    if origin is Literal:
        return get_args(annotation)[0]
    if origin is list:
        return [_value(name, get_args(annotation)[0]) for _ in range(2)]
    if origin is dict:
        return {"tflops": 1.5}
    if annotation is bool:
        return True
    if annotation is int:
        return 3
    if annotation is float:
        return 50.0 if "hz" in name else 1.5
    if annotation in (datetime, AwareDatetime):
        return T0
    if annotation is UUID:
        return uuid4()
    if annotation is str:
        return "stratum+tcp://pool.example:3333" if name.endswith("pool_url") else f"{name}-x"
    raise TypeError(f"no sample for {name}: {annotation}")


def sample(model: type[Event], **overrides: Any) -> Any:
    """A valid instance of ``model`` (every optional field filled)."""
    data: dict[str, Any] = {"site": "site-1", "device_id": "dev-1", "ts": T0, "source": "test"}
    for name, field in model.model_fields.items():
        if name in data or name in {"event_id", "kind", "schema_version"}:
            continue
        data[name] = _value(name, field.annotation)
    if issubclass(model, Command):
        data["issued_at"] = T0
        data["expires_at"] = T0 + timedelta(seconds=10)
    if "currency" in data:
        data["currency"] = "EUR"
    if "interval_end" in data:
        data["interval_end"] = T0 + timedelta(hours=1)
    for bounded in ("quality", "speed", "availability", "participation", "score"):
        if bounded in data:
            data[bounded] = 0.5
    data.update(overrides)
    return model(**data)


