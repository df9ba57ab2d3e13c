"""Money against hand-computed cases: breakeven, the efficiency limit a price implies,
revenue/cost/profit of a span, the price in force; and the price file parser on good and
hostile files."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agents.profit import (
    Interval,
    Money,
    PriceSchedule,
    ProfitParams,
    ProfitState,
    accrue,
    breakeven_per_mwh,
    max_j_per_th,
    profit_fold,
    profit_step,
)
from agents.profit import _load as load_profit
from agents.profit import _save as save_profit
from connectors.power_price import parse
from schemas.events import (
    AsicTelemetryObserved,
    GpuTelemetryObserved,
    HashpriceObserved,
    PowerPriceObserved,
)
from tests.factories import T0


def test_breakeven_by_hand() -> None:
    # An S19j Pro (29.5 J/TH) at a hashprice of 0.05 per TH/s/day: it earns 0.05/TH/day and
    # burns 29.5 W x 24 h = 0.000708 MWh per TH a day: breakeven 0.05 / 0.000708 = 70.62/MWh.
    assert breakeven_per_mwh(0.05, 29.5) == pytest.approx(70.6214689, rel=1e-9)
    # an S21 (17.5 J/TH) pays up to 119.05/MWh
    assert breakeven_per_mwh(0.05, 17.5) == pytest.approx(119.047619, rel=1e-9)
    assert breakeven_per_mwh(0.05, 0.0) == math.inf


def test_the_price_implies_one_efficiency_limit() -> None:
    # at 100/MWh with a 10/MWh margin a miner must make its power back at 90/MWh:
    # 0.05e6 / (24 x 90) = 23.148 J/TH; the S21 runs, the S19j Pro does not
    limit = max_j_per_th(100.0, 0.05, margin_per_mwh=10.0)
    assert limit == pytest.approx(23.148148148, rel=1e-9)
    assert breakeven_per_mwh(0.05, 17.5) > 100.0 - 10.0 > breakeven_per_mwh(0.05, 29.5)
    # at the limit itself breakeven equals price - margin
    assert breakeven_per_mwh(0.05, limit) == pytest.approx(90.0)
    assert max_j_per_th(10.0, 0.05, margin_per_mwh=10.0) is None  # every miner pays
    assert max_j_per_th(-20.0, 0.05) is None  # a negative price: run everything


def test_accrue_by_hand() -> None:
    # 3.25 kW, 110 TH/s, 15 minutes at 80/MWh and 0.05/TH/day:
    # energy 0.8125 kWh; cost 0.0008125 MWh x 80 = 0.065; revenue 110 x 0.05 / 96 = 0.0572917
    m = accrue(3.25, 110.0, 900.0, 80.0, 0.05)
    assert m.energy_kwh == pytest.approx(0.8125)
    assert m.power_cost == pytest.approx(0.065)
    assert m.revenue == pytest.approx(0.05729166667)
    assert m.profit == pytest.approx(-0.00770833333)
    total = m + accrue(3.25, 110.0, 900.0, 40.0, 0.05)  # the next quarter hour is cheaper
    assert total.power_cost == pytest.approx(0.065 + 0.0325)
    assert total.profit == pytest.approx(2 * 0.05729166667 - 0.0975)
    assert accrue(3.25, 110.0, -1.0, 80.0, 0.05) == Money()


def test_the_price_in_force() -> None:
    s = PriceSchedule([Interval(0, 3600, 40.0), Interval(3600, 7200, 250.0)])
    assert s.at(-1) is None and s.at(0) == 40.0 and s.at(3599.9) == 40.0
    assert s.at(3600) == 250.0 and s.at(7200) is None  # past the published day: no price
    s.put(Interval(3600, 3900, 900.0))  # a real-time interval replaces the day-ahead hour
    assert s.at(3700) == 900.0 and s.at(3950) is None
    s.forget_before(3600)
    assert len(s) == 1
    with pytest.raises(ValueError, match="before it starts"):
        s.put(Interval(10, 10, 1.0))


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_a_day_ahead_csv() -> None:
    # ERCOT's day-ahead settlement point price report names its column this way
    f = parse(
        "Start,Minutes,Settlement Point Price,Currency\n"
        "2026-12-01T00:00,60,31.20,usd\n2026-12-01T01:00,60,-2.5,USD\n"
        "2026-12-01T02:00,60,412.00,USD\n",
        "csv",
    )
    assert f.problems == [] and f.currency == "USD"
    assert [(i.start, i.end, i.price_per_mwh) for i in f.intervals] == [
        (at("2026-12-01T00:00"), at("2026-12-01T01:00"), 31.2),
        (at("2026-12-01T01:00"), at("2026-12-01T02:00"), -2.5),
        (at("2026-12-01T02:00"), at("2026-12-01T03:00"), 412.0),
    ]


def test_a_real_time_json_without_ends_and_in_kwh() -> None:
    f = parse(
        '{"currency": "EUR", "prices": ['
        '{"start": "2026-12-01T00:05:00Z", "price_per_kwh": 0.095},'
        '{"start": "2026-12-01T00:00:00Z", "price_per_kwh": 0.09},'
        '{"start": "2026-12-01T00:10:00Z", "end": "2026-12-01T00:15:00Z", '
        '"price_per_kwh": 0.3}]}',
        "json",
    )
    assert f.problems == [] and f.currency == "EUR"
    assert [(i.start, i.end) for i in f.intervals] == [
        (at("2026-12-01T00:00"), at("2026-12-01T00:05")),
        (at("2026-12-01T00:05"), at("2026-12-01T00:10")),
        (at("2026-12-01T00:10"), at("2026-12-01T00:15")),
    ]
    assert [i.price_per_mwh for i in f.intervals] == pytest.approx([90.0, 95.0, 300.0])


@pytest.mark.parametrize(
    ("text", "fmt", "problem"),
    [
        ("start,price\n,40\n", "csv", "line 2: no start"),
        ("start,price\nyesterday,40\n", "csv", "line 2: Invalid isoformat string"),
        ("start,minutes\n2026-12-01T00:00,60\n", "csv", "line 2: no price"),
        ("start,minutes,price\n2026-12-01T00:00,60,cheap\n", "csv", "line 2: could not convert"),
        ("start,minutes,price\n2026-12-01T00:00,60,nan\n", "csv", "line 2: price 'nan' is not"),
        ("start,minutes,price\n2026-12-01T00:00,60,9e9\n", "csv", "line 2: price 9e+09 per MWh"),
        ("start,end,price\n2026-12-01T01:00,2026-12-01T00:00,4\n", "csv", "ends before it starts"),
        ("start,price\n2026-12-01T00:00,40\n", "csv", "row 1: no end, and no later row"),
        ("[1, 2]", "json", "row 1: not an object"),
        ('{"prices": 3}', "json", "expected a list"),
        ("{not json", "json", "not JSON"),
        ('[{"start": true, "minutes": 5, "price": 1}]', "json", "row 1:"),
        (
            '[{"start": 0, "minutes": 5, "price": 1, "currency": "USD"},'
            '{"start": 300, "minutes": 5, "price": 1, "currency": "EUR"}]',
            "json",
            "row 2: currency EUR, the file's is USD",
        ),
    ],
)
def test_a_bad_row_is_named_and_the_rest_is_used(text: str, fmt: str, problem: str) -> None:
    f = parse(text, fmt)
    assert any(problem in p for p in f.problems), f.problems


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown price file format 'xml'"):
        parse("<prices/>", "xml")


# -- the profit agent: windows computed by hand ------------------------------------------------


PP = ProfitParams(window_s=900, grace_s=30, max_gap_s=60, hashprice=0.05, currency="EUR")
W0 = T0.replace(minute=0)  # 12:00, a window edge


def _at(sec: float):  # type: ignore[no-untyped-def]
    return W0 + timedelta(seconds=sec)


def _price(start: float, end: float, per_mwh: float, market: str = "day_ahead"):  # type: ignore[no-untyped-def]
    return PowerPriceObserved(site="site-1", device_id="price", ts=_at(start - 60),
                              source="t", interval_start=_at(start), interval_end=_at(end),
                              price_per_mwh=per_mwh, currency="EUR", market=market)  # type: ignore[arg-type]


def _asic(sec: float, dev: str, kw: float, ths: float, state: str = "running"):  # type: ignore[no-untyped-def]
    return AsicTelemetryObserved(
        site="site-1", device_id=dev, ts=_at(sec), source="t", state=state,  # type: ignore[arg-type]
        hashrate_ths=ths, hashrate_avg_ths=ths, power_w=kw * 1000, accepted=0, rejected=0,
        stale=0, hardware_errors=0, elapsed_s=1)


def _readings(dev: str, kw: float, ths: float, until: float = 930, step: float = 10):  # type: ignore[no-untyped-def]
    return [_asic(t, dev, kw, ths) for t in range(0, int(until) + 1, int(step))]


def _by(out):  # type: ignore[no-untyped-def]
    return {(m.scope, m.subject, m.window_start): m for m in out}


def test_one_window_of_an_s19j_pro_and_an_s21_and_their_site() -> None:
    events = [_price(0, 3600, 80.0), *_readings("s19jpro", 3.068, 104.0),
              *_readings("s21", 3.5, 200.0)]
    events.sort(key=lambda e: e.ts)
    _, out = profit_fold(events, PP)
    m = _by(out)
    a = m[("asic", "s19jpro", _at(0))]
    assert a.seconds == 900 and a.final and a.currency == "EUR"
    assert a.energy_kwh == pytest.approx(3.068 * 900 / 3600)  # 0.767 kWh
    assert a.revenue == pytest.approx(104 * 0.05 * 900 / 86400)  # 0.0541667
    assert a.power_cost == pytest.approx(0.767 / 1000 * 80)  # 0.06136
    assert a.profit == pytest.approx(0.0541667 - 0.06136, abs=1e-6)  # it loses money
    assert a.j_per_th == pytest.approx(29.5, abs=1e-3)
    assert a.breakeven_per_mwh == pytest.approx(0.05e6 / (24 * 29.5), abs=1e-3)  # 70.62
    b = m[("asic", "s21", _at(0))]
    assert b.profit == pytest.approx(200 * 0.05 * 900 / 86400 - 3.5 * 900 / 3600 / 1000 * 80)
    assert b.profit > 0 and b.breakeven_per_mwh == pytest.approx(0.05e6 / (24 * 17.5), abs=1e-3)
    site = m[("site", "site-1", _at(0))]
    assert site.revenue == pytest.approx(a.revenue + b.revenue)
    assert site.power_cost == pytest.approx(a.power_cost + b.power_cost)
    assert site.hashrate_ths == pytest.approx(304.0)
    assert site.j_per_th == pytest.approx((3068 + 3500) / 304, abs=1e-3)


def test_a_real_time_spike_inside_the_window_and_an_interval_across_its_edge() -> None:
    events = [_price(0, 3600, 80.0), _price(450, 900, 200.0, "real_time"),
              *_readings("s21", 3.5, 200.0, until=1830, step=30)]
    _, out = profit_fold(sorted(events, key=lambda e: e.ts), PP)
    m = _by(out)
    first = m[("asic", "s21", _at(0))]
    kwh_half = 3.5 * 450 / 3600
    assert first.power_cost == pytest.approx(kwh_half / 1000 * 80 + kwh_half / 1000 * 200)
    second = m[("asic", "s21", _at(900))]
    assert second.seconds == 900 and second.power_cost == pytest.approx(3.5 * 0.25 / 1000 * 80)


def test_a_silent_gap_and_time_without_a_price_are_not_accrued() -> None:
    readings = [r for r in _readings("s21", 3.5, 200.0) if not 300 < (r.ts - W0).seconds < 500]
    _, out = profit_fold([_price(0, 600, 80.0), *readings], PP)
    a = _by(out)[("asic", "s21", _at(0))]
    # [300, 500) silent (a 200 s gap > 60 s), [600, 900) unpriced
    assert a.seconds == 900 - 200 - 300
    assert a.energy_kwh == pytest.approx(3.5 * 400 / 3600)


def test_a_sleeping_miner_costs_its_standby_and_a_gpu_rig_costs_its_power() -> None:
    sleeping = [_asic(t, "s9", 0.01, 0.0, state="sleeping") for t in range(0, 931, 10)]
    rig = [GpuTelemetryObserved(site="site-1", device_id=f"rig1-gpu{g}", ts=_at(t), source="t",
                                rig_id="rig1", gpu_index=g, card="RTX 4090", power_w=300,
                                power_limit_w=350, temp_c=60, core_clock_mhz=2000,
                                mem_clock_mhz=10000)
           for t in range(0, 931, 10) for g in range(2)]
    _, out = profit_fold(sorted([_price(0, 3600, 80.0), *sleeping, *rig], key=lambda e: e.ts),
                         PP)
    m = _by(out)
    s9 = m[("asic", "s9", _at(0))]
    assert s9.revenue == 0 and s9.power_cost == pytest.approx(0.01 * 0.25 / 1000 * 80)
    assert s9.j_per_th is None and s9.breakeven_per_mwh is None
    r = m[("rig", "rig1", _at(0))]
    assert r.energy_kwh == pytest.approx(0.6 * 0.25) and r.revenue == 0
    assert r.profit == pytest.approx(-0.6 * 0.25 / 1000 * 80)
    # with what the rigs' algorithm earns configured: 2 GPUs x 100 MH/s x 0.002 per MH/s/day
    earning = [g.model_copy(update={"hashrate_mhs": 100.0}) for g in rig]
    _, out = profit_fold(sorted([_price(0, 3600, 80.0), *earning], key=lambda e: e.ts),
                         replace(PP, gpu_revenue_per_mh_day=0.002))
    r = _by(out)[("rig", "rig1", _at(0))]
    assert r.revenue == pytest.approx(200 * 0.002 * 900 / 86400)
    assert r.hashrate_ths == 0 and r.j_per_th is None  # a rig's MH/s is not TH/s


def test_an_observed_hashprice_replaces_the_configured_one_for_revenue() -> None:
    hp = HashpriceObserved(site="site-1", device_id="hashprice", ts=_at(-1), source="t",
                           hashprice_per_th_day=0.04, currency="EUR")
    _, out = profit_fold([hp, _price(0, 3600, 80.0), *_readings("s21", 3.5, 200.0)], PP)
    assert _by(out)[("asic", "s21", _at(0))].revenue == pytest.approx(200 * 0.04 * 900 / 86400)


def test_redelivery_changes_nothing_and_a_restart_mid_window_loses_nothing() -> None:
    events = [_price(0, 3600, 80.0), *_readings("s21", 3.5, 200.0)]
    _, straight = profit_fold(events, PP)
    doubled = [e for ev in events for e in (ev, ev)]
    _, again = profit_fold(doubled, PP)
    assert again == straight
    # a restart after 400 s: the state comes back from its durable keys
    state = ProfitState()
    for e in events[:42]:
        profit_step(state, e, PP)
    restored = ProfitState()
    for key in ("", *state.units):
        if (v := save_profit(state, key)) is not None:
            load_profit(restored, key, v)
    out = []
    for e in events[40:]:  # the consumer re-reads from an offset before the crash
        out += profit_step(restored, e, PP)[1]
    assert out == straight
