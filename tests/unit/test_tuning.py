"""The GPU tuner: its space and scores, the gymnasium environment over the simulated physics,
the optimisers, and the online tuning fold closed over a simulated GPU (no Kafka: the
commands are applied to the simulated card and acked, telemetry and shares come from it)."""

from __future__ import annotations

import itertools
import math
from datetime import timedelta
from uuid import uuid4

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from agents import optimizers, tuning
from agents.tuning import Measurement, Settings4, Space, TunerParams, bounded, score
from bench.gpu_env import GpuTuningEnv
from schemas.commands import ApplyGpuProfile, CommandAcknowledged
from schemas.events import GpuTelemetryObserved, PowerPriceObserved, ShareCountsObserved
from schemas.metrics import TuningTrialEvaluated
from schemas.settings import Settings
from sim.gpu import GpuSettings
from tests.factories import T0


def test_space_round_trips_and_clamps() -> None:
    sp = Space.for_card("NVIDIA GeForce RTX 3090")
    assert sp.family == "RTX 3090" and sp.mem == (0.0, 2200.0)
    s = Settings4(275.0, 50.0, 1100.0, 20)
    assert sp.to_settings(sp.to_unit(s)) == s
    assert sp.to_settings([2.0, -1.0, 0.5, 1.0]) == Settings4(400.0, -200.0, 1100.0, 25)
    assert sp.default() == Settings4(350.0, 0.0, 0.0, 22)
    with pytest.raises(KeyError, match="no tuning limits"):
        Space.for_card("Radeon VII")


def test_bounded_moves_at_most_max_step_per_knob() -> None:
    assert bounded([0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.6, 0.5], 0.25) == [0.75, 0.25, 0.6, 0.5]


def test_score_is_the_seed_reward_times_accepted_hashrate() -> None:
    sc = score(Measurement(100.0, 300.0, 80.0, accepted=990, rejected=10, stale=0))
    # reward = 100 - 1 - 0 - (100 - 99) x 1 = 98; J = 100 x 0.99 x 0.98
    assert sc.reward == pytest.approx(98.0) and sc.objective == pytest.approx(97.02)
    assert sc.feasible and sc.efficiency == pytest.approx(0.33)
    hot = score(Measurement(100.0, 300.0, 93.0, accepted=1000, rejected=0, stale=0))
    assert hot.reward == pytest.approx(97.0) and not hot.feasible  # 3 °C over T_max
    assert not score(Measurement(100.0, 300.0, 70.0, 980, 20, 0)).feasible  # 2 % rejected
    # the optimiser's composite equals the score for the same parts
    assert tuning.objective_of(100.0, 1.0, 80.0, stale=0.0) == pytest.approx(97.02)


def test_the_environment_follows_the_gymnasium_api_and_the_physics() -> None:
    env = GpuTuningEnv("RTX 3090", seed=1, window_s=300)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, 1.0, 0.0]))
    assert 0 <= reward <= 100 and not terminated and not truncated
    assert info["settings"].mem_offset_mhz == round(0.25 * 2200)  # one bounded step
    # past the card's stable memory offset rejects climb and the objective falls
    lo, hi = env.true_score([0.8, 0.4, 0.3, 1.0]), env.true_score([0.8, 0.4, 0.9, 1.0])
    assert lo.feasible and not hi.feasible and hi.objective < lo.objective


def test_bayesopt_beats_the_default_settings_within_a_few_trials() -> None:
    env = GpuTuningEnv("RTX 4090", seed=5, ambient_c=32.0, window_s=600)
    default = env.true_score(env.space.to_unit(env.space.default())).objective
    opt = optimizers.make("botorch", seed=3)
    hist: list[tuning.Observation] = []
    for i in range(10):
        x = env.space.to_unit(env.space.default()) if i == 0 else opt.propose(hist)
        m, sc = env.evaluate(x)
        hist.append((x, sc.objective, m.temp_max_c, sc.reject_pct, m.hashrate_mhs, m.power_w))
    best = optimizers.best_feasible(hist)
    assert best is not None
    assert env.true_score(best[0]).objective > 1.05 * default


@pytest.mark.parametrize("name", ["bandit", "random"])
def test_other_optimisers_propose_points_in_the_box(name: str) -> None:
    opt = optimizers.make(name, seed=1)
    hist: list[tuning.Observation] = []
    for i in range(8):
        x = opt.propose(hist)
        assert len(x) == 4 and all(0.0 <= v <= 1.0 for v in x)
        hist.append((x, 100.0 + i, 70.0, 0.3, 100.0, 250.0))
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizers.make("dqn")


# -- the online fold, closed over a simulated GPU ---------------------------------------------

class Loop:
    """Telemetry and shares every 5 s from a simulated card; commands applied and acked."""

    def __init__(self, propose: tuning.Proposer, p: TunerParams, ambient_c: float = 30.0):
        self.env = GpuTuningEnv("RTX 3090", seed=2, ambient_c=ambient_c)
        self.gpu, self.p, self.propose = self.env.gpu, p, propose
        self.state = tuning.TunerState()
        self.commands: list[ApplyGpuProfile] = []
        self.trials: list[TuningTrialEvaluated] = []
        self.t = 0.0

    def run(self, seconds: float) -> None:
        end = self.t + seconds
        while self.t < end:
            self.t += 5.0
            before = (self.gpu.accepted, self.gpu.rejected, self.gpu.stale)
            self.gpu.advance(self.t)
            ts = T0 + timedelta(seconds=self.t)
            d = [a - b for a, b in zip((self.gpu.accepted, self.gpu.rejected, self.gpu.stale),
                                       before, strict=True)]
            self.feed(ShareCountsObserved(
                site="site-1", device_id="rig01-gpu0", ts=ts, source="sim",
                worker="rig01-gpu0", pool="p", accepted=d[0], rejected=d[1], stale=d[2],
                interval_s=5.0))
            s = self.gpu.s
            self.feed(GpuTelemetryObserved(
                site="site-1", device_id="rig01-gpu0", ts=ts, source="sim", rig_id="rig01",
                gpu_index=0, card=self.gpu.card.name, hashrate_mhs=self.gpu.hashrate_mhs(),
                power_w=self.gpu.power_w(), power_limit_w=s.power_limit_w,
                temp_c=self.gpu.temp_c, core_clock_mhz=self.gpu.core_clock_mhz(),
                mem_clock_mhz=self.gpu.mem_clock_mhz()))

    def feed(self, e: object) -> None:
        _, out = tuning.step(self.state, e, frozenset({"rig01-gpu0"}),  # type: ignore[arg-type]
                             self.propose, self.p)
        for o in out:
            if isinstance(o, TuningTrialEvaluated):
                self.trials.append(o)
                continue
            self.commands.append(o)
            self.gpu.apply(GpuSettings(o.power_limit_w or 0, o.core_offset_mhz or 0,
                                       o.mem_offset_mhz or 0, o.intensity or 22))
            self.feed(CommandAcknowledged(
                site="site-1", device_id=o.device_id, ts=o.ts + timedelta(seconds=1),
                source="actuator:gpu", command_id=o.command_id, command_kind=o.kind,
                status="applied", detail="ok", latency_ms=1000.0, actuator="actuator:gpu"))


P = TunerParams(trials=6, settle_s=60, window_s=300, max_step=0.25, optimizer="scripted")


def scripted(points: list[list[float]]) -> tuning.Proposer:
    it = iter(points)
    return lambda family, history: next(it)


def test_online_tuning_steps_measures_rolls_back_and_keeps_the_best() -> None:
    sp = Space.for_card("RTX 3090")
    start = sp.to_unit(Settings4(350.0, 0.0, 0.0, 22))
    # toward more memory clock; the 4th jumps far past the card's stable offset
    targets = [[start[0], 0.4, 0.25, 0.9], [start[0], 0.4, 0.5, 1.0],
               [start[0], 0.4, 0.52, 1.0], [start[0], 0.4, 1.0, 1.0],
               [start[0], 0.4, 0.45, 1.0], [start[0], 0.4, 0.5, 1.0]]
    loop = Loop(scripted(targets), P)
    loop.run(6 * (60 + 300 + 20) + 300)
    assert [t.trial for t in loop.trials] == [1, 2, 3, 4, 5, 6]
    assert {t.optimizer for t in loop.trials} == {"scripted"}
    trial_cmds = [c for c in loop.commands if c.reason.startswith("tuning trial")]
    assert len(trial_cmds) == 6
    prev = start
    for c in trial_cmds:  # every trial moved each knob by at most max_step
        x = sp.to_unit(Settings4(c.power_limit_w or 0, c.core_offset_mhz or 0,
                                 c.mem_offset_mhz or 0, c.intensity or 0))
        assert all(abs(a - b) <= P.max_step + 0.01 for a, b in zip(x, prev, strict=True)), c
        prev = x
    # trial 4 (memory +0.25 past trial 3, over the stable offset) rejects: rolled back
    outcomes = [t.outcome for t in loop.trials]
    assert "rolled_back" in outcomes
    bad = next(t for t in loop.trials if t.outcome == "rolled_back")
    assert not bad.feasible and bad.rejected / max(1, bad.accepted + bad.rejected) > 0.01
    rollback = next(c for c in loop.commands if c.reason.startswith("roll back"))
    best_before = max((t for t in loop.trials if t.trial < bad.trial and t.feasible),
                      key=lambda t: t.objective)
    assert (rollback.mem_offset_mhz, rollback.intensity) == (best_before.mem_offset_mhz,
                                                             best_before.intensity)
    # done: the best feasible trial's settings are applied and kept
    final = loop.commands[-1]
    assert final.reason.startswith("tuning done")
    best = max((t for t in loop.trials if t.feasible), key=lambda t: t.objective)
    assert (final.power_limit_w, final.mem_offset_mhz, final.intensity) == (
        best.power_limit_w, best.mem_offset_mhz, best.intensity)
    n = len(loop.commands)
    loop.run(600)
    assert len(loop.commands) == n  # nothing more once done
    default = loop.env.true_score(start).objective
    assert loop.env.true_score(sp.to_unit(Settings4(
        final.power_limit_w or 0, final.core_offset_mhz or 0, final.mem_offset_mhz or 0,
        final.intensity or 0))).objective > 1.04 * default


def test_a_trial_too_hot_is_stopped_at_once_and_rolled_back() -> None:
    sp = Space.for_card("RTX 3090")
    hot = [1.0, 1.0, 0.0, 1.0]  # full power, +300 MHz core: over 90 °C at 45 °C ambient
    p = TunerParams(trials=2, settle_s=60, window_s=300, max_step=1.0, optimizer="scripted")
    loop = Loop(scripted([hot, sp.to_unit(sp.default())]), p, ambient_c=45.0)
    loop.run(2 * 400 + 200)
    first = loop.trials[0]
    assert first.outcome == "rolled_back" and first.temp_max_c > 90.0
    assert first.window_s < p.window_s  # stopped when it crossed T_max
    assert loop.commands[1].reason.startswith("roll back")


def test_a_rejected_command_counts_as_a_failed_trial() -> None:
    st = tuning.TunerState()
    seen: list[list[tuning.Observation]] = []

    def propose(family: str, history: list[tuning.Observation]) -> list[float]:
        seen.append(list(history))
        return [0.5, 0.5, 0.1, 0.8]

    tele = GpuTelemetryObserved(site="site-1", device_id="g", ts=T0, source="t", rig_id="r",
                                gpu_index=0, card="NVIDIA A100-PCIE-40GB", power_w=200,
                                power_limit_w=250, temp_c=60, core_clock_mhz=1400,
                                mem_clock_mhz=1215)
    _, out = tuning.step(st, tele, frozenset({"g"}), propose, P)
    (cmd,) = out
    assert isinstance(cmd, ApplyGpuProfile) and cmd.rig_id == "r"
    _, out = tuning.step(st, CommandAcknowledged(
        site="site-1", device_id="g", ts=T0, source="a", command_id=cmd.command_id,
        command_kind=cmd.kind, status="rejected", detail="unknown GPU", latency_ms=1,
        actuator="a"), frozenset({"g"}), propose, P)
    assert out == []
    _, out = tuning.step(st, tele.model_copy(update={"ts": T0 + timedelta(seconds=5),
                                                     "event_id": uuid4()}),
                         frozenset({"g"}), propose, P)
    assert len(seen) == 2 and seen[1][0][3] == 100.0  # the failed trial, as infeasible
    # a GPU not in tuning mode is left alone
    _, out = tuning.step(st, tele.model_copy(update={"device_id": "other"}), frozenset({"g"}),
                         propose, P)
    assert out == []


def test_grid_best_is_inside_the_box() -> None:
    env = GpuTuningEnv("A100", seed=3)
    pts = [list(p) for p in itertools.product(*(np.linspace(0, 1, 5),) * 4)]
    best = max((env.true_score(x).objective, x) for x in pts if env.true_score(x).feasible)
    assert best[0] > env.true_score(env.space.to_unit(env.space.default())).objective


def test_a_trials_reward_uses_the_clusters_accepted_shares() -> None:
    """Seed 000's contribution term: the worker's accepted shares against the whole
    cluster's in the same window (here an ASIC beside the tuned GPU)."""
    from agents.rewards import reward as seed_reward

    class WithCluster(Loop):
        others = 0

        def feed(self, e: object) -> None:
            super().feed(e)
            if isinstance(e, ShareCountsObserved) and e.worker == "rig01-gpu0":
                g = self.state.gpus.get("rig01-gpu0")
                if g is not None and g.phase == "measuring":
                    self.others += 40
                super().feed(ShareCountsObserved(
                    site="site-1", device_id="asic-1", ts=e.ts, source="sim", worker="asic-1",
                    pool="p", accepted=40, rejected=0, interval_s=5.0))

    sp = Space.for_card("RTX 3090")
    start = sp.to_unit(Settings4(350.0, 0.0, 0.0, 22))
    over = [start[0], 0.4, 0.9, 1.0]  # memory past the card's stable offset: it rejects
    loop = WithCluster(scripted([over] * 2), TunerParams(
        trials=1, settle_s=60, window_s=300, max_step=1.0, optimizer="scripted"))
    loop.run(60 + 300 + 60)
    t = loop.trials[0]
    total = t.accepted + t.rejected + t.stale
    acc, rej = 100 * t.accepted / total, 100 * t.rejected / total
    assert t.stale + t.rejected > 0  # so the contribution term matters
    assert t.reward == pytest.approx(seed_reward(rej, acc, t.accepted, t.accepted + loop.others,
                                                 t.temp_max_c, 90.0))
    alone = seed_reward(rej, acc, t.accepted, t.accepted, t.temp_max_c, 90.0)
    assert t.reward < alone  # sharing the cluster, the worker's own shortfall counts


# -- the profit objective ------------------------------------------------------------------


def test_profit_per_day_and_a_windows_profit_computed_by_hand() -> None:
    # 100 accepted MH/s at 0.01 a day = 1.00; 250 W x 24 h = 6 kWh at 80 per MWh = 0.48
    assert tuning.profit_per_day(100.0, 250.0, 0.01, 80.0) == pytest.approx(0.52)
    money = tuning.Objective("profit", revenue_per_mh_day=0.01, price_per_mwh=80.0)
    sc = score(Measurement(100.0, 250.0, 80.0, accepted=990, rejected=10, stale=0),
               objective=money)
    # 99 % accepted: 99 MH/s x 0.01 - 0.48
    assert sc.profit_per_day == pytest.approx(0.51)
    assert money.value(sc) == sc.profit_per_day and tuning.J.value(sc) == sc.objective
    unpriced = score(Measurement(100.0, 250.0, 80.0, 990, 10, 0))
    assert unpriced.profit_per_day is None
    with pytest.raises(ValueError, match="needs a power price"):
        tuning.Objective("profit", 0.01, None).value(unpriced)
    # the optimiser's composite on modelled parts (hashrate, temperature, log reject, power)
    z = torch.tensor([[100.0, 80.0, math.log(1.0 + optimizers.REJECT_FLOOR), 250.0]],
                     dtype=torch.double)
    expected = tuning.profit_per_day(100.0 * (100.0 - 1.0 - 0.2) / 100.0, 250.0, 0.01, 80.0)
    assert float(optimizers.composite(z, 90.0, money)[0]) == pytest.approx(expected)
    assert float(optimizers.composite(z[..., :3], 90.0, tuning.J)[0]) == pytest.approx(
        tuning.objective_of(100.0, 1.0, 80.0))


def test_the_profit_objective_needs_its_rates_and_says_which() -> None:
    with pytest.raises(ValueError, match="HASHPLANE_GPU_REVENUE_PER_MH_DAY and "
                                         "HASHPLANE_TUNER_POWER_PRICE_PER_MWH"):
        Settings(tuner_objective="profit")
    with pytest.raises(ValueError, match="needs HASHPLANE_TUNER_POWER_PRICE_PER_MWH"):
        Settings(tuner_objective="profit", gpu_revenue_per_mh_day=0.01)
    s = Settings(tuner_objective="profit", gpu_revenue_per_mh_day=0.01,
                 tuner_power_price_per_mwh=80.0)
    p = tuning.params(s)
    assert (p.objective, p.revenue_per_mh_day, p.price_per_mwh) == ("profit", 0.01, 80.0)


def _history(env: GpuTuningEnv, n: int) -> list[tuning.Observation]:
    rng = np.random.default_rng(4)
    out: list[tuning.Observation] = []
    for _ in range(n):
        x = [float(v) for v in rng.random(4)]
        m, sc = env.evaluate(x)
        out.append((x, sc.objective, m.temp_max_c, sc.reject_pct, m.hashrate_mhs, m.power_w))
    return out


def test_a_dearer_power_price_makes_the_optimiser_propose_less_power() -> None:
    env = GpuTuningEnv("RTX 3090", seed=3, ambient_c=30.0, window_s=300)
    hist = _history(env, 14)

    def proposal(price: float) -> list[float]:
        bandit = optimizers.make("bandit", seed=1)  # the same draws for both prices
        return bandit.propose(hist, tuning.Objective("profit", 0.01, price))

    cheap, dear = proposal(0.0), proposal(2_000.0)
    assert dear[0] < cheap[0]  # the power-limit knob
    # an observation without a recorded power (an old checkpoint's) is left out of profit
    old = [(x, j, t, r, h, math.nan) for x, j, t, r, h, _ in hist]
    assert optimizers.usable(old, tuning.Objective("profit", 0.01, 80.0)) == []
    assert len(optimizers.usable(old, tuning.J)) == len(old)


def test_bayesopt_on_profit_beats_the_default_settings_within_a_few_trials() -> None:
    money = tuning.Objective("profit", 0.01, 100.0)
    env = GpuTuningEnv("RTX 4090", seed=5, ambient_c=32.0, window_s=600)
    default = env.true_score(env.space.to_unit(env.space.default()), money).profit_per_day
    assert default is not None
    opt = optimizers.make("botorch", seed=3, objective=money)
    hist: list[tuning.Observation] = []
    for i in range(10):
        x = env.space.to_unit(env.space.default()) if i == 0 else opt.propose(hist)
        m, sc = env.evaluate(x, money)
        hist.append((x, money.value(sc), m.temp_max_c, sc.reject_pct, m.hashrate_mhs,
                     m.power_w))
    best = optimizers.best_feasible(hist)
    assert best is not None
    assert money.value(env.true_score(best[0], money)) > 1.05 * default


def test_online_trials_are_scored_at_the_price_in_force() -> None:
    p = TunerParams(trials=3, settle_s=60, window_s=300, max_step=0.25, optimizer="scripted",
                    objective="profit", revenue_per_mh_day=0.01, price_per_mwh=50.0)
    sp = Space.for_card("RTX 3090")
    x = sp.to_unit(Settings4(300.0, 0.0, 500.0, 22))
    loop = Loop(scripted([x, x, x]), p)
    loop.run(500)  # trial 1 at the configured price: no market price yet
    assert len(loop.trials) == 1
    # the market's price for the next hour
    start = T0 + timedelta(seconds=loop.t)
    loop.feed(PowerPriceObserved(
        site="site-1", device_id="price", ts=start, source="t", market="real_time",
        interval_start=start, interval_end=start + timedelta(hours=1), price_per_mwh=180.0,
        currency="USD"))
    loop.run(900)
    first, later = loop.trials[0], loop.trials[-1]
    assert (first.objective_kind, first.price_per_mwh) == ("profit", 50.0)
    assert later.price_per_mwh == 180.0
    for t in loop.trials:  # each as computed by hand from what its window measured
        acc = t.accepted / (t.accepted + t.rejected + t.stale)
        by_hand = t.hashrate_mhs * acc * 0.01 - t.power_w * 24 / 1e6 * (t.price_per_mwh or 0)
        assert t.profit_per_day == pytest.approx(by_hand, abs=1e-5)
    # the dearer power costs what it should at the same settings
    assert first.profit_per_day is not None and later.profit_per_day is not None
    assert later.profit_per_day < first.profit_per_day
