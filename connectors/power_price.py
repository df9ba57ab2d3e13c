"""Power price files: a day-ahead or real-time price list as CSV or JSON (issue 20, in
progress: the connector that polls a file or an HTTP endpoint and publishes each interval as
an event builds on this parser).

One row per interval, by column name (case and spaces ignored):

* ``start``: ISO-8601 (UTC when no zone is given) or epoch seconds;
* ``end``, or ``minutes`` (the interval's length); neither: the gap to the next row's start;
* ``price``: per MWh (``price_per_mwh``, ``lmp`` and ``settlement point price`` are the same
  column); ``price_per_kwh`` is taken x1000;
* ``currency`` (optional; one per file).

JSON is a list of such objects, or ``{"currency": ..., "prices": [...]}``.  A row that cannot
be read is not guessed at: it is returned as a problem naming its row and what is wrong (the
connector sends it to ``dlq``), and the rest of the file is used.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Interval:
    """A price over [start, end) (epoch seconds), per MWh, as the file gave it (the
    connector publishes it as an event; the agents keep their own schedule of them)."""

    start: float
    end: float
    price_per_mwh: float


PRICE_COLUMNS = {
    "price": 1.0,
    "price_per_mwh": 1.0,
    "lmp": 1.0,
    "settlement_point_price": 1.0,
    "price_per_kwh": 1000.0,
}
#: Prices a market publishes stay within this band (negative prices happen, with surplus
#: wind); outside it a row is a unit or parsing mistake, not a price.
PLAUSIBLE_PER_MWH = (-10_000.0, 100_000.0)


@dataclass
class PriceFile:
    """What a price file held: its intervals, its currency, and the rows it refused."""

    intervals: list[Interval] = field(default_factory=list)
    currency: str = ""
    problems: list[str] = field(default_factory=list)


def _norm(key: str) -> str:
    return "_".join(key.strip().lower().replace("-", " ").split())


def _time(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"time {value!r} is not finite")
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _row(raw: dict[str, Any]) -> tuple[float, float | None, float, str]:
    row = {_norm(k): v for k, v in raw.items() if k is not None}
    if "start" not in row or row["start"] in (None, ""):
        raise ValueError("no start")
    start = _time(row["start"])
    price = None
    for col, scale in PRICE_COLUMNS.items():
        if row.get(col) not in (None, ""):
            value = float(row[col])
            if not math.isfinite(value):
                raise ValueError(f"{col} {row[col]!r} is not a number")
            price = value * scale
            break
    if price is None:
        raise ValueError("no price (a price, price_per_mwh, lmp or price_per_kwh column)")
    if not PLAUSIBLE_PER_MWH[0] <= price <= PLAUSIBLE_PER_MWH[1]:
        raise ValueError(f"price {price:g} per MWh is outside {PLAUSIBLE_PER_MWH}")
    end: float | None = None
    if row.get("end") not in (None, ""):
        end = _time(row["end"])
    elif row.get("minutes") not in (None, ""):
        end = start + float(row["minutes"]) * 60.0
    if end is not None and not end > start:
        raise ValueError("the interval ends before it starts")
    return start, end, price, str(row.get("currency") or "").strip().upper()


def parse(text: str, fmt: str) -> PriceFile:
    """Read a price file of format ``csv`` or ``json``."""
    out = PriceFile()
    rows: list[Any]
    if fmt == "json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            out.problems.append(f"not JSON: {exc}")
            return out
        if isinstance(doc, dict):
            out.currency = str(doc.get("currency") or "").upper()
            doc = doc.get("prices")
        if not isinstance(doc, list):
            out.problems.append('JSON: expected a list of intervals or {"prices": [...]}')
            return out
        rows = doc
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise ValueError(f"unknown price file format {fmt!r} (csv or json)")
    read: list[tuple[int, float, float | None, float]] = []
    for n, raw in enumerate(rows, start=1):
        where = f"row {n}" if fmt == "json" else f"line {n + 1}"
        if not isinstance(raw, dict):
            out.problems.append(f"{where}: not an object")
            continue
        try:
            start, end, price, currency = _row(raw)
        except (ValueError, TypeError) as exc:
            out.problems.append(f"{where}: {exc}")
            continue
        if currency:
            if out.currency and currency != out.currency:
                out.problems.append(f"{where}: currency {currency}, the file's is {out.currency}")
                continue
            out.currency = currency
        read.append((n, start, end, price))
    read.sort(key=lambda r: r[1])
    for k, (n, start, end, price) in enumerate(read):
        if end is None:
            nxt = read[k + 1][1] if k + 1 < len(read) else None
            if nxt is None or nxt <= start:
                out.problems.append(f"row {n}: no end, and no later row to end it")
                continue
            end = nxt
        out.intervals.append(Interval(start, end, price))
    return out
