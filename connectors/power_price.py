"""The power price feed: a day-ahead or real-time price list as CSV or JSON, in a file or at
an HTTP endpoint, re-read every ``poll_s``; each interval new or changed since the last read
is published as a ``PowerPriceObserved`` on ``prices`` (and the inventory's hashprice as a
``HashpriceObserved``).

One row per interval, by column name (case and spaces ignored):

* ``start``: ISO-8601 (UTC when no zone is given) or epoch seconds;
* ``end``, or ``minutes`` (the interval's length); neither: the gap to the next row's start;
* ``price``: per MWh (``price_per_mwh``, ``lmp`` and ``settlement point price`` are the same
  column); ``price_per_kwh`` is taken x1000;
* ``currency`` (optional; one per file);
* ``market`` (optional): ``day_ahead`` or ``real_time`` (``da``/``rt``); else the
  inventory entry's.

JSON is a list of such objects, or ``{"currency": ..., "prices": [...]}``.  A row that cannot
be read is not guessed at: it is returned as a problem naming its row and what is wrong (the
connector sends it to ``dlq``), and the rest of the file is used.  A file in another
currency than the site's is refused whole: prices and the hashprice must be in one currency.
A source that cannot be read (missing file, HTTP error, timeout) is counted as the
connector's error and tried again at the next poll; what was published stays in force.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import httpx

from connectors.base import ConnectorError, Emitter, every
from schemas.envelope import Event
from schemas.events import HashpriceObserved, PowerPriceObserved

SOURCE = "connector:price"
_NS = uuid5(NAMESPACE_URL, "hashplane:price")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Interval:
    """A price over [start, end) (epoch seconds), per MWh, as the file gave it (the
    connector publishes it as an event; the agents keep their own schedule of them)."""

    start: float
    end: float
    price_per_mwh: float
    market: str = ""  # day_ahead, real_time, or "" (the feed's)


MARKETS = {"day_ahead": "day_ahead", "da": "day_ahead", "dam": "day_ahead",
           "real_time": "real_time", "rt": "real_time", "rtm": "real_time"}
#: A market interval is minutes to a day; a week is a mistake, not an interval.
LONGEST_S = 7 * 86_400.0
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


def _row(raw: dict[str, Any]) -> tuple[float, float | None, float, str, str]:
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
    if end is not None and end - start > LONGEST_S:
        raise ValueError(f"an interval of {(end - start) / 86_400:g} days is not a market "
                         "interval")
    market = ""
    if row.get("market") not in (None, ""):
        market = MARKETS.get(_norm(str(row["market"])), "")
        if not market:
            raise ValueError(f"market {row['market']!r}: day_ahead or real_time")
    return start, end, price, str(row.get("currency") or "").strip().upper(), market


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
    read: list[tuple[int, float, float | None, float, str]] = []
    for n, raw in enumerate(rows, start=1):
        where = f"row {n}" if fmt == "json" else f"line {n + 1}"
        if not isinstance(raw, dict):
            out.problems.append(f"{where}: not an object")
            continue
        try:
            start, end, price, currency, market = _row(raw)
        except (ValueError, TypeError) as exc:
            out.problems.append(f"{where}: {exc}")
            continue
        if currency:
            if out.currency and currency != out.currency:
                out.problems.append(f"{where}: currency {currency}, the file's is {out.currency}")
                continue
            out.currency = currency
        read.append((n, start, end, price, market))
    read.sort(key=lambda r: r[1])
    for k, (n, start, end, price, market) in enumerate(read):
        if end is None:
            nxt = read[k + 1][1] if k + 1 < len(read) else None
            if nxt is None or nxt <= start:
                out.problems.append(f"row {n}: no end, and no later row to end it")
                continue
            end = nxt
            if end - start > LONGEST_S:
                out.problems.append(f"row {n}: no end, and the next row starts a week later")
                continue
        out.intervals.append(Interval(start, end, price, market))
    return out


#: A hashprice document's value and its unit: per TH/s per day, or per PH/s per day (how
#: Luxor's Hashrate Index quotes it).
HASHPRICE_KEYS = {"hashprice_per_th_day": 1.0, "hashprice_th": 1.0,
                  "hashprice_per_ph_day": 1000.0, "hashprice_ph": 1000.0, "hashprice": 1.0}


def parse_hashprice(text: str) -> tuple[float, str]:
    """(per TH/s per day, currency or '') from a JSON object such as
    ``{"hashprice_per_ph_day": 48.1, "currency": "USD"}``; ValueError naming what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object with hashprice_per_th_day or "
                         "hashprice_per_ph_day")
    row = {_norm(k): v for k, v in doc.items() if isinstance(k, str)}
    for key, per in HASHPRICE_KEYS.items():
        if key in row:
            raw = row[key]
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise ValueError(f"{key} {raw!r} is not a number")
            try:
                value = float(raw) / per
            except ValueError:
                raise ValueError(f"{key} {raw!r} is not a number") from None
            if not math.isfinite(value) or not 0 <= value <= 1_000:
                raise ValueError(f"hashprice {value:g} per TH/s per day is outside 0..1000")
            return value, str(row.get("currency") or "").strip().upper()
    raise ValueError("no hashprice_per_th_day or hashprice_per_ph_day")


def sniff(source: str, text: str) -> str:
    """A source's format from its name (``.csv``/``.json``), else from its first byte."""
    name = source.split("?", 1)[0].lower()
    if name.endswith(".json"):
        return "json"
    if name.endswith(".csv"):
        return "csv"
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


class PriceFeed:
    """Read ``entry.source`` every ``poll_s``; publish what is new; dead-letter what is not
    a price.  Event ids are derived from the content (feed, market, interval, price), so a
    re-read after a restart publishes records the sinks already hold under the same ids."""

    MAX_BYTES = 8 * 1024 * 1024

    def __init__(self, entry: Any, emitter: Emitter, *, currency: str,
                 device_id: str = "price", timeout_s: float = 10.0) -> None:
        self.entry, self.emitter, self.device_id = entry, emitter, device_id
        self.currency, self.timeout_s = currency, timeout_s
        self._published: dict[tuple[str, float], tuple[float, float]] = {}
        self._hashprice: float | None = None

    async def read(self, client: httpx.AsyncClient, src: str | None = None) -> str:
        """A source's text (file or URL; the price list by default), at most
        ``MAX_BYTES``."""
        src = src or self.entry.source
        if src.startswith(("http://", "https://")):
            async with client.stream("GET", src, timeout=self.timeout_s) as r:
                if r.status_code != 200:
                    raise ConnectorError(f"{src}: HTTP {r.status_code}")
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > self.MAX_BYTES:
                        raise ConnectorError(f"{src}: larger than {self.MAX_BYTES} bytes")
            return body.decode("utf-8", errors="replace")
        return await asyncio.to_thread(self._read_file, Path(src))

    def _read_file(self, path: Path) -> str:
        with path.open("rb") as f:
            body = f.read(self.MAX_BYTES + 1)
        if len(body) > self.MAX_BYTES:
            raise ConnectorError(f"{path}: larger than {self.MAX_BYTES} bytes")
        return body.decode("utf-8", errors="replace")

    async def poll(self, client: httpx.AsyncClient) -> int:
        """One read: publish the new and changed intervals; return how many."""
        out: list[Event] = []
        now = self.emitter.clock()
        hp = self.entry.hashprice_per_th_day
        if self.entry.hashprice_source:
            hp = await self.read_hashprice(client, hp)
        if hp is not None and hp != self._hashprice:
            out.append(HashpriceObserved(
                event_id=uuid5(_NS, f"{self.emitter.site}/hashprice/{hp}/{now.isoformat()}"),
                site=self.emitter.site, device_id="hashprice", ts=now, source=SOURCE,
                hashprice_per_th_day=hp, currency=self.currency))
            self._hashprice = hp
        try:
            text = await self.read(client)
        except (OSError, httpx.HTTPError, ConnectorError) as exc:
            self.emitter.error(exc)
            log.warning("price feed %s: %s", self.entry.source, exc)
            await self.emitter.emit(out)
            return 0
        fmt = self.entry.format if self.entry.format != "auto" else sniff(self.entry.source, text)
        got = parse(text, fmt)
        currency = got.currency or self.entry.currency or self.currency
        raw = text[:4096].encode()
        if currency != self.currency:
            await self.emitter.dead("prices", raw, f"{self.entry.source}: prices in {currency}, "
                                    f"the site's currency is {self.currency} "
                                    "(HASHPLANE_CURRENCY)", key=self.device_id)
            await self.emitter.emit(out)
            return 0
        for problem in got.problems:
            await self.emitter.dead("prices", raw, f"{self.entry.source}: {problem}",
                                    key=self.device_id)
        for i in got.intervals:
            market = i.market or self.entry.market
            key = (market, i.start)
            if self._published.get(key) == (i.end, i.price_per_mwh):
                continue
            try:
                e = PowerPriceObserved(
                    event_id=uuid5(_NS, f"{self.emitter.site}/{self.device_id}/{market}/"
                                        f"{i.start}/{i.end}/{i.price_per_mwh}"),
                    site=self.emitter.site, device_id=self.device_id, ts=now, source=SOURCE,
                    market=market, interval_start=datetime.fromtimestamp(i.start, UTC),  # type: ignore[arg-type]
                    interval_end=datetime.fromtimestamp(i.end, UTC),
                    price_per_mwh=i.price_per_mwh, currency=currency)
            except (ValueError, OverflowError, OSError) as exc:  # a time no clock can hold
                await self.emitter.dead("prices", raw, f"{self.entry.source}: interval "
                                        f"{i.start}: {exc}"[:1000], key=self.device_id)
                continue
            out.append(e)
            self._published[key] = (i.end, i.price_per_mwh)
        horizon = now.timestamp() - 2 * 86_400.0  # forget what ended two days ago
        for k in [k for k, (end, _) in self._published.items() if end < horizon]:
            del self._published[k]
        await self.emitter.emit(out)
        return len(out)

    async def read_hashprice(self, client: httpx.AsyncClient,
                             fallback: float | None) -> float | None:
        """The hashprice feed's value (``parse_hashprice``); on a failure or a refusal the
        last one read, else ``fallback``."""
        src = self.entry.hashprice_source
        last = self._hashprice if self._hashprice is not None else fallback
        try:
            text = await self.read(client, src)
        except (OSError, httpx.HTTPError, ConnectorError) as exc:
            self.emitter.error(exc)
            log.warning("hashprice feed %s: %s", src, exc)
            return last
        try:
            value, currency = parse_hashprice(text)
        except ValueError as exc:
            await self.emitter.dead("prices", text[:4096].encode(), f"{src}: {exc}",
                                    key="hashprice")
            return last
        if currency and currency != self.currency:
            await self.emitter.dead("prices", text[:4096].encode(), f"{src}: hashprice in "
                                    f"{currency}, the site's currency is {self.currency} "
                                    "(HASHPLANE_CURRENCY)", key="hashprice")
            return last
        return value

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient() as client:
            async def tick() -> None:
                await self.poll(client)
            await every(self.entry.poll_s, stop, tick)
