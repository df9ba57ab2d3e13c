"""Plausibility before action: ranges as data, and a property-based check that no reading
outside them, and no NaN, ever reaches a decision."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agents import energy, scheduler
from schemas.events import AsicTelemetryObserved, FeedPowerMeasured, GridMeasured
from schemas.plausibility import RANGES, implausible
from tests.factories import T0

P = energy.EnergyParams(margin_kw=0, emit_s=0, feeds=("f1",), meter_stale_s=5.0)
S = scheduler.SchedulerParams(min_on_s=0, min_off_s=0, hysteresis_kw=0)
NOW = T0 + timedelta(hours=1)


def grid(sec: float, hz: float, nominal: float = 50.0) -> GridMeasured:
    return GridMeasured(site="s", device_id="meter", ts=T0 + timedelta(seconds=sec),
                        source="t", frequency_hz=hz, voltage_v=400, active_power_kw=100,
                        reactive_power_kvar=0, nominal_hz=nominal)


def test_every_range_is_data_with_a_unit() -> None:
    assert {(r.kind, r.field) for r in RANGES} >= {
        ("GridMeasured", "frequency_hz"), ("FeedPowerMeasured", "capacity_kw"),
        ("AsicTelemetryObserved", "power_w"), ("GpuTelemetryObserved", "power_w")}
    assert all(r.lo < r.hi and r.unit for r in RANGES)


@pytest.mark.parametrize(("hz", "nominal", "ok"), [
    (49.0, 50.0, True), (47.0, 50.0, True), (40.0, 50.0, True), (39.9, 50.0, False),
    (1.0, 50.0, False), (59.2, 60.0, True), (70.0, 60.0, True), (45.0, 60.0, False)])
def test_frequency_is_judged_around_the_grid_nominal(hz: float, nominal: float,
                                                     ok: bool) -> None:
    assert (implausible(grid(0, hz, nominal)) is None) is ok


def test_a_timestamp_past_the_clock_skew_is_refused() -> None:
    e = grid(0, 50.0)
    assert implausible(e, now=e.ts - timedelta(minutes=4)) is None  # skew allowed
    assert "future" in (implausible(e, now=e.ts - timedelta(minutes=6)) or "")


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -1.0, 1.0, 49.4, 50.0, 1e12, -1e12, 5e3]))


@st.composite
def reading(draw: Any, sec: float) -> dict[str, Any]:
    kind = draw(st.sampled_from(["grid", "feed", "asic"]))
    ts = (T0 + timedelta(seconds=sec + draw(st.floats(0, 0.9)))).isoformat()
    base = {"site": "s", "source": "t", "ts": ts}
    if kind == "grid":
        return {**base, "kind": "GridMeasured", "device_id": "meter", "voltage_v": 400,
                "active_power_kw": 100, "reactive_power_kvar": 0,
                "frequency_hz": draw(FLOATS), "nominal_hz": draw(st.sampled_from([50.0, 60.0,
                                                                                 1.0]))}
    if kind == "feed":
        return {**base, "kind": "FeedPowerMeasured", "device_id": "f1", "feed_id": "f1",
                "voltage_v": 400, "current_a": 10, "power_kw": draw(FLOATS),
                "capacity_kw": draw(FLOATS)}
    return {**base, "kind": "AsicTelemetryObserved",
            "device_id": draw(st.sampled_from(["a0", "a1", "ghost"])), "state": "running",
            "hashrate_ths": 100, "hashrate_avg_ths": 100, "power_w": draw(FLOATS),
            "accepted": 0, "rejected": 0, "stale": 0, "hardware_errors": 0, "elapsed_s": 1}


MODELS = {"GridMeasured": GridMeasured, "FeedPowerMeasured": FeedPowerMeasured,
          "AsicTelemetryObserved": AsicTelemetryObserved}


def edge(d: dict[str, Any]) -> Any:
    """What the agents' decode edge lets through: schema-valid, then plausible."""
    try:
        e = MODELS[d["kind"]].model_validate(d)
    except ValidationError:
        return None
    return None if implausible(e, NOW) is not None else e


def decide(events: list[Any]) -> list[Any]:
    es, ss = energy.EnergyState(), scheduler.SchedulerState()
    commands: list[Any] = []
    for e in events:
        for m in energy.step(es, e, P)[1]:
            assert math.isfinite(m.headroom_kw) and math.isfinite(m.target_load_kw)
            commands += scheduler.step(ss, m, S)[1]
        if isinstance(e, AsicTelemetryObserved):
            scheduler.step(ss, e, S)
    return commands


SITE = [edge(d) for d in (
    {"kind": "AsicTelemetryObserved", "site": "s", "source": "t", "device_id": "a0",
     "ts": T0.isoformat(), "state": "running", "hashrate_ths": 100, "hashrate_avg_ths": 100,
     "power_w": 3000, "accepted": 0, "rejected": 0, "stale": 0, "hardware_errors": 0,
     "elapsed_s": 1},
    {"kind": "FeedPowerMeasured", "site": "s", "source": "t", "device_id": "f1",
     "feed_id": "f1", "ts": T0.isoformat(), "voltage_v": 400, "current_a": 10,
     "power_kw": 5, "capacity_kw": 20})]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 30).flatmap(lambda s: reading(s)), max_size=40))
def test_no_command_ever_comes_from_an_implausible_reading(noise: list[dict[str, Any]]) -> None:
    """A site at 50 Hz with room to spare, and a stream of random readings: whatever passes
    the edge, the decisions are those of the plausible readings alone, and nothing
    crashes.  Implausible ones are dropped before any fold."""
    passed = [e for e in (edge(d) for d in noise) if e is not None]
    assert all(implausible(e) is None for e in passed)
    for e in passed:  # what passed the edge is physically possible
        if isinstance(e, GridMeasured):
            assert abs(e.frequency_hz - e.nominal_hz) <= 10
        if isinstance(e, FeedPowerMeasured):
            assert e.capacity_kw is None or 0 < e.capacity_kw <= 100_000
        if isinstance(e, AsicTelemetryObserved):
            assert 0 <= e.power_w <= 15_000
    steady = [*SITE, *[edge(grid(i, 50.0).model_dump(mode="json")) for i in range(1, 31)]]
    decide(sorted([*steady, *passed], key=lambda e: e.ts))  # never raises, metrics finite
    assert decide(steady) == []  # 50 Hz, 20 kW of supply for 3 kW of load: nothing to do


@pytest.mark.parametrize("nonsense", [
    grid(5.5, 1.0),  # a 1 Hz grid
    grid(5.5, 49.3, nominal=1.0),  # a meter claiming a 1 Hz nominal
    FeedPowerMeasured(site="s", device_id="f1", ts=T0 + timedelta(seconds=5.5), source="t",
                      feed_id="f1", voltage_v=400, current_a=10, power_kw=5,
                      capacity_kw=0.0),
    AsicTelemetryObserved(site="s", device_id="ghost", ts=T0 + timedelta(seconds=5.5),
                          source="t", state="running", hashrate_ths=1, hashrate_avg_ths=1,
                          power_w=1e12, accepted=0, rejected=0, stale=0, hardware_errors=0,
                          elapsed_s=1)])
def test_nonsense_that_would_shed_the_fleet_is_stopped_at_the_edge(nonsense: Any) -> None:
    steady = [*SITE, *[grid(i, 50.0) for i in range(1, 9)]]  # the feed fresh until 10 s
    unguarded = sorted([*steady, nonsense], key=lambda e: e.ts)
    assert any(isinstance(c, scheduler.SleepAsic) for c in decide(unguarded))  # it would
    guarded = [e for e in unguarded if implausible(e, NOW) is None]
    assert decide(guarded) == []
