"""The codec: malformed input becomes a DecodeError with a reason; old versions upcast."""

from __future__ import annotations

import base64
import dataclasses

import orjson
import pytest
from pydantic import Field

from schemas.events import ShareCountsObserved
from schemas.upcast import UPCASTERS, UpcastError, upcast, upcaster
from streams.codec import RAW_LIMIT, DecodeError, dead_letter, decode, encode
from tests.factories import T0, sample

GOOD = orjson.loads(encode(sample(ShareCountsObserved)))


def _raw(**changes: object) -> bytes:
    d = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


@pytest.mark.parametrize(("raw", "reason"), [
    (None, "empty record"),
    (b"", "not JSON"),
    (b"\x00\xff\xfe", "not JSON"),
    (b'{"kind": "ShareCountsObserved",', "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"ShareCountsObserved"', "not a JSON object"),
    (_raw(kind=...), "missing 'kind'"),
    (_raw(kind=7), "missing 'kind'"),
    (_raw(kind="GridMeasured"), "not allowed on shares"),
    (_raw(accepted=-1), "accepted"),
    (_raw(accepted="many"), "accepted"),
    (_raw(ts="2026-11-21T12:00:00"), "ts"),
    (_raw(ts="yesterday"), "ts"),
    (_raw(worker=...), "worker"),
    (_raw(site=""), "site"),
    (_raw(event_id="not-a-uuid"), "event_id"),
    (_raw(schema_version=99), "newer than this build"),
    (_raw(schema_version=0), "invalid schema_version"),
])
def test_malformed_records_raise_decode_error_with_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode("shares", raw)
    assert reason in err.value.reason


def test_unknown_fields_are_tolerated() -> None:
    e = decode("shares", _raw(firmware="x"))
    assert isinstance(e, ShareCountsObserved)


def test_upcast_chain_applies_each_step_in_order() -> None:
    table = {
        ("K", 1): lambda d: {"b": d.pop("a"), **d},
        ("K", 2): lambda d: {**d, "c": d["b"] * 2},
    }
    assert upcast({"kind": "K", "schema_version": 1, "a": 2}, 3, table) == \
        {"kind": "K", "schema_version": 3, "b": 2, "c": 4}
    with pytest.raises(UpcastError, match="no upcaster for K v1"):
        upcast({"kind": "K", "schema_version": 1}, 2, {})


class ShareCountsV2(ShareCountsObserved):
    """v2 renames ``stale`` to ``stale_shares`` (a test-only evolution)."""

    SCHEMA_VERSION = 2
    schema_version: int = Field(default=2, ge=1)
    stale_shares: int = Field(default=0, ge=0)


def test_codec_upcasts_old_versions_before_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas import registry

    spec = dataclasses.replace(registry.topic("shares"), models=(ShareCountsV2,))
    monkeypatch.setitem(registry.BY_NAME, "shares", spec)
    monkeypatch.setitem(UPCASTERS, ("ShareCountsObserved", 1),
                        lambda d: {**d, "stale_shares": d.pop("stale", 0)})
    e = decode("shares", _raw(stale=4))
    assert isinstance(e, ShareCountsV2) and e.schema_version == 2 and e.stale_shares == 4


def test_a_new_version_must_be_the_fields_default() -> None:
    # a producer that does not spell the version gets the class's, so the class declares it
    with pytest.raises(TypeError, match="SCHEMA_VERSION is 3 but schema_version defaults to 1"):
        type("ShareCountsV3", (ShareCountsObserved,), {"SCHEMA_VERSION": 3,
                                                       "__module__": __name__})
    e = ShareCountsV2.model_validate_json(_raw())
    assert e.schema_version == 1  # a v1 record stays v1 (and is upcast by decode)
    unspelled = orjson.loads(_raw())
    del unspelled["schema_version"]
    assert ShareCountsV2.model_validate(unspelled).schema_version == 2


def test_upcaster_registry_refuses_a_second_registration() -> None:
    with pytest.raises(ValueError, match="already registered"):
        upcaster("X", 1)(lambda d: d)
        upcaster("X", 1)(lambda d: d)
    UPCASTERS.pop(("X", 1), None)


def test_dead_letter_keeps_reason_and_truncates_raw_to_4kib() -> None:
    raw = b"x" * (RAW_LIMIT + 100)
    d = dead_letter(source_topic="shares", raw=raw, reason="not JSON", site="s", source="t",
                    ts=T0, key=b"w1", partition=3, offset=42)
    assert d.device_id == "w1" and d.partition == 3 and d.offset == 42
    assert base64.b64decode(d.raw) == raw[:RAW_LIMIT] and d.raw_truncated
    assert decode("dlq", encode(d)) == d
