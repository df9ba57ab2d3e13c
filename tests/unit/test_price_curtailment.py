"""Price-aware curtailment, step by step: the energy agent's efficiency limit from the price
schedule and hashprice (tighten at once, relax after the hold and by the hysteresis less), and
the scheduler sleeping the ASICs above it, least efficient first, waking none of them.

Figures are computed by hand: with a hashprice of 0.05 per TH/s per day a miner breaks even
at 0.05e6 / (24 x J/TH) per MWh, so the limit at a price P (margin m) is 50000 / (24 (P - m))
J/TH: 100/MWh -> 20.8333 J/TH, 60/MWh -> 34.7222 J/TH."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from agents import energy, scheduler
from agents.energy import EnergyParams, EnergyState
from agents.scheduler import SchedulerParams
from schemas.commands import CommandAcknowledged, SleepAsic, WakeAsic
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GridMeasured,
    HashpriceObserved,
    PowerPriceObserved,
)
from schemas.metrics import EnergyHeadroomComputed
from tests.factories import T0

E = EnergyParams(margin_kw=0, feeds=("f1",), hold_s=30, price_hold_s=60, price_hysteresis=2.0,
                 hashprice=0.05, emit_s=1.0)
S = SchedulerParams(min_on_s=0, min_off_s=0, hysteresis_kw=0.5, wake_batch=100,
                    wake_interval_s=0, ttl_s=10)


def at(sec: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=sec)


def price(start: float, end: float, per_mwh: float, market: str = "day_ahead",
          ) -> PowerPriceObserved:
    return PowerPriceObserved(site="site-1", device_id="price:test", ts=at(start - 3600),
                              source="test", interval_start=at(start), interval_end=at(end),
                              price_per_mwh=per_mwh, currency="EUR", market=market)  # type: ignore[arg-type]


def feed(sec: float, kw: float = 1000.0) -> FeedPowerMeasured:
    return FeedPowerMeasured(site="site-1", device_id="f1", ts=at(sec), source="test",
                             feed_id="f1", voltage_v=400, current_a=100, power_kw=kw,
                             capacity_kw=kw)


def grid(sec: float, hz: float = 50.0) -> GridMeasured:
    return GridMeasured(site="site-1", device_id="meter", ts=at(sec), source="test",
                        frequency_hz=hz, voltage_v=400, active_power_kw=0,
                        reactive_power_kvar=0)


def tick(sec: float) -> list[FeedPowerMeasured | GridMeasured]:
    """One second of the site: the feed and the meter report."""
    return [feed(sec), grid(sec)]


def headrooms(events: list, p: EnergyParams = E) -> list[EnergyHeadroomComputed]:  # type: ignore[type-arg]
    _, out = energy.fold(events, p)
    return [o for o in out if isinstance(o, EnergyHeadroomComputed)]


def test_the_limit_is_the_breakeven_efficiency_at_the_price_in_force() -> None:
    out = headrooms([price(0, 3600, 100.0), feed(0), grid(1)])
    assert out[-1].price_per_mwh == 100.0 and out[-1].hashprice_per_th_day == 0.05
    assert out[-1].max_j_per_th == pytest.approx(50_000 / (24 * 100), abs=1e-6)  # 20.8333
    margin = headrooms([price(0, 3600, 100.0), feed(0), grid(1)],
                       replace(E, price_margin=40.0))
    assert margin[-1].max_j_per_th == pytest.approx(50_000 / (24 * 60), abs=1e-6)  # 34.7222


def test_no_price_or_no_hashprice_means_no_limit() -> None:
    assert headrooms([feed(0), grid(1)])[-1].max_j_per_th is None
    assert headrooms([price(0, 3600, 500.0), feed(0), grid(1)],
                     replace(E, hashprice=None))[-1].max_j_per_th is None
    # outside every published interval: no price, no decision on a guess
    out = headrooms([price(0, 60, 500.0), feed(100), grid(101)])
    assert out[-1].price_per_mwh is None and out[-1].max_j_per_th is None
    # a price at or below the margin (or negative): every miner pays
    assert headrooms([price(0, 3600, -20.0), feed(0), grid(1)])[-1].max_j_per_th is None


def test_an_observed_hashprice_replaces_the_configured_one() -> None:
    hp = HashpriceObserved(site="site-1", device_id="hashprice", ts=at(0), source="test",
                           hashprice_per_th_day=0.04, currency="EUR")
    out = headrooms([hp, price(0, 3600, 100.0), feed(0), grid(1)])
    assert out[-1].max_j_per_th == pytest.approx(40_000 / (24 * 100), abs=1e-6)


def test_real_time_overrides_the_day_ahead_hour_it_falls_in() -> None:
    events = [price(0, 3600, 50.0), price(600, 900, 200.0, "real_time"), feed(0)]
    out = headrooms([*events, *tick(300), *tick(700), *tick(1000)])
    by_sec = {round((o.ts - T0).total_seconds()): o.price_per_mwh for o in out}
    assert by_sec[300] == 50.0 and by_sec[700] == 200.0 and by_sec[1000] == 50.0


def test_the_limit_tightens_at_once_and_relaxes_after_the_hold_by_the_hysteresis_less(
) -> None:
    # 100/MWh for 10 minutes, then 60/MWh: the spike is acted on in the first reading of
    # its interval; the relaxation waits price_hold_s (60 s) of lower prices.
    events = [price(0, 600, 60.0), price(600, 1200, 100.0), price(1200, 3600, 60.0), feed(0)]
    events += [e for t in range(1, 1400, 10) for e in tick(t)]
    out = headrooms(events)
    limit = {round((o.ts - T0).total_seconds()): o.max_j_per_th for o in out}
    assert limit[591] == pytest.approx(34.722222, abs=1e-6)
    assert limit[601] == pytest.approx(20.833333, abs=1e-6)  # tightened on the first reading
    assert limit[1251] == pytest.approx(20.833333, abs=1e-6)  # held
    relaxed = 50_000 / (24 * 62.0)  # relaxed only as far as price + hysteresis allows
    assert limit[1261] == pytest.approx(relaxed, abs=1e-6)
    assert limit[1391] == pytest.approx(relaxed, abs=1e-6)  # and no further: no flapping


def test_a_price_chattering_around_a_level_does_not_relax_the_limit() -> None:
    events: list = []  # type: ignore[type-arg]
    for k in range(20):  # 30 s intervals alternating 100 and 99
        events.append(price(30 * k, 30 * (k + 1), 100.0 if k % 2 == 0 else 99.0))
    events += [e for t in range(1, 600, 5) for e in tick(t)]
    out = headrooms(events)
    assert {round(o.max_j_per_th or 0, 6) for o in out} == {round(50_000 / 2400, 6)}


def test_the_price_schedule_and_the_limit_survive_a_restart() -> None:
    events = [price(0, 600, 100.0), price(600, 3600, 60.0), *tick(1), *tick(602)]
    state, _ = energy.fold(events, E)
    saved = energy._save(state, "price")
    restored = EnergyState()
    energy._load(restored, "price", saved)
    assert restored.limit == state.limit == pytest.approx(50_000 / 2400)
    assert restored.limit_relax_since == state.limit_relax_since == at(602).timestamp()
    assert [(i.start, i.price_per_mwh) for i in restored.prices] == \
        [(i.start, i.price_per_mwh) for i in state.prices]


# -- the scheduler -----------------------------------------------------------------------------

def tele(sec: float, dev: str, j_per_th: float, ths: float = 100.0,
         state: str = "running") -> AsicTelemetryObserved:
    return AsicTelemetryObserved(
        site="site-1", device_id=dev, ts=at(sec), source="test", state=state,  # type: ignore[arg-type]
        hashrate_ths=ths if state == "running" else 0, hashrate_avg_ths=ths,
        power_w=j_per_th * ths if state == "running" else 10,
        accepted=0, rejected=0, stale=0, hardware_errors=0, elapsed_s=1)


def room(sec: float, limit: float | None, target: float = 1000.0,
         load: float = 10.0) -> EnergyHeadroomComputed:
    return EnergyHeadroomComputed(
        site="site-1", device_id="site-1", ts=at(sec), source="test", supply_kw=1000,
        margin_kw=0, available_kw=1000, load_kw=load, asic_load_kw=load, gpu_load_kw=0,
        headroom_kw=1000 - load, target_load_kw=target, price_per_mwh=100.0,
        hashprice_per_th_day=0.05, max_j_per_th=limit)


def ack(sec: float, cmd: SleepAsic | WakeAsic) -> CommandAcknowledged:
    return CommandAcknowledged(site="site-1", device_id=cmd.device_id, ts=at(sec), source="act",
                               command_id=cmd.command_id, command_kind=cmd.kind,
                               status="applied", latency_ms=5, actuator="test")


#: an S21 (17.5 J/TH), two S19j Pro (29.5), an S19 (34.5), an S9 (98)
FLEET = {"s21": 17.5, "s19jpro-a": 29.5, "s19jpro-b": 29.5, "s19": 34.5, "s9": 98.0}


def fleet(sec: float = 0) -> list[AsicTelemetryObserved]:
    return [tele(sec, d, j) for d, j in FLEET.items()]


def test_the_asics_above_the_limit_sleep_least_efficient_first() -> None:
    _, out = scheduler.fold([*fleet(), room(1, limit=30.0)], S)
    assert [(type(c), c.device_id) for c in out] == [(SleepAsic, "s9"), (SleepAsic, "s19")]
    assert out[0].reason == "price 100.00/MWh: 98.0 J/TH above the limit 30.0 J/TH"
    _, none = scheduler.fold([*fleet(), room(1, limit=None)], S)
    assert none == []


def test_none_of_them_is_woken_while_the_limit_holds_and_they_wake_when_it_relaxes() -> None:
    state, out = scheduler.fold([*fleet(), room(1, limit=30.0)], S)
    events = [ack(2, c) for c in out]
    events += [tele(3, "s9", 98.0, state="sleeping"), tele(3, "s19", 34.5, state="sleeping")]
    for e in events:
        scheduler.step(state, e, S)
    _, again = scheduler.step(state, room(10, limit=30.0, load=3.0), S)
    assert again == []  # budget to spare, but both still lose money
    _, woken = scheduler.step(state, room(20, limit=40.0, load=3.0), S)
    assert [(type(c), c.device_id) for c in woken] == [(WakeAsic, "s19")]  # s9 stays off


def test_a_freshly_woken_asic_ramping_up_is_not_taken_for_an_inefficient_one() -> None:
    # an S21 just woken draws its full 3.5 kW while its hashrate ramps (10 TH/s: 350 J/TH)
    events = [*fleet(0), tele(5, "s21", 350.0, ths=10.0), tele(6, "s21", 60.0, ths=60.0)]
    state, out = scheduler.fold([*events, room(7, limit=30.0)], S)
    assert state.asics["s21"].j_per_th == 17.5
    assert "s21" not in {c.device_id for c in out}
    # a miner that really got worse shows it in every reading
    worse = [tele(10 + k, "s21", 45.0) for k in range(scheduler.EFFICIENCY_READINGS)]
    for e in worse:
        scheduler.step(state, e, S)
    _, out = scheduler.step(state, room(20, limit=30.0), S)
    assert "s21" in {c.device_id for c in out}


def test_the_minimum_on_dwell_spares_a_freshly_woken_asic() -> None:
    p = replace(S, min_on_s=120.0)
    state, _ = scheduler.fold(fleet(), p)
    state.asics["s9"].last_on = at(0).timestamp()  # woken at t=0
    _, out = scheduler.step(state, room(60, limit=30.0), p)
    assert [c.device_id for c in out] == ["s19"]
    scheduler.step(state, ack(61, out[0]), S)
    _, later = scheduler.step(state, room(130, limit=30.0), p)
    assert [c.device_id for c in later] == ["s9"]


def test_the_bands_win_when_they_ask_for_less() -> None:
    # target 5 kW of a 9.6 kW profitable fleet (s21 1.75, s19j 2.95 x2, ...): price sleeps
    # s9 and s19, then the band's budget sleeps more of the profitable ones
    load = sum(j * 100 / 1000 for j in FLEET.values())
    _, out = scheduler.fold([*fleet(), room(1, limit=30.0, target=5.0, load=load)], S)
    slept = [c.device_id for c in out if isinstance(c, SleepAsic)]
    assert slept[:2] == ["s9", "s19"]
    kept = sum(FLEET[d] * 0.1 for d in FLEET if d not in slept)
    assert kept <= 5.0 and len(slept) > 2


def test_an_asic_asleep_on_price_keeps_its_efficiency_across_a_restart() -> None:
    state, out = scheduler.fold([*fleet(), room(1, limit=30.0)], S)
    for c in out:
        scheduler.step(state, ack(2, c), S)
    restored = scheduler.SchedulerState()
    for d, a in state.asics.items():
        if (kept := a.durable()) is not None:
            scheduler.restore(restored, d, kept)
    for d in ("s9", "s19"):
        scheduler.step(restored, tele(5, d, FLEET[d], state="sleeping"), S)
    assert restored.asics["s9"].j_per_th == 98.0
    _, again = scheduler.step(restored, room(10, limit=30.0, load=3.0), S)
    assert again == []
