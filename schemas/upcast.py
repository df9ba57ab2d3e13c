"""Upcasting of old event versions, keyed on (kind, schema_version).

An upcaster turns the dict of version N of a kind into version N+1.  The codec and replay
both call :func:`upcast` before validation, so a consumer only ever sees current models and
the ClickHouse log can keep every version it ever stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Record = dict[str, Any]
Upcaster = Callable[[Record], Record]

#: (kind, from_version) -> function producing from_version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(kind: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``fn`` as the upcaster of ``kind`` from ``from_version`` to the next."""

    def register(fn: Upcaster) -> Upcaster:
        key = (kind, from_version)
        if key in UPCASTERS:
            raise ValueError(f"upcaster for {kind} v{from_version} already registered")
        UPCASTERS[key] = fn
        return fn

    return register


class UpcastError(ValueError):
    """A record's version cannot be brought to the current one."""


def upcast(
    record: Record, current: int, table: Mapping[tuple[str, int], Upcaster] | None = None
) -> Record:
    """Bring ``record`` to ``current`` schema_version through the registered upcasters."""
    table = UPCASTERS if table is None else table
    kind = str(record.get("kind", ""))
    version = record.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise UpcastError(f"invalid schema_version {version!r}")
    if version > current:
        raise UpcastError(f"{kind} v{version} is newer than this build's v{current}")
    while version < current:
        fn = table.get((kind, version))
        if fn is None:
            raise UpcastError(f"no upcaster for {kind} v{version} -> v{version + 1}")
        record = dict(fn(dict(record)))
        version += 1
        record["schema_version"] = version
    return record
