"""The simulated farm's physics has the documented shapes."""

from __future__ import annotations

import math

import pytest

from sim.asic import MODELS, SLEEP_W, WAKE_S, PoolSlot, SimAsic, profiles_of
from sim.gpu import CARDS, THERMAL_TAU_S, GpuSettings, SimGpu
from sim.meter import GridModel, decode_float, encode_float


def gpu(card: str, **kw: float) -> SimGpu:
    g = SimGpu(0, CARDS[card])
    g.apply(GpuSettings(power_limit_w=kw.get("pl", CARDS[card].pl_default_w),
                        core_offset_mhz=kw.get("core", 0.0), mem_offset_mhz=kw.get("mem", 0.0)))
    return g


@pytest.mark.parametrize("card", list(CARDS))
def test_hashrate_rises_with_memory_clock_up_to_the_stable_offset(card: str) -> None:
    stable = SimGpu(0, CARDS[card]).stable_offset
    rates = [gpu(card, mem=stable * f).effective_hashrate_mhs() for f in (0, 0.25, 0.5, 0.75, 1)]
    assert rates == sorted(rates) and rates[-1] > rates[0] * 1.01
    assert all(gpu(card, mem=stable * f).reject_probability() < 0.01 for f in (0, 0.5, 1))


@pytest.mark.parametrize("card", list(CARDS))
def test_rejects_climb_steeply_past_the_stable_offset_and_effective_hashrate_falls(
        card: str) -> None:
    stable = SimGpu(0, CARDS[card]).stable_offset
    at, past, far = (gpu(card, mem=stable * f) for f in (1.0, 1.3, 1.6))
    assert at.reject_probability() < 0.01 < past.reject_probability() \
        < far.reject_probability()
    assert far.reject_probability() > 10 * at.reject_probability()
    assert far.effective_hashrate_mhs() < at.effective_hashrate_mhs()


@pytest.mark.parametrize("card", list(CARDS))
def test_hashrate_vs_power_limit_saturates(card: str) -> None:
    c = CARDS[card]
    pls = [c.pl_min_w + (c.pl_max_w - c.pl_min_w) * i / 10 for i in range(11)]
    rates = [gpu(card, pl=p).hashrate_mhs() for p in pls]
    assert rates == sorted(rates)
    assert rates[0] < 0.95 * rates[-1]  # starved at the minimum
    assert rates[-1] == pytest.approx(rates[-2])  # flat once the kernel has its power
    assert gpu(card, pl=c.pl_max_w).power_w() < c.pl_max_w  # draws what it needs, no more


def test_core_clock_matters_little_for_memory_bound_mining() -> None:
    base = gpu("RTX 3090").hashrate_mhs()
    assert abs(gpu("RTX 3090", core=200).hashrate_mhs() / base - 1) < 0.05
    assert gpu("RTX 3090", core=200).power_needed_w() > gpu("RTX 3090").power_needed_w()


def test_temperature_follows_power_with_thermal_lag() -> None:
    g = gpu("RTX 4090")
    g.mining = False
    g.temp_c = g.steady_temp_c()
    cold = g.temp_c
    g.mining = True
    target = g.steady_temp_c()
    assert target == pytest.approx(g.ambient_c + g.card.r_th * g.power_w())
    g.advance(THERMAL_TAU_S)
    frac = (g.temp_c - cold) / (target - cold)
    assert frac == pytest.approx(1 - math.exp(-1), abs=0.01)  # first-order lag, tau ~30 s
    g.advance(THERMAL_TAU_S * 8)
    assert g.temp_c == pytest.approx(target, abs=0.1)


def test_throttling_at_the_temperature_limit() -> None:
    g = gpu("RTX 3090")
    before = g.hashrate_mhs()
    g.temp_c = g.card.throttle_c + 10
    assert g.hashrate_mhs() < 0.7 * before


def test_settings_are_clamped_to_the_card() -> None:
    g = gpu("A100", pl=10_000)
    assert g.s.power_limit_w == CARDS["A100"].pl_max_w


def asic(model: str = "S19j Pro") -> SimAsic:
    return SimAsic(0, "127.0.1.1", MODELS[model], [PoolSlot("stratum+tcp://p:3333", "w")])


@pytest.mark.parametrize("model", list(MODELS))
def test_asic_models_match_their_spec_at_stock(model: str) -> None:
    a = asic(model)
    a.advance(1.0)
    assert a.hashrate_5s_ths() == pytest.approx(MODELS[model].nominal_ths, rel=0.05)
    assert a.power_w(1.0) == pytest.approx(MODELS[model].nominal_w, rel=0.001)


def test_power_profiles_trade_hashrate_for_efficiency() -> None:
    ps = sorted(profiles_of(MODELS["S21"]).values(), key=lambda p: p.watts)
    assert [p.ths for p in ps] == sorted(p.ths for p in ps)
    jth = [p.watts / p.ths for p in ps]
    assert jth == sorted(jth)  # lower power, better J/TH


def test_sleep_draws_near_zero_and_wake_ramps_over_tens_of_seconds() -> None:
    a = asic()
    a.sleep(10.0)
    assert a.power_w(11.0) == SLEEP_W and a.target_ths(11.0) == 0
    a.wake(20.0)
    assert a.state == "waking"
    half = a.target_ths(20.0 + WAKE_S / 2)
    assert half == pytest.approx(a.current_profile().ths / 2, rel=0.01)
    a.advance(20.0 + WAKE_S + 1)
    assert a.state == "running" and a.target_ths(60.0) == a.current_profile().ths


def test_counters_are_cumulative_and_reset_on_restart() -> None:
    a = asic("S21")
    a.advance(600.0)
    expected = 200e12 * 600 / (65536 * 2**32)  # shares at the pool difficulty
    assert a.accepted + a.rejected + a.stale == pytest.approx(expected, rel=0.15)
    assert a.rejected < 0.02 * a.accepted  # rare unless a scenario says otherwise
    before = a.accepted
    a.advance(700.0)
    assert a.accepted >= before
    a.restart(700.0)
    assert (a.accepted, a.rejected, a.stale, a.elapsed(700.0)) == (0, 0, 0, 0)


def test_grid_frequency_noise_and_setpoint_ramp() -> None:
    g = GridModel(seed=3)
    fs = []
    for i in range(1, 600):
        g.advance(i * 0.2, 100.0)
        fs.append(g.frequency_hz)
    assert abs(sum(fs) / len(fs) - 50.0) < 0.01 and max(abs(f - 50) for f in fs) < 0.06
    g.setpoint_hz = 49.4
    g.advance(g.last_t + 1.0, 100.0)
    assert 49.8 < g.frequency_hz < 50.0  # ramps, does not jump
    g.advance(g.last_t + 20.0, 100.0)
    assert g.frequency_hz == pytest.approx(49.4, abs=0.05)


def test_float32_register_pairs_round_trip() -> None:
    for v in (50.0, 49.4, 0.0, -12.5, 3068.25):
        assert decode_float(encode_float(v)) == pytest.approx(v, rel=1e-6)
