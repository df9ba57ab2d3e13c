"""Money against hand-computed cases: breakeven, the efficiency limit a price implies,
revenue/cost/profit of a span, the price in force; and the price file parser on good and
hostile files."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from agents.profit import (
    Interval,
    Money,
    PriceSchedule,
    accrue,
    breakeven_per_mwh,
    max_j_per_th,
)
from connectors.power_price import parse


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
