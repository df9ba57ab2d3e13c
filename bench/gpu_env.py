"""A gymnasium environment over the simulated GPU physics (sim/gpu.py), for the tuner.

It binds the tuner's search space and score (agents/tuning.py) to the simulator, so it lives
with the benchmarks, not in sim/ (which knows nothing of the product).

Observation: the card's last window (peak temperature, mean power, mean hashrate, reject %,
accepted %) and its current settings, all normalised.  Action: a bounded change of the four
knobs (each in [-1, 1] x ``max_step`` of its range).  Reward: seed 000's reward of the
window; ``info`` carries the tuner's objective J, efficiency and the constraint checks.

``evaluate(x)`` is the black-box trial the optimisers use (apply absolute settings, settle,
measure a window of simulated time with Poisson shares), and ``true_score(x)`` the
noise-free score at thermal steady state (for exhaustive grids and regret).
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np

from agents.tuning import J, Measurement, Objective, Score, Settings4, Space, score
from sim.gpu import CARDS, GpuSettings, SimGpu


class GpuTuningEnv(gym.Env[np.ndarray, np.ndarray]):
    """One simulated GPU under tuning."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, card: str = "RTX 3090", seed: int = 0, ambient_c: float = 28.0,
                 settle_s: float = 180.0, window_s: float = 900.0, max_step: float = 0.25,
                 temp_max_c: float = 90.0, reject_max_pct: float = 1.0, max_trials: int = 25):
        self.card = CARDS[card]
        self.space = Space.for_card(card)
        self.seed_, self.ambient_c = seed, ambient_c
        self.settle_s, self.window_s, self.max_step = settle_s, window_s, max_step
        self.temp_max_c, self.reject_max_pct, self.max_trials = (
            temp_max_c, reject_max_pct, max_trials)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (9,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float64)
        self.gpu = self._new_gpu(seed)
        self.x = self.space.to_unit(self.space.default())
        self.trials = 0
        self.last: Measurement | None = None

    def _new_gpu(self, seed: int) -> SimGpu:
        return SimGpu(index=seed % 8, card=self.card, seed=seed, ambient_c=self.ambient_c)

    # -- black-box trials -------------------------------------------------------------------

    def settings(self, x: list[float]) -> GpuSettings:
        s = self.space.to_settings(x)
        return GpuSettings(s.power_limit_w, s.core_offset_mhz, s.mem_offset_mhz, s.intensity)

    def evaluate(self, x: list[float], objective: Objective = J) -> tuple[Measurement, Score]:
        """Apply ``x``, settle, measure one window (noisy shares); advances the card's time.
        The score's profit is at ``objective``'s rates."""
        g = self.gpu
        g.apply(self.settings(x))
        t = g.last_t + self.settle_s
        g.advance(t)
        g.reset_counters()
        hs, ps, temps = [], [], []
        end = t + self.window_s
        while t < end:
            t = min(end, t + 10.0)
            g.advance(t)
            hs.append(g.hashrate_mhs())
            ps.append(g.power_w())
            temps.append(g.temp_c)
        m = Measurement(float(np.mean(hs)), float(np.mean(ps)), float(max(temps)),
                        g.accepted, g.rejected, g.stale)
        self.last = m
        return m, score(m, self.temp_max_c, self.reject_max_pct, objective=objective)

    def true_score(self, x: list[float], objective: Objective = J) -> Score:
        """Noise-free score of ``x`` at thermal steady state (does not touch the card)."""
        g = copy.copy(self.gpu)
        g.apply(self.settings(x))
        g.temp_c = g.steady_temp_c()
        p = g.reject_probability()
        total = 1.0
        rej, stale = p, (1.0 - p) * 0.002
        acc = total - rej - stale
        m = Measurement(g.hashrate_mhs(), g.power_w(), g.temp_c, round(acc * 1e6),
                        round(rej * 1e6), round(stale * 1e6))
        return score(m, self.temp_max_c, self.reject_max_pct, objective=objective)

    # -- gymnasium ----------------------------------------------------------------------------

    def _obs(self) -> np.ndarray:
        m = self.last
        assert m is not None
        total = max(1, m.accepted + m.rejected + m.stale)
        ref = self.card.bandwidth_gbs * 1.3  # above any reachable MH/s
        return np.array([
            min(1.0, m.temp_max_c / 100.0), min(1.0, m.power_w / self.space.pl[1]),
            min(1.0, m.hashrate_mhs / ref), min(1.0, 10.0 * m.rejected / total),
            m.accepted / total, *self.x], dtype=np.float64)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.gpu = self._new_gpu(self.seed_ if seed is None else seed)
        self.x = self.space.to_unit(self.space.default())
        self.trials = 0
        self.evaluate(self.x)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.x = [float(min(1.0, max(0.0, v + d * self.max_step)))
                  for v, d in zip(self.x, a, strict=True)]
        m, sc = self.evaluate(self.x)
        self.trials += 1
        info = {"objective": sc.objective, "efficiency": sc.efficiency, "feasible": sc.feasible,
                "temp_max_c": m.temp_max_c, "reject_pct": sc.reject_pct,
                "settings": self.space.to_settings(self.x)}
        return self._obs(), sc.reward, False, self.trials >= self.max_trials, info


def settings_of(env: GpuTuningEnv, x: list[float]) -> Settings4:
    """Physical settings of a unit point (for printing)."""
    return env.space.to_settings(x)
