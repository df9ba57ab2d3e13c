"""Money: a unit's revenue, power cost and profit, its breakeven power price, and the price
schedule in force.  Pure functions (STYLE.md 1); the profit agent and the price-aware
curtailment of the energy agent build on them (issue 20, in progress).

Units: power prices are per MWh, the hashprice is revenue per TH/s per day (the field's
convention: Luxor's Hashrate Index, Braiins' hashprice), both in one currency.

Breakeven.  A miner of efficiency ``e`` J/TH making ``h`` TH/s draws ``e*h`` W and earns
``hashprice*h`` per day while using ``e*h*24/1e6`` MWh a day, so it pays for its power
exactly when the price is ``hashprice * 1e6 / (24 * e)`` per MWh, whatever its size.  A
price above a unit's breakeven plus the operator's margin makes it lose money: the least
efficient units cross first, which is why price-aware curtailment can be stated as one
efficiency limit (``max_j_per_th``) for the whole fleet.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

HOURS_PER_DAY = 24.0


def breakeven_per_mwh(hashprice_per_th_day: float, j_per_th: float) -> float:
    """The power price (per MWh) at which a miner of ``j_per_th`` earns what its power
    costs; infinite for a unit that draws nothing."""
    if j_per_th <= 0:
        return math.inf
    return hashprice_per_th_day * 1e6 / (HOURS_PER_DAY * j_per_th)


def max_j_per_th(
    price_per_mwh: float, hashprice_per_th_day: float, margin_per_mwh: float = 0.0
) -> float | None:
    """The least efficient a miner may be and still run: above this J/TH its breakeven
    plus ``margin_per_mwh`` is below the price.  None when every miner pays (the price
    is at or below the margin)."""
    over = price_per_mwh - margin_per_mwh
    if over <= 0:
        return None
    return hashprice_per_th_day * 1e6 / (HOURS_PER_DAY * over)


@dataclass(frozen=True, slots=True)
class Money:
    """What a unit earned and spent over a span of time (one currency)."""

    energy_kwh: float = 0.0
    revenue: float = 0.0
    power_cost: float = 0.0

    @property
    def profit(self) -> float:
        """Revenue minus power cost."""
        return self.revenue - self.power_cost

    def __add__(self, other: Money) -> Money:
        return Money(
            self.energy_kwh + other.energy_kwh,
            self.revenue + other.revenue,
            self.power_cost + other.power_cost,
        )


def accrue(
    power_kw: float,
    hashrate_ths: float,
    seconds: float,
    price_per_mwh: float,
    hashprice_per_th_day: float,
) -> Money:
    """What a unit running at ``power_kw`` and ``hashrate_ths`` for ``seconds`` earned
    and spent at a constant price and hashprice."""
    if seconds <= 0:
        return Money()
    kwh = power_kw * seconds / 3600.0
    return Money(
        energy_kwh=kwh,
        revenue=hashrate_ths * hashprice_per_th_day * seconds / 86400.0,
        power_cost=kwh / 1000.0 * price_per_mwh,
    )


@dataclass(frozen=True, slots=True)
class Interval:
    """A market price over [start, end) (epoch seconds), per MWh; ``real_time`` for the
    real-time market's intervals, which override the day-ahead hour they fall in."""

    start: float
    end: float
    price_per_mwh: float
    real_time: bool = False


class PriceSchedule:
    """Prices by interval: the day-ahead hours and the real-time intervals as they are
    published.  A later publication of an interval (same start, same market) replaces it.
    At a time covered by both markets the real-time price is in force; a time outside every
    interval has no price (None): no price-aware decision is taken on a guess."""

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        self._by_key: dict[tuple[float, bool], Interval] = {}
        self._keys: list[tuple[float, bool]] = []  # sorted by start
        self._longest = 0.0
        for i in intervals:
            self.put(i)

    def put(self, interval: Interval) -> None:
        """Add or replace an interval (keyed by its start and market)."""
        if interval.end <= interval.start:
            raise ValueError(f"interval ends ({interval.end}) before it starts ({interval.start})")
        key = (interval.start, interval.real_time)
        if key not in self._by_key:
            bisect.insort(self._keys, key)
        self._by_key[key] = interval
        self._longest = max(self._longest, interval.end - interval.start)

    def interval_at(self, t: float) -> Interval | None:
        """The interval in force at ``t``: of those covering it, a real-time one before a
        day-ahead one, then the latest to start."""
        best: Interval | None = None
        for k in range(bisect.bisect_right(self._keys, (t, True)) - 1, -1, -1):
            start, _ = self._keys[k]
            if start < t - self._longest:
                break  # no earlier interval reaches t
            i = self._by_key[self._keys[k]]
            if t < i.end and (best is None or (i.real_time and not best.real_time)):
                best = i
                if i.real_time:
                    break
        return best

    def at(self, t: float) -> float | None:
        """The price in force at ``t`` (``interval_at``), or None."""
        i = self.interval_at(t)
        return None if i is None else i.price_per_mwh

    def forget_before(self, t: float) -> bool:
        """Drop intervals that ended at or before ``t`` (keeps the state small); True when
        any was dropped."""
        gone = [k for k in self._keys if self._by_key[k].end <= t]
        for k in gone:
            del self._by_key[k]
        if gone:
            self._keys = [k for k in self._keys if k in self._by_key]
        return bool(gone)

    def __iter__(self) -> Iterator[Interval]:
        return (self._by_key[k] for k in self._keys)

    def __len__(self) -> int:
        return len(self._keys)
