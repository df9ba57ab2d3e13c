"""Energy headroom and grid-frequency demand response of a site: pure state and step.

Supply is the sum of the feeds' capacity (their measured power when a sensor gives no
capacity) minus a safety margin; a feed silent for ``feed_stale_s`` leaves the sum, so a
dead sensor shrinks the headroom instead of hiding a supply loss.  With no fresh feed at all
the supply is unknown, not zero: nothing is emitted, so the scheduler keeps its last plan
instead of shedding the farm on a sensor outage (``feed_silent`` alerts say why).  At start
(and after a restart) the supply is also unknown until every configured feed has reported,
or, for feeds not configured or never heard of, until ``feed_stale_s`` of event time has
passed since the first one did (the staleness rule: by then a silent feed counts as gone):
one feed's reading is never taken for the whole site's supply.  The same holds when the
feeds come back after they all went silent.  With ``meter_stale_s`` set, a silent grid meter
means the same: no headroom, so no decision, until it reports again.  Load is
the latest draw of every ASIC and GPU from their telemetry (a device silent for
``device_stale_s`` leaves it).  Headroom = available - load.

Demand response: bands ``[(below_hz, fraction), ...]`` for the grid's nominal frequency (50
or 60 Hz, from the meter) map frequency to a target load = fraction x available supply.  A
band deepens at once (the grid wants the load gone within a second); it relaxes only after
the frequency has stayed at or above the band's edge + ``hysteresis_hz`` for ``hold_s``, so
a frequency chattering around an edge does not flap the fleet.

Operator cap: a ``CapSiteLoad`` command (topic ``commands.site``) caps the target load at
``limit_kw`` until it is lifted or its ``duration_s`` ends; the fold acks it (one ack per
command id, applied or expired) and publishes the headroom at once so the scheduler acts.

Price-aware curtailment: the power price in force (``PowerPriceObserved`` intervals on
``prices``; a real-time interval overrides the day-ahead hour it falls in) and the
hashprice (``HashpriceObserved``, else the configured value) give one efficiency limit,
``max_j_per_th``: an ASIC less efficient than it loses money at the price plus
``price_margin_per_mwh`` (agents/profit.py).  The limit tightens at once and relaxes, like a
band, only after the price has stayed low enough for ``price_hold_s``, and only as far as the
price plus ``price_hysteresis_per_mwh`` allows.  The scheduler sleeps the ASICs above it,
least efficient first; the bands' target load still applies, so the bands win when they ask
for less.  With no price in force there is no limit: no decision is taken on a guess.

Time is event time: "now" is the time of the meter or feed reading being folded.  The live
agent adds one guard on processing time (``publishable``: the clock is its input), which
the fold of recorded history does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from agents.profit import (
    PriceSchedule,
    fold_price,
    hashprice_in_force,
    load_prices,
    max_j_per_th,
    save_prices,
)
from agents.spec import AgentSpec, Durable, members
from schemas.commands import CapSiteLoad, CommandAcknowledged
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GpuTelemetryObserved,
    GridMeasured,
    HashpriceObserved,
    PowerPriceObserved,
)
from schemas.metrics import EnergyHeadroomComputed
from schemas.settings import Settings

SOURCE = "agent:energy"
_NS = uuid5(NAMESPACE_URL, "hashplane:energy")

EnergyInput = (GridMeasured | FeedPowerMeasured | AsicTelemetryObserved | GpuTelemetryObserved
               | CapSiteLoad | PowerPriceObserved | HashpriceObserved)
EnergyOutput = EnergyHeadroomComputed | CommandAcknowledged


@dataclass(frozen=True, slots=True)
class EnergyParams:
    """Configuration of the headroom fold (from Settings)."""

    margin_kw: float = 10.0
    bands_50hz: Sequence[tuple[float, float]] = ((49.8, 0.5), (49.5, 0.0))
    bands_60hz: Sequence[tuple[float, float]] = ((59.8, 0.5), (59.5, 0.0))
    hysteresis_hz: float = 0.05
    hold_s: float = 30.0
    feed_stale_s: float = 10.0
    device_stale_s: float = 600.0
    emit_s: float = 1.0
    feeds: tuple[str, ...] = ()  # the site's configured supply feeds (ids)
    meter_stale_s: float = 0.0  # > 0: no decision without a meter reading this recent
    warmup_s: float = 0.0  # live agent: nothing published this long after its first event
    max_age_s: float = 0.0  # live agent: no headroom from a reading older than this (0: off)
    hashprice: float | None = None  # per TH/s per day, until a HashpriceObserved says
    price_margin: float = 0.0  # per MWh above breakeven before a unit is curtailed
    price_hysteresis: float = 2.0  # per MWh
    price_hold_s: float = 300.0

    def bands(self, nominal_hz: float) -> list[tuple[float, float]]:
        """Bands of a grid, shallowest edge first."""
        table = self.bands_60hz if abs(nominal_hz - 60.0) < abs(nominal_hz - 50.0) else \
            self.bands_50hz
        return sorted(table, key=lambda b: -b[0])


@dataclass(slots=True)
class EnergyState:
    """What one site's headroom is folded from.  Mutated in place by ``step``."""

    feeds: dict[str, tuple[float, float]] = field(default_factory=dict)  # feed -> (kW, ts)
    asics: dict[str, tuple[float, float]] = field(default_factory=dict)  # device -> (kW, ts)
    gpus: dict[str, tuple[float, float]] = field(default_factory=dict)
    frequency_hz: float | None = None
    nominal_hz: float = 50.0
    band: int = 0  # 0 = normal, i = below the i-th edge
    released_since: float | None = None  # frequency at/above the release level since
    last_emit: float = float("-inf")
    cap_kw: float | None = None  # operator cap (CapSiteLoad) and when it ends
    cap_until: float = float("inf")
    cap_commands: list[str] = field(default_factory=list)  # ids already acked (recent)
    last_reading: GridMeasured | FeedPowerMeasured | None = None
    first_feed_ts: float | None = None  # event time of the first feed reading folded
    meter_ts: float | None = None  # event time of the last grid reading
    live_since: float | None = None  # live agent: processing time of its first event
    prices: PriceSchedule = field(default_factory=PriceSchedule)
    hashprice: tuple[float, float] | None = None  # (per TH/s per day, since ts)
    limit: float = math.inf  # the efficiency limit in force, J/TH (inf: none)
    limit_relax_since: float | None = None
    dirty: set[str] = field(default_factory=set)  # durable keys changed ("cap", "price")

    def cap(self, now: float) -> float | None:
        """The operator cap in force at ``now``."""
        return self.cap_kw if now < self.cap_until else None


def band_name(bands: Sequence[tuple[float, float]], band: int) -> str:
    """Human name of a band index."""
    return "normal" if band == 0 else f"below-{bands[band - 1][0]:g}Hz"


def next_band(state: EnergyState, freq: float, now: float, p: EnergyParams) -> int:
    """The band in force after a frequency reading (deepen now, relax after hold)."""
    bands = p.bands(state.nominal_hz)
    deep = sum(1 for edge, _ in bands if freq < edge)
    if deep >= state.band:
        state.released_since = None
        return deep
    release = sum(1 for edge, _ in bands if freq < edge + p.hysteresis_hz)
    if release >= state.band:
        state.released_since = None
        return state.band
    if state.released_since is None:
        state.released_since = now
    if now - state.released_since >= p.hold_s:
        state.released_since = None
        return release
    return state.band


def price_input(state: EnergyState, e: PowerPriceObserved | HashpriceObserved) -> None:
    """Fold a price interval or a hashprice (``profit.fold_price``)."""
    state.hashprice = fold_price(state.prices, state.hashprice, e)
    state.dirty.add("price")


def hashprice(state: EnergyState, p: EnergyParams) -> float | None:
    """The hashprice in force: the newest observed, else the configured one."""
    return hashprice_in_force(state.hashprice, p.hashprice)


def next_limit(state: EnergyState, now: float, p: EnergyParams) -> bool:
    """Move the efficiency limit for the price in force at ``now`` (tighten now, relax after
    ``price_hold_s``, by the hysteresis less); True when it changed."""
    price, hp = state.prices.at(now), hashprice(state, p)

    def limit(at: float | None) -> float:
        j = None if at is None or hp is None else max_j_per_th(at, hp, p.price_margin)
        return math.inf if j is None else j

    wanted = limit(price)
    if wanted <= state.limit:
        state.limit_relax_since = None
        changed, state.limit = wanted < state.limit, wanted
        if changed:
            state.dirty.add("price")
        return changed
    relaxed = limit(None if price is None else price + p.price_hysteresis)
    if relaxed <= state.limit:
        state.limit_relax_since = None
        return False
    if state.limit_relax_since is None:
        state.limit_relax_since = now
        state.dirty.add("price")
    if now - state.limit_relax_since < p.price_hold_s:
        return False
    state.limit, state.limit_relax_since = relaxed, None
    state.dirty.add("price")
    return True


def supply_known(state: EnergyState, now: float, p: EnergyParams) -> bool:
    """Whether the supply can be judged at ``now``: a fresh feed, and either every
    configured feed has reported or the staleness period has passed since the first one."""
    if not any(now - ts <= p.feed_stale_s for _, ts in state.feeds.values()):
        return False  # no feed yet, or all silent
    if p.meter_stale_s > 0 and (state.meter_ts is None or now - state.meter_ts > p.meter_stale_s):
        return False  # the meter is silent: the band (and the grid) unknown
    if p.feeds and all(f in state.feeds for f in p.feeds):
        return True
    return state.first_feed_ts is not None and now - state.first_feed_ts >= p.feed_stale_s


def _fresh(readings: dict[str, tuple[float, float]], now: float, max_age: float) -> float:
    # fsum: exactly rounded, so the total does not depend on the order devices reported in
    return math.fsum(kw for kw, ts in readings.values() if now - ts <= max_age)


def step(state: EnergyState, event: EnergyInput,
         p: EnergyParams = EnergyParams()) -> tuple[EnergyState, list[EnergyOutput]]:
    """Fold one reading; meter and feed readings may emit the site's headroom."""
    t = event.ts.timestamp()
    if isinstance(event, CapSiteLoad):
        return state, cap(state, event, p)
    if isinstance(event, PowerPriceObserved | HashpriceObserved):
        price_input(state, event)
        return state, []
    if isinstance(event, AsicTelemetryObserved):
        _latest(state.asics, event.device_id, event.power_w / 1000.0, t)
        return state, []
    if isinstance(event, GpuTelemetryObserved):
        _latest(state.gpus, event.device_id, event.power_w / 1000.0, t)
        return state, []
    band_changed = False
    if isinstance(event, GridMeasured):
        state.meter_ts = t if state.meter_ts is None else max(state.meter_ts, t)
        state.nominal_hz = event.nominal_hz
        state.frequency_hz = event.frequency_hz
        new = next_band(state, event.frequency_hz, t, p)
        band_changed, state.band = new != state.band, new
    else:
        supply = event.capacity_kw if event.capacity_kw is not None else event.power_kw
        if not _latest(state.feeds, event.feed_id, supply, t):
            return state, []
        if state.first_feed_ts is None:
            state.first_feed_ts = t
    band_changed |= next_limit(state, t, p)  # the price's limit moves the target as a band
    state.last_reading = event
    cap_ended = state.cap_kw is not None and t >= state.cap_until
    if cap_ended:
        state.cap_kw, state.cap_until = None, float("inf")
        state.dirty.add("cap")
    if not band_changed and not cap_ended and t - state.last_emit < p.emit_s:
        return state, []
    if state.feeds and not any(t - ts <= p.feed_stale_s for _, ts in state.feeds.values()):
        # every feed went silent: when they come back it is as at a start (the first
        # one back is not the whole supply)
        state.feeds.clear()
        state.first_feed_ts = None
    if not supply_known(state, t, p):
        return state, []  # supply unknown (not every feed heard yet, or all silent)
    state.last_emit = t
    forget_stale(state, t, p)
    return state, [headroom(state, event, p)]


def cap(state: EnergyState, c: CapSiteLoad, p: EnergyParams) -> list[EnergyOutput]:
    """Apply an operator cap: ack it, and publish the headroom with the new target now."""
    cid = str(c.command_id)
    if cid in state.cap_commands:
        return []  # redelivered: acked already
    state.cap_commands = [*state.cap_commands[-63:], cid]
    now = max(c.ts, state.last_reading.ts) if state.last_reading is not None else c.ts
    if c.expired(now):
        return [_cap_ack(c, "expired", f"expired at {c.expires_at.isoformat()}")]
    state.cap_kw = c.limit_kw
    state.cap_until = (c.ts.timestamp() + c.duration_s
                       if c.limit_kw is not None and c.duration_s is not None else float("inf"))
    state.dirty.add("cap")
    detail = ("cap lifted" if c.limit_kw is None else
              f"site load capped at {c.limit_kw:g} kW"
              + (f" for {c.duration_s:g} s" if c.duration_s is not None else " until lifted"))
    out: list[EnergyOutput] = [_cap_ack(c, "applied", detail)]
    at = state.last_reading
    if at is not None and supply_known(state, at.ts.timestamp(), p):
        state.last_emit = at.ts.timestamp()
        out.append(headroom(state, at, p, when=c))
    return out


def _cap_ack(c: CapSiteLoad, status: str, detail: str) -> CommandAcknowledged:
    return CommandAcknowledged(
        event_id=uuid5(_NS, f"ack/{c.command_id}"), site=c.site, device_id=c.device_id,
        ts=c.ts, source=SOURCE, command_id=c.command_id, command_kind=c.kind,
        status=status,  # type: ignore[arg-type]
        detail=detail, latency_ms=0.0, actuator=SOURCE)


def _latest(readings: dict[str, tuple[float, float]], key: str, kw: float, t: float) -> bool:
    """Keep the newest reading per key; an older one arriving late changes nothing."""
    prev = readings.get(key)
    if prev is not None and prev[1] > t:
        return False
    readings[key] = (kw, t)
    return True


def headroom(state: EnergyState, at: GridMeasured | FeedPowerMeasured,
             p: EnergyParams, when: CapSiteLoad | None = None) -> EnergyHeadroomComputed:
    """The site's headroom metric as of the reading ``at`` (re-issued after a cap ``when``)."""
    now = at.ts.timestamp()
    supply = _fresh(state.feeds, now, p.feed_stale_s)
    asic = _fresh(state.asics, now, p.device_stale_s)
    gpu = _fresh(state.gpus, now, p.device_stale_s)
    available = supply - p.margin_kw
    load = asic + gpu
    bands = p.bands(state.nominal_hz)
    fraction = 1.0 if state.band == 0 else bands[state.band - 1][1]
    target = max(0.0, fraction * available)
    cap_kw = state.cap(now)
    if cap_kw is not None:
        target = min(target, cap_kw)
    key = f"{at.site}/{at.event_id}" + (f"/cap/{when.command_id}" if when is not None else "")
    # a metric re-issued for a cap is as of the cap (the newest word on the target)
    ts = max(at.ts, when.ts) if when is not None else at.ts
    return EnergyHeadroomComputed(
        event_id=uuid5(_NS, key), site=at.site, device_id=at.site,
        ts=ts, source=SOURCE, cap_kw=cap_kw, supply_kw=round(supply, 6), margin_kw=p.margin_kw,
        available_kw=round(available, 6), load_kw=round(load, 6), asic_load_kw=round(asic, 6),
        gpu_load_kw=round(gpu, 6), headroom_kw=round(available - load, 6),
        frequency_hz=state.frequency_hz, band=band_name(bands, state.band),
        target_load_kw=round(target, 6), price_per_mwh=state.prices.at(now),
        hashprice_per_th_day=hashprice(state, p),
        max_j_per_th=None if math.isinf(state.limit) else round(state.limit, 6))


def forget_stale(state: EnergyState, now: float, p: EnergyParams) -> None:
    """Drop devices silent past ``device_stale_s`` (decommissioned; keeps the maps small)
    and price intervals that have ended."""
    if state.prices.forget_before(now):
        state.dirty.add("price")
    for m in (state.asics, state.gpus):
        for k in [k for k, (_, ts) in m.items() if now - ts > p.device_stale_s]:
            del m[k]


def fold(events: Iterable[EnergyInput], p: EnergyParams = EnergyParams()) -> tuple[
        EnergyState, list[EnergyOutput]]:
    """Run ``step`` over one site's readings (replay and tests)."""
    state, out = EnergyState(), []
    for e in events:
        state, produced = step(state, e, p)
        out += produced
    return state, out


def publishable(state: EnergyState, event: Event, out: list[Event], now: datetime,
                p: EnergyParams) -> list[Event]:
    """What the live agent publishes of a step's outputs at processing time ``now``.

    After a (re)start the agent folds a backlog whose partitions arrive out of event-time
    step (one feed's partition read to the present while another's is still seconds
    behind): supply and load folded that way are short, and a scheduler acting on them would
    shed or wake ASICs for nothing.  No headroom is published for ``warmup_s`` after the
    first event, nor from a reading older than ``max_age_s``; the scheduler keeps its plan
    meanwhile, as when the supply is unknown.  An operator's cap is acked with its latency
    from issue to decision."""
    t = now.timestamp()
    if state.live_since is None:
        state.live_since = t
    warm = t - state.live_since >= p.warmup_s

    def held(o: EnergyHeadroomComputed) -> bool:
        return not warm or (p.max_age_s > 0 and (now - o.ts).total_seconds() > p.max_age_s)

    return [o.model_copy(update={"latency_ms": max(
                0.0, (now - event.issued_at).total_seconds() * 1000.0)})
            if isinstance(o, CommandAcknowledged) and isinstance(event, CapSiteLoad) else o
            for o in out if not (isinstance(o, EnergyHeadroomComputed) and held(o))]


def params(s: Settings) -> EnergyParams:
    """Headroom configuration from Settings."""
    return EnergyParams(
        margin_kw=s.energy_margin_kw, bands_50hz=tuple(s.bands_50hz),
        bands_60hz=tuple(s.bands_60hz), hysteresis_hz=s.band_hysteresis_hz, hold_s=s.band_hold_s,
        feed_stale_s=s.feed_stale_s, device_stale_s=s.device_stale_s, emit_s=s.energy_emit_s,
        feeds=tuple(s.supply_feeds), meter_stale_s=s.meter_stale_s,
        warmup_s=s.energy_warmup_s, max_age_s=s.energy_max_age_s,
        hashprice=s.hashprice_per_th_day, price_margin=s.price_margin_per_mwh,
        price_hysteresis=s.price_hysteresis_per_mwh, price_hold_s=s.price_hold_s)


def _save(state: EnergyState, key: str) -> Any:
    if key == "price":  # the schedule ahead, the hashprice and the limit in force
        if not len(state.prices) and state.hashprice is None and math.isinf(state.limit):
            return None
        return {**save_prices(state.prices, state.hashprice),
                "limit": None if math.isinf(state.limit) else state.limit,
                "relax_since": state.limit_relax_since}
    return None if state.cap_kw is None else [state.cap_kw, min(state.cap_until, 1e18)]


def _load(state: EnergyState, key: str, v: Any) -> None:
    if key == "price":
        state.hashprice = load_prices(state.prices, v)
        state.limit = math.inf if v.get("limit") is None else float(v["limit"])
        relax = v.get("relax_since")
        state.limit_relax_since = None if relax is None else float(relax)
        return
    state.cap_kw, state.cap_until = v[0], float(v[1])


SPEC = AgentSpec[EnergyState, EnergyParams](
    name="energy", source=SOURCE, inputs=members(EnergyInput), params=params,
    state=EnergyState, step=step, live=publishable, lane="control",
    durable=Durable(table="energy_caps", keys=lambda _: ("cap", "price"), save=_save,
                    load=_load, ledger=(CapSiteLoad, PowerPriceObserved, HashpriceObserved)))
