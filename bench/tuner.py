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

Then the same for the profit objective (``--objective both``, the default): each method
maximises the card's profit per day at ``--revenue`` per MH/s per day and ``--price`` per
MWh, against the grid's best feasible profit; and both tables print what the other
objective makes of the settings each run ended on (J of the profit-tuned settings, profit
of the J-tuned ones), so the price of tuning for one is visible in the other.
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
from agents.tuning import J, Objective, Observation, Score
from bench.gpu_env import GpuTuningEnv

CARDS = ("RTX 3090", "RTX 4090", "A100", "H100")
METHODS = ("botorch", "tpe", "bandit", "random")
GRID = [list(p) for p in itertools.product(
    np.linspace(0, 1, 9), np.linspace(0, 1, 6), np.linspace(0, 1, 21), np.linspace(0, 1, 5))]


@dataclass
class Run:
    method: str
    ratios: list[float] = field(default_factory=list)  # incumbent's true value / grid best
    final: Score | None = None  # the incumbent's noise-free score at the end
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

    def propose(self, history: list[Observation],
                objective: Objective | None = None) -> list[float]:
        for x, j, temp, rej, *_ in history[self.told:]:  # tell what happened
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


def run(method: str, card: str, seed: int, ambient: float, trials: int, best: float,
        objective: Objective) -> Run:
    env = GpuTuningEnv(card, seed=seed, ambient_c=ambient)
    opt: Any = Tpe(seed) if method == "tpe" else make(method, seed=seed + 1000,
                                                      objective=objective)
    out = Run(method)
    hist: list[Observation] = []
    t0 = time.perf_counter()
    for i in range(trials):
        x = env.space.to_unit(env.space.default()) if i == 0 else opt.propose(hist)
        m, sc = env.evaluate(x, objective)
        hist.append((x, objective.value(sc), m.temp_max_c, sc.reject_pct, m.hashrate_mhs,
                     m.power_w))
        if m.temp_max_c > env.temp_max_c:
            out.hot.append(i + 1)
        if sc.reject_pct > env.reject_max_pct:
            out.rejecting.append(i + 1)
        ok = [h for h in hist if h[2] <= env.temp_max_c and h[3] <= env.reject_max_pct]
        inc = max(ok, key=lambda h: h[1])[0] if ok else None
        true = env.true_score(inc, objective) if inc is not None else None
        out.ratios.append(objective.value(true) / best if true is not None and true.feasible
                          else 0.0)
        out.final = true or out.final
    out.seconds = time.perf_counter() - t0
    return out


def table(objective: Objective, methods: list[str], seeds: int, trials: int) -> dict[str, float]:
    """One objective's runs over every seed and method: per-seed and summary rows; returns
    each method's median trials to 2 %."""
    name = "J" if objective.kind == "j" else "profit/day"
    runs: dict[str, list[Run]] = {m: [] for m in methods}
    defaults: list[Score] = []
    bests: list[float] = []
    print(f"{'seed':>4} {'card':9} {'amb':>4} {'grid best ' + name:>17} {'default':>9}  "
          + "  ".join(f"{m + ' trials->2%':>18}" for m in methods))
    for seed in range(seeds):
        card, ambient = CARDS[seed % len(CARDS)], 28.0 + (seed * 5) % 14
        env = GpuTuningEnv(card, seed=seed, ambient_c=ambient)
        scores = [env.true_score(x, objective) for x in GRID]
        best = max(objective.value(s) for s in scores if s.feasible)
        bests.append(best)
        d = env.true_score(env.space.to_unit(env.space.default()), objective)
        defaults.append(d)
        row = []
        for m in methods:
            r = run(m, card, seed, ambient, trials, best, objective)
            runs[m].append(r)
            n = r.trials_to()
            row.append(f"{(str(n) if n else '>' + str(trials)):>18}")
        print(f"{seed:>4} {card:9} {ambient:>4.0f} {best:>17.3f} {objective.value(d):>9.3f}  "
              + "  ".join(row))

    def finals(rs: list[Run]) -> list[Score]:
        return [r.final or d for r, d in zip(rs, defaults, strict=True)]

    print()
    print(f"{'method':8} {'trials to 2% (median)':>21} {'reached':>8} {'final/best':>11} "
          f"{name + ' vs default':>18} {'J vs default':>13} {'profit/day':>11} "
          f"{'MH/J vs default':>16} {'reward':>7} {'>90°C trials':>13} {'after 5':>8} "
          f"{'>1% rej':>8} {'s/run':>7}")
    for m in methods:
        rs = runs[m]
        n = [r.trials_to() or trials + 1 for r in rs]
        med = statistics.median(n)
        fs = finals(rs)
        final = statistics.median(r.ratios[-1] for r in rs)
        vs_def = statistics.median(objective.value(f) / objective.value(d)
                                   for f, d in zip(fs, defaults, strict=True))
        j_def = statistics.median(f.objective / d.objective
                                  for f, d in zip(fs, defaults, strict=True))
        money = statistics.median(f.profit_per_day or 0.0 for f in fs)
        eff = statistics.median(f.efficiency / d.efficiency
                                for f, d in zip(fs, defaults, strict=True))
        hot = sum(len(r.hot) for r in rs)
        hot5 = sum(1 for r in rs for t in r.hot if t > 5)
        rej = sum(len(r.rejecting) for r in rs)
        reached = sum(1 for r in rs if r.trials_to() is not None)
        print(f"{m:8} {('>' if med > trials else '') + f'{min(med, trials):g}':>21} "
              f"{reached:>4}/{len(rs):<3} {final:>11.3f} {vs_def:>18.3f} {j_def:>13.3f} "
              f"{money:>11.3f} {eff:>16.3f} {statistics.median(f.reward for f in fs):>7.2f} "
              f"{hot:>13} {hot5:>8} {rej:>8} {statistics.mean(r.seconds for r in rs):>7.1f}")
    of_best = statistics.median(objective.value(d) / b
                                for d, b in zip(defaults, bests, strict=True))
    print(f"{'default':8} {'-':>21} {'':>8} {of_best:>11.3f} "
          f"{1.0:>18.3f} {1.0:>13.3f} "
          f"{statistics.median(d.profit_per_day or 0.0 for d in defaults):>11.3f} {1.0:>16.3f} "
          f"{statistics.median(d.reward for d in defaults):>7.2f}")
    medians = {m: statistics.median(r.trials_to() or trials + 1 for r in runs[m])
               for m in methods}
    if "botorch" in runs:
        bo = medians["botorch"]
        others = {m: v for m, v in medians.items() if m in ("tpe", "random")}
        hot5 = sum(1 for r in runs["botorch"] for t in r.hot if t > 5)
        fewer = ("MET" if all(bo < v for v in others.values()) else "NOT MET") if others \
            else "n/a"
        print(f"goal ({name}) BO <= 25 trials to 2% (median): "
              f"{'MET' if bo <= min(25, trials) else 'NOT MET'} "
              f"({('>' + str(trials)) if bo > trials else f'{bo:g}'}); fewer than TPE and random: "
              f"{fewer} ({', '.join(f'{k} {v:g}' for k, v in others.items())}); no temperature "
              f"violation after trial 5: {'MET' if hot5 == 0 else 'NOT MET'} ({hot5})")
    return medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--objective", choices=("both", "j", "profit"), default="both")
    ap.add_argument("--revenue", type=float, default=0.01,
                    help="revenue per accepted MH/s per day (profit objective)")
    ap.add_argument("--price", type=float, default=100.0,
                    help="power price per MWh (profit objective)")
    ap.add_argument("--skip-replay", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    methods = args.methods.split(",")
    money = Objective("profit", args.revenue, args.price)
    print(f"# GPU tuner ({platform.machine()}, python {platform.python_version()}), "
          f"{args.seeds} seeds x {args.trials} trials; profit at {args.revenue:g} per MH/s "
          f"per day and {args.price:g} per MWh")
    for objective in ((J, money) if args.objective == "both" else
                      (J,) if args.objective == "j" else (money,)):
        print(f"\n## objective: {'J' if objective.kind == 'j' else 'profit per day'}")
        # every score also carries the profit at these rates
        table(Objective(objective.kind, args.revenue, args.price), methods, args.seeds,
              args.trials)
    if not args.skip_replay:
        print()
        subprocess.run([sys.executable, str(ROOT / "bench" / "replay.py")], check=True)


if __name__ == "__main__":
    main()
