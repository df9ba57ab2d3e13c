"""Money: a unit's revenue, power cost and profit, its breakeven power price, and the price
schedule in force: pure functions (STYLE.md 1) that the energy agent's price-aware
curtailment builds on; and the profit agent (state, step and spec, at the end).

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from agents.spec import AgentSpec, Durable, members
from schemas.events import (
    AsicTelemetryObserved,
    GpuTelemetryObserved,
    HashpriceObserved,
    PowerPriceObserved,
)
from schemas.metrics import ProfitComputed
from schemas.settings import Settings

HOURS_PER_DAY = 24.0
SOURCE = "agent:profit"
_NS = uuid5(NAMESPACE_URL, "hashplane:profit")

ProfitInput = (AsicTelemetryObserved | GpuTelemetryObserved | PowerPriceObserved
               | HashpriceObserved)


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


# -- the profit agent --------------------------------------------------------------------------
#
# Per event-time window (``profit_window_s``) it accrues, for each ASIC and each GPU rig, the
# energy it used, what its hashrate earned at the hashprice and what its power cost at the
# power price in force, and publishes a final ``ProfitComputed`` per unit and for the site
# when the window closes (``profit_grace_s`` of event time after its end, for late
# readings).  Between two readings of a device the earlier one holds (left-constant); a gap
# longer than ``profit_max_gap_s`` (a silent device) is not accrued, and neither is time
# without a price or a hashprice in force: no money on a guess (``seconds`` says how much of
# the window was priced).  A GPU rig earns its hashrate (MH/s) times
# ``gpu_revenue_per_mh_day``, the configured revenue of the rigs' algorithm (0 by default:
# power cost only, as what a GPU's hashrate earns depends on the algorithm and coin).
#
# Every device's open windows are a durable key of their own (only the device a reading
# changed is written); the price schedule, the hashprice and the closed windows are the
# site's key.  A reading redelivered changes nothing (its interval is empty).

@dataclass(frozen=True, slots=True)
class ProfitParams:
    """Configuration of the profit agent (from Settings)."""

    window_s: float = 900.0
    grace_s: float = 30.0
    max_gap_s: float = 120.0
    hashprice: float | None = None  # per TH/s per day, until a HashpriceObserved says
    currency: str = "USD"
    gpu_revenue_per_mh_day: float = 0.0  # what the rigs' algorithm earns per MH/s per day


@dataclass(slots=True)
class Unit:
    """One device as the profit agent knows it: its last reading and its open windows
    (window start -> [seconds, kWh, TH/s x s, revenue, power cost])."""

    scope: str
    subject: str
    ts: float
    kw: float
    ths: float  # ASICs: TH/s
    windows: dict[float, list[float]] = field(default_factory=dict)
    mhs: float = 0.0  # GPUs: MH/s


@dataclass(slots=True)
class ProfitState:
    """One site's money.  Mutated in place by ``profit_step``."""

    prices: PriceSchedule = field(default_factory=PriceSchedule)
    hashprice: tuple[float, float] | None = None  # (per TH/s per day, since ts)
    currency: str = ""
    units: dict[str, Unit] = field(default_factory=dict)  # device id -> unit
    closed_until: float = float("-inf")  # windows ending at or before this were published
    watermark: float = float("-inf")  # newest event time folded
    dirty: set[str] = field(default_factory=set)


def window_of(t: float, window_s: float) -> float:
    """Start of the window holding ``t``."""
    return float(math.floor(t / window_s) * window_s)


def _accrue_unit(state: ProfitState, u: Unit, a: float, b: float, p: ProfitParams) -> None:
    """Accrue [a, b) of the unit's last reading into its windows, split at their edges."""
    hp = hashprice_in_force(state.hashprice, p.hashprice)
    while a < b:
        w = window_of(a, p.window_s)
        end = min(b, w + p.window_s)
        price = state.prices.at(a)
        asic = u.scope == "asic"
        rate = hp if asic else p.gpu_revenue_per_mh_day
        if w + p.window_s > state.closed_until and price is not None and rate is not None:
            m = accrue(u.kw, u.ths if asic else u.mhs, end - a, price, rate)
            acc = u.windows.setdefault(w, [0.0, 0.0, 0.0, 0.0, 0.0])
            acc[0] += end - a
            acc[1] += m.energy_kwh
            acc[2] += u.ths * (end - a)
            acc[3] += m.revenue
            acc[4] += m.power_cost
        a = end


def profit_step(state: ProfitState, event: ProfitInput, p: ProfitParams = ProfitParams(),
                ) -> tuple[ProfitState, list[ProfitComputed]]:
    """Fold a price, a hashprice or a reading; publish the windows it closes."""
    t = event.ts.timestamp()
    if isinstance(event, PowerPriceObserved | HashpriceObserved):
        state.hashprice = fold_price(state.prices, state.hashprice, event)
        if isinstance(event, PowerPriceObserved):
            state.currency = event.currency
        state.dirty.add("")
        return state, []
    if isinstance(event, AsicTelemetryObserved):
        scope, subject = "asic", event.device_id
        ths = event.hashrate_ths if event.state == "running" else 0.0
    else:
        scope, subject, ths = "rig", event.rig_id, 0.0
    mhs = event.hashrate_mhs if isinstance(event, GpuTelemetryObserved) else 0.0
    kw = event.power_w / 1000.0
    u = state.units.get(event.device_id)
    if u is None:
        state.units[event.device_id] = Unit(scope, subject, t, kw, ths, mhs=mhs)
        state.dirty.add(event.device_id)
    elif t > u.ts:
        if t - u.ts <= p.max_gap_s:
            _accrue_unit(state, u, u.ts, t, p)
        u.ts, u.kw, u.ths, u.mhs = t, kw, ths, mhs
        state.dirty.add(event.device_id)
    state.watermark = max(state.watermark, t)
    return state, close(state, event.site, p)


def close(state: ProfitState, site: str, p: ProfitParams) -> list[ProfitComputed]:
    """Publish every window that ended ``grace_s`` before the watermark: each unit's and the
    site's (the sum of its units)."""
    edge = window_of(state.watermark - p.grace_s, p.window_s)  # windows before it are done
    if edge <= state.closed_until:
        return []
    starts = sorted({w for u in state.units.values() for w in u.windows if w < edge})
    hp = hashprice_in_force(state.hashprice, p.hashprice)
    out: list[ProfitComputed] = []
    for w in starts:
        by_unit: dict[tuple[str, str], list[float]] = {}  # a rig's GPUs are one unit
        for device, u in sorted(state.units.items()):
            acc = u.windows.pop(w, None)
            if acc is None:
                continue
            state.dirty.add(device)
            into = by_unit.setdefault((u.scope, u.subject), [0.0] * 5)
            for k in range(5):
                into[k] += acc[k]
        total = [math.fsum(a[k] for a in by_unit.values()) for k in range(5)]
        total[0] = max(a[0] for a in by_unit.values())  # the site's priced seconds
        out += [_metric(site, scope, subject, w, acc, hp, state, p)
                for (scope, subject), acc in sorted(by_unit.items())]
        out.append(_metric(site, "site", site, w, total, hp, state, p))
    state.closed_until = edge
    state.dirty.add("")
    return out


def flush(state: ProfitState, site: str, p: ProfitParams) -> list[ProfitComputed]:
    """Publish every open window, as at the end of a fold (the back-test's last window)."""
    state.watermark = max((w for u in state.units.values() for w in u.windows),
                          default=state.watermark) + p.window_s + p.grace_s
    return close(state, site, p) if not math.isinf(state.watermark) else []


def _metric(site: str, scope: str, subject: str, w: float, acc: list[float],
            hp: float | None, state: ProfitState, p: ProfitParams) -> ProfitComputed:
    seconds, kwh, th_s, revenue, cost = acc
    j = kwh * 3.6e6 / th_s if th_s > 0 else None
    start = datetime.fromtimestamp(w, UTC)
    return ProfitComputed(
        event_id=uuid5(_NS, f"{site}/{scope}/{subject}/{w}/{p.window_s}"), site=site,
        device_id=subject, ts=datetime.fromtimestamp(w + p.window_s, UTC), source=SOURCE,
        scope=scope,  # type: ignore[arg-type]
        subject=subject, window_s=int(p.window_s), window_start=start, final=True,
        currency=state.currency or p.currency, seconds=round(seconds, 6), energy_kwh=kwh,
        hashrate_ths=th_s / seconds if seconds else 0.0, revenue=revenue, power_cost=cost,
        profit=revenue - cost, j_per_th=None if j is None else round(j, 4),
        breakeven_per_mwh=None if j is None or hp is None else round(
            breakeven_per_mwh(hp, j), 4))


def profit_fold(events: Iterable[ProfitInput], p: ProfitParams = ProfitParams()) -> tuple[
        ProfitState, list[ProfitComputed]]:
    """Run ``profit_step`` over one site's events (replay and tests)."""
    state, out = ProfitState(), []
    for e in events:
        state, produced = profit_step(state, e, p)
        out += produced
    return state, out


def params(s: Settings) -> ProfitParams:
    """Profit configuration from Settings."""
    return ProfitParams(window_s=s.profit_window_s, grace_s=s.profit_grace_s,
                        max_gap_s=s.profit_max_gap_s, hashprice=s.hashprice_per_th_day,
                        currency=s.currency, gpu_revenue_per_mh_day=s.gpu_revenue_per_mh_day)


def fold_price(prices: PriceSchedule, hashprice: tuple[float, float] | None,
               e: PowerPriceObserved | HashpriceObserved) -> tuple[float, float] | None:
    """Fold a price interval into ``prices`` (a real-time one goes in front of the day-ahead
    hour) or a hashprice; return the hashprice (value, since) in force after it: the newest
    by event time wins."""
    if isinstance(e, HashpriceObserved):
        t = e.ts.timestamp()
        return (e.hashprice_per_th_day, t) if hashprice is None or t >= hashprice[1] \
            else hashprice
    prices.put(Interval(e.interval_start.timestamp(), e.interval_end.timestamp(),
                        e.price_per_mwh, real_time=e.market == "real_time"))
    return hashprice


def hashprice_in_force(observed: tuple[float, float] | None,
                       configured: float | None) -> float | None:
    """The newest observed hashprice, else the configured one."""
    return observed[0] if observed is not None else configured


def save_prices(prices: PriceSchedule, hashprice: tuple[float, float] | None) -> dict[str, Any]:
    """A price schedule and hashprice as a durable value (the energy and profit agents')."""
    return {"intervals": [[i.start, i.end, i.price_per_mwh, i.real_time] for i in prices],
            "hashprice": None if hashprice is None else list(hashprice)}


def load_prices(prices: PriceSchedule, v: dict[str, Any]) -> tuple[float, float] | None:
    """Put a saved schedule back into ``prices``; return the saved hashprice."""
    for start, end, price, real_time in v["intervals"]:
        prices.put(Interval(float(start), float(end), float(price), bool(real_time)))
    hp = v.get("hashprice")
    return None if hp is None else (float(hp[0]), float(hp[1]))


def _keys(state: ProfitState) -> Iterable[str]:
    return ("", *state.units)


def _save(state: ProfitState, key: str) -> Any:
    if key == "":
        return {**save_prices(state.prices, state.hashprice), "currency": state.currency,
                "closed_until": None if math.isinf(state.closed_until) else state.closed_until}
    u = state.units.get(key)
    if u is None:
        return None
    return [u.scope, u.subject, u.ts, u.kw, u.ths, [[w, *acc] for w, acc in u.windows.items()],
            u.mhs]


def _load(state: ProfitState, key: str, v: Any) -> None:
    if key == "":
        state.hashprice = load_prices(state.prices, v)
        state.currency = str(v.get("currency") or "")
        cu = v.get("closed_until")
        state.closed_until = float("-inf") if cu is None else float(cu)
        return
    scope, subject, ts, kw, ths, windows = v[:6]
    state.units[key] = Unit(str(scope), str(subject), float(ts), float(kw), float(ths),
                            {float(w[0]): [float(x) for x in w[1:]] for w in windows},
                            mhs=float(v[6]) if len(v) > 6 else 0.0)


SPEC = AgentSpec[ProfitState, ProfitParams](
    name="profit", source=SOURCE, inputs=members(ProfitInput), params=params,
    state=ProfitState, step=profit_step,
    durable=Durable(table="profit_units", keys=_keys, save=_save, load=_load,
                    ledger=(PowerPriceObserved, HashpriceObserved)))
