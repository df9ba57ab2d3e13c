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
from collections.abc import Iterable
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
    """A market price over [start, end) (epoch seconds), per MWh."""

    start: float
    end: float
    price_per_mwh: float


class PriceSchedule:
    """Prices by interval: the day-ahead hours and the real-time intervals as they are
    published.  A later publication of an interval replaces it; a time outside every
    interval has no price (None): no price-aware decision is taken on a guess."""

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        self._by_start: dict[float, Interval] = {}
        self._starts: list[float] = []
        for i in intervals:
            self.put(i)

    def put(self, interval: Interval) -> None:
        """Add or replace an interval (keyed by its start)."""
        if interval.end <= interval.start:
            raise ValueError(f"interval ends ({interval.end}) before it starts ({interval.start})")
        if interval.start not in self._by_start:
            bisect.insort(self._starts, interval.start)
        self._by_start[interval.start] = interval

    def at(self, t: float) -> float | None:
        """The price in force at ``t`` (the latest interval starting at or before it that
        has not ended), or None."""
        k = bisect.bisect_right(self._starts, t)
        if k == 0:
            return None
        i = self._by_start[self._starts[k - 1]]
        return i.price_per_mwh if t < i.end else None

    def forget_before(self, t: float) -> None:
        """Drop intervals that ended before ``t`` (keeps the state small)."""
        keep = [s for s in self._starts if self._by_start[s].end > t]
        for s in self._starts:
            if self._by_start[s].end <= t:
                del self._by_start[s]
        self._starts = keep

    def __len__(self) -> int:
        return len(self._starts)
