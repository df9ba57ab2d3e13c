"""Energy headroom and frequency bands, fed plain lists."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from agents.energy import EnergyParams, fold
from schemas.commands import CapSiteLoad, CommandAcknowledged
from schemas.events import AsicTelemetryObserved, FeedPowerMeasured, GridMeasured
from schemas.metrics import EnergyHeadroomComputed
from tests.factories import T0

P = EnergyParams(margin_kw=10, hysteresis_hz=0.05, hold_s=30, feed_stale_s=10, emit_s=0,
                 feeds=("a",))
P2 = replace(P, feeds=("a", "b"))
LONG = EnergyParams(margin_kw=10, hysteresis_hz=0.05, hold_s=30, feed_stale_s=1000, emit_s=0,
                    feeds=("a",))


def grid(sec: float, hz: float, nominal: float = 50.0) -> GridMeasured:
    return GridMeasured(site="site-1", device_id="meter", ts=T0 + timedelta(seconds=sec),
                        source="test", frequency_hz=hz, voltage_v=400, active_power_kw=0,
                        reactive_power_kvar=0, nominal_hz=nominal)


def feed(sec: float, name: str, cap: float | None, kw: float = 100.0) -> FeedPowerMeasured:
    return FeedPowerMeasured(site="site-1", device_id=name, ts=T0 + timedelta(seconds=sec),
                             source="test", feed_id=name, voltage_v=400, current_a=100,
                             power_kw=kw, capacity_kw=cap)


def asic(sec: float, name: str, watts: float) -> AsicTelemetryObserved:
    return AsicTelemetryObserved(
        site="site-1", device_id=name, ts=T0 + timedelta(seconds=sec), source="test",
        state="running", hashrate_ths=100, hashrate_avg_ths=100, power_w=watts, accepted=0,
        rejected=0, stale=0, hardware_errors=0, elapsed_s=1)


def test_headroom_is_supply_minus_margin_minus_load() -> None:
    _, out = fold([feed(0, "a", 300), feed(0, "b", None, kw=150), asic(0, "x", 3000),
                   asic(0, "y", 3500), grid(1, 50.0)], P2)
    m = out[-1]
    assert (m.supply_kw, m.available_kw, m.load_kw, m.asic_load_kw) == (450, 440, 6.5, 6.5)
    assert m.headroom_kw == pytest.approx(433.5) and m.band == "normal"
    assert m.target_load_kw == 440


def test_bands_deepen_at_once_and_target_follows() -> None:
    _, out = fold([feed(0, "a", 210), grid(1, 49.9), grid(2, 49.7), grid(3, 49.4)], P)
    assert [(m.band, m.target_load_kw) for m in out[1:]] == [
        ("normal", 200), ("below-49.8Hz", 100), ("below-49.5Hz", 0)]


def test_sixty_hertz_grid_uses_its_own_bands() -> None:
    _, out = fold([feed(0, "a", 110), grid(1, 59.7, nominal=60)], P)
    assert out[-1].band == "below-59.8Hz" and out[-1].target_load_kw == 50


def test_frequency_chattering_at_a_band_edge_does_not_flap() -> None:
    wobble = [49.79, 49.81, 49.79, 49.83, 49.80, 49.84, 49.79, 49.82]
    _, out = fold([feed(0, "a", 110), *[grid(1 + i, hz) for i, hz in enumerate(wobble)]], P)
    assert {m.band for m in out[1:]} == {"below-49.8Hz"}  # entered once, held


def test_band_relaxes_only_after_hold_above_edge_plus_hysteresis() -> None:
    seq = [grid(1, 49.7)] + [grid(2 + i, 49.86) for i in range(40)]
    _, out = fold([feed(0, "a", 110), *seq], LONG)
    bands = [(int((m.ts - T0).total_seconds()), m.band) for m in out[1:]]
    first_normal = next(t for t, b in bands if b == "normal")
    assert first_normal == 2 + 30  # released at 2 s, held 30 s
    # a dip back below edge + hysteresis restarts the hold
    seq = [grid(1, 49.7), grid(2, 49.86), grid(20, 49.83), *[grid(21 + i, 49.9) for i in range(35)]]
    _, out = fold([feed(0, "a", 110), *seq], LONG)
    assert next(int((m.ts - T0).total_seconds()) for m in out[1:] if m.band == "normal") == 51


def test_a_silent_feed_leaves_the_supply() -> None:
    _, out = fold([feed(0, "a", 100), feed(0, "b", 100), grid(1, 50), feed(8, "a", 100),
                   grid(9, 50), grid(12, 50)], P2)
    assert [m.supply_kw for m in out if m.device_id == "site-1"][-1] == 100  # b silent 12 s


def test_out_of_order_reading_does_not_replace_a_newer_one() -> None:
    _, out = fold([feed(5, "a", 200), feed(1, "a", 50), grid(6, 50)], P)
    assert out[-1].supply_kw == 200 and len(out) == 2  # the stale one emitted nothing


def test_emission_is_throttled_but_band_changes_are_immediate() -> None:
    p = EnergyParams(emit_s=1.0, margin_kw=0, feeds=("a",))
    events = [feed(0, "a", 100)] + [grid(0.2 * i, 50.0) for i in range(1, 10)] + [grid(2.0, 49.7)]
    _, out = fold(events, p)
    assert [round((m.ts - T0).total_seconds(), 1) for m in out] == [0.0, 1.0, 2.0]
    assert out[-1].band == "below-49.8Hz"


def test_no_headroom_while_supply_is_unknown() -> None:
    _, out = fold([asic(0, "x", 3000), grid(1, 49.4), feed(2, "a", 50), grid(3, 49.4),
                   grid(20, 49.4)], P)
    assert [round((m.ts - T0).total_seconds()) for m in out] == [2, 3]  # none before a feed,
    # none after every feed went silent (12 s > feed_stale_s): unknown is not zero


def test_supply_is_unknown_until_every_configured_feed_has_reported() -> None:
    # A site of three 56-kW feeds: the first one alone (100.8 kW measured would have been
    # read as the whole supply and shed the fleet) decides nothing.
    p = replace(P, feeds=("a", "b", "c"), margin_kw=0)
    _, out = fold([asic(0, "x", 3000), feed(0, "a", 56), grid(0.2, 50.0), feed(0.4, "b", 56),
                   grid(0.6, 50.0), feed(0.8, "c", 56), grid(1.0, 50.0)], p)
    assert [(round((m.ts - T0).total_seconds(), 1), m.supply_kw) for m in out] == [
        (0.8, 168), (1.0, 168)]


def test_unconfigured_or_missing_feeds_count_as_gone_after_the_staleness_period() -> None:
    for p in (replace(P, feeds=()), replace(P, feeds=("a", "never-reports"))):
        _, out = fold([feed(0, "a", 110), grid(1, 50.0), grid(9.9, 50.0), grid(10, 50.0)], p)
        assert [round((m.ts - T0).total_seconds(), 1) for m in out] == [10.0]
        assert out[0].supply_kw == 110


def test_after_every_feed_went_silent_the_first_one_back_is_not_the_supply() -> None:
    p = replace(P, feeds=("a", "b", "c"), margin_kw=0)
    site = [feed(0, f, 56) for f in "abc"] + [grid(1, 50.0)]
    silent = [grid(5 + i, 50.0) for i in range(15)]  # 20 s: all three stale
    back = [feed(20, "a", 56), grid(20.5, 50.0), feed(21, "b", 56), feed(21.5, "c", 56),
            grid(22, 50.0)]
    _, out = fold([*site, *silent, *back], p)
    assert [(round((m.ts - T0).total_seconds(), 1), m.supply_kw) for m in out] == [
        (0, 168), (1, 168), (5, 168), (6, 168), (7, 168), (8, 168), (9, 168), (10, 168),
        (21.5, 168), (22, 168)]


def test_a_restarted_fold_waits_for_the_feeds_again() -> None:
    # what a worker restart looks like: the same readings, a fresh state
    _, before = fold([feed(0, "a", 110), feed(0, "b", 60), grid(1, 50.0)], P2)
    _, after = fold([feed(20, "a", 110), grid(21, 50.0), feed(22, "b", 60), grid(23, 50.0)], P2)
    assert before[-1].supply_kw == 170 and [m.supply_kw for m in after] == [170, 170]


def cap(sec: float, limit: float | None, duration: float | None = None,
        ttl: float = 10.0) -> CapSiteLoad:
    t = T0 + timedelta(seconds=sec)
    return CapSiteLoad(site="site-1", device_id="site-1", ts=t, source="api", issued_at=t,
                       expires_at=t + timedelta(seconds=ttl), reason="operator",
                       issued_by="operator:key-1", limit_kw=limit, duration_s=duration)


def test_an_operator_cap_is_acked_once_lowers_the_target_at_once_and_ends() -> None:
    c = cap(2.5, 120, duration=30)
    _, out = fold([feed(0, "a", 310), grid(1, 50.0), grid(2, 49.7), c, c, grid(3, 50.0),
                   feed(35, "a", 310), grid(36, 50.0)], P)
    acks = [o for o in out if isinstance(o, CommandAcknowledged)]
    assert [(a.command_id, a.status, a.actuator) for a in acks] == [
        (c.command_id, "applied", "agent:energy")]  # the redelivered copy: no second ack
    metrics = [o for o in out if isinstance(o, EnergyHeadroomComputed)]
    # band 49.8 halves 300 kW -> 150; the cap takes it to 120 at once (re-issued metric);
    # the cap ends at 32.5 s, the band relaxes after its 30-s hold
    assert [(m.target_load_kw, m.cap_kw) for m in metrics] == [
        (300, None), (300, None), (150, None), (120, 120), (120, 120), (150, None),
        (300, None)]


def test_a_cap_lifted_or_expired() -> None:
    _, out = fold([feed(0, "a", 310), grid(1, 50.0), cap(2, 50), grid(3, 50.0), cap(4, None),
                   grid(20, 50.0), cap(5, 10, ttl=1)], P)
    acks = [o for o in out if isinstance(o, CommandAcknowledged)]
    assert [a.status for a in acks] == ["applied", "applied", "expired"]
    assert acks[1].detail == "cap lifted"
    metrics = [o for o in out if isinstance(o, EnergyHeadroomComputed)]
    assert [m.target_load_kw for m in metrics] == [300, 300, 50, 50, 300]
