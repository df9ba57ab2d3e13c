"""The one codec: events <-> Kafka bytes. Everything else passes typed models (STYLE.md 4)."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson
from pydantic import ValidationError

from schemas.envelope import Event
from schemas.events import RecordDeadLettered
from schemas.plausibility import implausible
from schemas.registry import TopicSpec, topic, topic_of
from schemas.upcast import UpcastError, upcast

RAW_LIMIT = 4096
_DLQ_NS = uuid5(NAMESPACE_URL, "hashplane:history-sink:dlq")


class DecodeError(ValueError):
    """A record that is not a valid event of its topic; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(event: Event) -> bytes:
    """Serialise an event to the JSON bytes put on its topic."""
    return event.__pydantic_serializer__.to_json(event)


def encode_key(event: Event, spec: TopicSpec | None = None) -> bytes:
    """The Kafka key of an event (its topic's key field)."""
    spec = spec or topic_of(type(event))
    return str(getattr(event, spec.key)).encode()


def parse_record(raw: bytes | None) -> dict[str, Any]:
    """Parse raw bytes to a JSON object or raise DecodeError."""
    if raw is None:
        raise DecodeError("empty record (null value)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"not a JSON object: {type(obj).__name__}")
    return obj


def decode_dict(topic_name: str, obj: dict[str, Any]) -> Event:
    """Validate a parsed record against its topic, upcasting old versions first."""
    spec = topic(topic_name)
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise DecodeError("missing 'kind'")
    model = spec.model_for(kind)
    if model is None:
        raise DecodeError(f"kind {kind!r} not allowed on {topic_name} (allowed: {spec.kinds})")
    try:
        obj = upcast(obj, model.SCHEMA_VERSION)
        return model.model_validate(obj)
    except UpcastError as exc:
        raise DecodeError(str(exc)) from None
    except ValidationError as exc:
        errs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise DecodeError(f"invalid {kind}: {errs}"[:2000]) from None


def decode_record(topic_name: str, raw: bytes | None) -> tuple[Event, bool]:
    """Decode a record; also say whether it had to be upcast (was an older version).

    The common case, a current-version record, is validated straight from the bytes by
    pydantic-core (one parse); anything else takes the dict path, which upcasts old
    versions and words the reason of a refusal.
    """
    spec = topic(topic_name)
    if raw:
        try:
            event: Event = spec.adapter.validate_json(raw)
        except ValidationError:
            pass
        else:
            if (event.schema_version == type(event).SCHEMA_VERSION
                    and "kind" in event.model_fields_set):
                return event, False
    event = decode_dict(topic_name, parse_record(raw))
    return event, True


def decode(topic_name: str, raw: bytes | None) -> Event:
    """Decode a record of ``topic_name`` into its event model, or raise DecodeError."""
    return decode_record(topic_name, raw)[0]


def decode_plausible(topic_name: str, raw: bytes | None, now: datetime) -> tuple[Event, bool]:
    """``decode_record``, and a DecodeError for a reading that cannot be real
    (``schemas.plausibility``; ``now``: the receiver's clock at arrival)."""
    event, upcast = decode_record(topic_name, raw)
    if (why := implausible(event, now)) is not None:
        raise DecodeError(f"implausible: {why}")
    return event, upcast


def dead_letter(
    *,
    source_topic: str,
    raw: bytes | None,
    reason: str,
    site: str,
    source: str,
    ts: datetime,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    event_id: UUID | None = None,
) -> RecordDeadLettered:
    """Build the dlq event for a refused record (raw bytes kept, base64, up to 4 KiB)."""
    data = raw or b""
    device = (key or b"").decode("utf-8", "replace")[:256] or "unknown"
    letter = RecordDeadLettered(
        site=site,
        device_id=device,
        ts=ts,
        source=source,
        source_topic=source_topic,
        reason=reason[:4096],
        raw=base64.b64encode(data[:RAW_LIMIT]).decode(),
        raw_truncated=len(data) > RAW_LIMIT,
        partition=partition,
        offset=offset,
    )
    return letter if event_id is None else letter.model_copy(update={"event_id": event_id})


def record_letter(*, topic: str, partition: int, offset: int, timestamp_ms: int | None,
                  raw: bytes | None, key: bytes | None, reason: str, site: str, source: str,
                  ts: datetime) -> RecordDeadLettered:
    """The dead letter of the Kafka record at ``topic``/``partition``/``offset``, under the
    id every process that refuses that record gives it (``dlq_id``)."""
    return dead_letter(source_topic=topic, raw=raw, reason=reason, site=site, source=source,
                       ts=ts, key=key, partition=partition, offset=offset,
                       event_id=dlq_id(topic, partition, offset, timestamp_ms, raw))


def dlq_id(topic_name: str, partition: int, offset: int, timestamp_ms: int | None,
           raw: bytes | None) -> UUID:
    """Id of the dead letter of one Kafka record: whoever refuses the record (the sink, an
    agent, a redelivery), the history store keeps one letter for it.

    The position alone is not the record: after a restart of the embedded broker offsets
    start again at 0, so the record's timestamp and a digest of its bytes are part of it."""
    digest = hashlib.sha256(raw or b"").hexdigest()[:32]
    return uuid5(_DLQ_NS, f"{topic_name}/{partition}/{offset}/{timestamp_ms}/{digest}")
