"""GPU tuner benchmark: BoTorch BO against the Thompson bandit, random search, Optuna TPE and
RainbowMiner's default settings, on the simulated cards (sim/gpu.py), and the replay
throughput.  Prints measured numbers; not a test.

    .venv/bin/python bench/tuner.py [--seeds 10] [--trials 30] [--skip-replay]

Each seed is one simulated card (RTX 3090, RTX 4090, A100, H100 in turn; its own silicon
lottery) at its own ambient temperature (28-41 °C).  Every method starts from the default
settings (trial 1) and then proposes; each trial applies the settings, lets the card settle
180 s and measures 900 s of simulated shares (Poisson, so reject ratios are noisy as on a
real pool).  The incumbent after each trial is the best measured trial within the
constraints (<= 90 °C, <= 1 % rejected); its noise-free score at steady state is compared
with the best feasible point of an exhaustive grid (9 x 6 x 21 x 5 = 5,670 settings).
Reported: trials until the incumbent is within 2 % of the grid's best, final objective and
efficiency (accepted MH per joule) against the default, and constraint violations (trials
measured above 90 °C, in total and after the first 5; trials above 1 % rejected).
Goal: BO within 2 % in <= 25 trials (median), fewer than TPE and random, no temperature
violation after the first 5 trials.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from agents.optimizers import make
from agents.tuning import Observation
from bench.gpu_env import GpuTuningEnv

CARDS = ("RTX 3090", "RTX 4090", "A100", "H100")
METHODS = ("botorch", "tpe", "bandit", "random")
GRID = [list(p) for p in itertools.product(
    np.linspace(0, 1, 9), np.linspace(0, 1, 6), np.linspace(0, 1, 21), np.linspace(0, 1, 5))]


@dataclass
class Run:
    method: str
    ratios: list[float] = field(default_factory=list)  # incumbent's true J / grid best
    final_j: float = 0.0
    final_eff: float = 0.0
    final_reward: float = 0.0
    hot: list[int] = field(default_factory=list)  # trials measured above T_max
    rejecting: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def trials_to(self, within: float = 0.02) -> int | None:
        return next((i + 1 for i, r in enumerate(self.ratios) if r >= 1.0 - within), None)


class Tpe:
    """Optuna TPE behind the same propose(history) interface (constraints via
    constraints_func, as Optuna's TPE supports them)."""

    name = "tpe"

    def __init__(self, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=5,
            constraints_func=lambda t: t.user_attrs["constraints"]))
        self.told = 0

    def propose(self, history: list[Observation]) -> list[float]:
        for x, j, temp, rej, _ in history[self.told:]:  # tell what happened
            t = self.optuna.trial.create_trial(
                params={f"x{i}": v for i, v in enumerate(x)},
                distributions={f"x{i}": self.optuna.distributions.FloatDistribution(0.0, 1.0)
                               for i in range(4)},
                value=j, user_attrs={"constraints": [temp - 90.0, rej - 1.0]})
            self.study.add_trial(t)
        self.told = len(history)
        trial = self.study.ask()
        x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(4)]
        self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)  # real value added
        return x


def run(method: str, card: str, seed: int, ambient: float, trials: int, best: float) -> Run:
    env = GpuTuningEnv(card, seed=seed, ambient_c=ambient)
    opt: Any = Tpe(seed) if method == "tpe" else make(method, seed=seed + 1000)
    out = Run(method)
    hist: list[Observation] = []
    t0 = time.perf_counter()
    for i in range(trials):
        x = env.space.to_unit(env.space.default()) if i == 0 else opt.propose(hist)
        m, sc = env.evaluate(x)
        hist.append((x, sc.objective, m.temp_max_c, sc.reject_pct, m.hashrate_mhs))
        if m.temp_max_c > env.temp_max_c:
            out.hot.append(i + 1)
        if sc.reject_pct > env.reject_max_pct:
            out.rejecting.append(i + 1)
        ok = [h for h in hist if h[2] <= env.temp_max_c and h[3] <= env.reject_max_pct]
        inc = max(ok, key=lambda h: h[1])[0] if ok else None
        true = env.true_score(inc) if inc is not None else None
        out.ratios.append(true.objective / best if true is not None and true.feasible else 0.0)
        if true is not None:
            out.final_j, out.final_eff, out.final_reward = (true.objective, true.efficiency,
                                                            true.reward)
    out.seconds = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--skip-replay", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    methods = args.methods.split(",")
    print(f"# GPU tuner ({platform.machine()}, python {platform.python_version()}), "
          f"{args.seeds} seeds x {args.trials} trials")
    runs: dict[str, list[Run]] = {m: [] for m in methods}
    defaults: list[tuple[float, float, float]] = []
    bests: list[float] = []
    print(f"{'seed':>4} {'card':9} {'amb':>4} {'grid best J':>11} {'default J':>9}  "
          + "  ".join(f"{m + ' trials->2%':>18}" for m in methods))
    for seed in range(args.seeds):
        card, ambient = CARDS[seed % len(CARDS)], 28.0 + (seed * 5) % 14
        env = GpuTuningEnv(card, seed=seed, ambient_c=ambient)
        scores = [env.true_score(x) for x in GRID]
        best = max(s.objective for s in scores if s.feasible)
        bests.append(best)
        d = env.true_score(env.space.to_unit(env.space.default()))
        defaults.append((d.objective, d.efficiency, d.reward))
        row = []
        for m in methods:
            r = run(m, card, seed, ambient, args.trials, best)
            runs[m].append(r)
            n = r.trials_to()
            row.append(f"{(str(n) if n else '>' + str(args.trials)):>18}")
        print(f"{seed:>4} {card:9} {ambient:>4.0f} {best:>11.1f} {d.objective:>9.1f}  "
              + "  ".join(row))

    print()
    print(f"{'method':8} {'trials to 2% (median)':>21} {'reached':>8} {'final J / best':>15} "
          f"{'J vs default':>13} {'MH/J vs default':>16} {'reward':>7} {'>90°C trials':>13} "
          f"{'after 5':>8} {'>1% rej':>8} {'s/run':>7}")
    for m in methods:
        rs = runs[m]
        n = [r.trials_to() or args.trials + 1 for r in rs]
        med = statistics.median(n)
        final = statistics.median(r.ratios[-1] for r in rs)
        vs_def = statistics.median(r.final_j / d[0] for r, d in zip(rs, defaults, strict=True))
        eff = statistics.median(r.final_eff / d[1] for r, d in zip(rs, defaults, strict=True))
        hot = sum(len(r.hot) for r in rs)
        hot5 = sum(1 for r in rs for t in r.hot if t > 5)
        rej = sum(len(r.rejecting) for r in rs)
        reached = sum(1 for r in rs if r.trials_to() is not None)
        print(f"{m:8} {('>' if med > args.trials else '') + f'{min(med, args.trials):g}':>21} "
              f"{reached:>4}/{len(rs):<3} {final:>15.3f} {vs_def:>13.3f} {eff:>16.3f} "
              f"{statistics.median(r.final_reward for r in rs):>7.2f} "
              f"{hot:>13} {hot5:>8} {rej:>8} {statistics.mean(r.seconds for r in rs):>7.1f}")
    print(f"{'default':8} {'-':>21} {'':>8} "
          f"{statistics.median(d[0] / b for d, b in zip(defaults, bests, strict=True)):>15.3f} "
          f"{1.0:>13.3f} {1.0:>16.3f} {statistics.median(d[2] for d in defaults):>7.2f}")
    if "botorch" in runs:
        bo = statistics.median(r.trials_to() or args.trials + 1 for r in runs["botorch"])
        others = {m: statistics.median(r.trials_to() or args.trials + 1 for r in runs[m])
                  for m in ("tpe", "random") if m in runs}
        hot5 = sum(1 for r in runs["botorch"] for t in r.hot if t > 5)
        fewer = ("MET" if all(bo < v for v in others.values()) else "NOT MET") if others \
            else "n/a"
        print(f"goal BO <= 25 trials to 2% (median): {'MET' if bo <= 25 else 'NOT MET'} ({bo:g});"
              f" fewer than TPE and random: "
              f"{fewer} "
              f"({', '.join(f'{k} {v:g}' for k, v in others.items())}); no temperature "
              f"violation after trial 5: {'MET' if hot5 == 0 else 'NOT MET'} ({hot5})")
    if not args.skip_replay:
        print()
        subprocess.run([sys.executable, str(ROOT / "bench" / "replay.py")], check=True)


if __name__ == "__main__":
    main()
