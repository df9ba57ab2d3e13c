"""The envelope every event and command on a hashplane topic carries.

Every record on every topic is one flat JSON object: the envelope fields below plus the
kind's typed payload fields.  ``device_id`` is the Kafka key, ``ts`` is event time, set at
the source, timezone-aware and normalised to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator


def utc(value: datetime) -> datetime:
    """Return ``value`` converted to UTC; naive datetimes are refused."""
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return value.astimezone(UTC)


class Event(BaseModel):
    """Base of every event: the envelope of DESIGN.md."""

    # NaN and infinities are refused: no step function ever sees one
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True,
                              allow_inf_nan=False)

    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: UUID = Field(default_factory=uuid4, description="Unique id; sinks dedup on it")
    kind: str = Field(description="Event kind, the model's class name")
    schema_version: int = Field(default=1, ge=1, description="Version of this kind's schema")
    site: str = Field(min_length=1, max_length=128, description="Site (farm) identifier")
    device_id: str = Field(min_length=1, max_length=256, description="Device id; the Kafka key")
    ts: AwareDatetime = Field(description="Event time, UTC, stamped at the source")
    source: str = Field(min_length=1, max_length=256, description="Producer that emitted it")

    @field_validator("ts")
    @classmethod
    def _ts_utc(cls, value: datetime) -> datetime:
        return utc(value)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Producers never spell the version: it is the field's default, which must be the
        # class's.  Declared, not injected by a "before" validator: such a validator makes
        # pydantic build a dict of every record before validating it (3.5 of 15 us a
        # record in the sink, measured).
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["schema_version"].default
        if default != cls.SCHEMA_VERSION:
            raise TypeError(f"{cls.__name__}: SCHEMA_VERSION is {cls.SCHEMA_VERSION} but "
                            f"schema_version defaults to {default}; declare "
                            f"schema_version: int = Field(default={cls.SCHEMA_VERSION}, ge=1)")


class Command(Event):
    """Base of every command: an event that asks an actuator to act, and gets one ack."""

    command_id: UUID = Field(default_factory=uuid4, description="Idempotency key of the command")
    issued_at: AwareDatetime = Field(description="When the issuing agent decided, UTC")
    expires_at: AwareDatetime = Field(description="After this instant the actuator must not act")
    reason: str = Field(max_length=1024, description="Why the command was issued, for operators")
    issued_by: str = Field(min_length=1, max_length=256, description="Issuing agent or operator")

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _cmd_utc(cls, value: datetime) -> datetime:
        return utc(value)

    @model_validator(mode="after")
    def _expiry_after_issue(self) -> Command:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self

    def expired(self, now: datetime) -> bool:
        """True when ``now`` is at or past the command's expiry."""
        return now >= self.expires_at
