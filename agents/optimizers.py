"""Optimisers that propose GPU settings from the trials so far (agents/tuning.py's space).

Every optimiser is a function of the trial history, ``propose(history) -> unit point``, so the
online tuner, the benchmark and training call them the same way:

* ``BayesOpt`` — BoTorch: one GP per smooth outcome (hashrate, peak temperature, log reject
  ratio, and power for the profit objective) on the normalised settings, q=1 noisy
  expected improvement (qLogNEI) on the objective composed from them, with the constraints
  temperature <= T_max - 2 °C (a margin: a trial over T_max has already overheated the card)
  and reject <= 1 % as outcome constraints, and a candidate whose temperature the GP is not
  confident about (mean + 2 sd over T_max) pulled back toward the best feasible trial;
  warm-started by prior
  observations (history replayed from ClickHouse or a trained checkpoint).  Before it has
  ``n_init`` observations it samples a scrambled Sobol sequence.
* ``ThompsonBandit`` — seed 000's RL idea as a contextual bandit: Bayesian linear regression
  on random Fourier features of the settings (one model per outcome, per card family as the
  context), Thompson sampling over a fixed candidate set, constraints checked on the sampled
  outcomes.  Cheaper than the GP, no hyperparameter fitting.
* ``RandomSearch`` — uniform in the box (the baseline).

Each composes the objective from its modelled parts (``composite``): J, or the profit per
day at the revenue rate and power price passed with the call (``propose(history,
objective)``), so a new price changes the next proposal without refitting.

Optuna's TPE is compared in bench/tuner.py (a benchmark-only dependency).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from agents.tuning import (
    HOURS_PER_DAY,
    STALE_FRACTION,
    J,
    Objective,
    Observation,
    profit_per_day,
)

DIM = 4
REJECT_FLOOR = 0.1  # % added before the log of the reject ratio


class Optimizer(Protocol):
    """Proposes the next unit point from the observations so far."""

    name: str

    def propose(self, history: Sequence[Observation],
                objective: Objective | None = None) -> list[float]: ...


def best_feasible(history: Sequence[Observation], temp_max_c: float = 90.0,
                  reject_max_pct: float = 1.0) -> Observation | None:
    """The observation with the highest objective among those within the constraints."""
    ok = [h for h in history if h[2] <= temp_max_c and h[3] <= reject_max_pct]
    return max(ok, key=lambda h: h[1]) if ok else None


class RandomSearch:
    """Uniform random points."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def propose(self, history: Sequence[Observation],
                objective: Objective | None = None) -> list[float]:
        return [float(v) for v in self.rng.random(DIM)]


def _sobol(n: int, seed: int) -> np.ndarray:
    engine = torch.quasirandom.SobolEngine(DIM, scramble=True, seed=seed)  # type: ignore[no-untyped-call]
    return engine.draw(n).double().numpy()


class BayesOpt:
    """BoTorch GP + constrained qLogNEI (see the module docstring)."""

    name = "botorch"

    def __init__(self, seed: int = 0, n_init: int = 5, temp_max_c: float = 90.0,
                 reject_max_pct: float = 1.0, prior: Sequence[Observation] = (),
                 restarts: int = 4, raw_samples: int = 128, mc_samples: int = 64,
                 temp_margin_c: float = 2.0, objective: Objective = J):
        self.seed, self.n_init, self.temp_margin_c = seed, n_init, temp_margin_c
        self.objective = objective
        self.temp_max_c, self.reject_max_pct = temp_max_c, reject_max_pct
        self.prior = list(prior)
        self.restarts, self.raw_samples, self.mc_samples = restarts, raw_samples, mc_samples
        self._init = _sobol(max(n_init, 1) + 64, seed)

    def propose(self, history: Sequence[Observation],
                objective: Objective | None = None) -> list[float]:
        obj = objective or self.objective
        data = usable(self.prior + list(history), obj)
        if len(history) < self.n_init and len(data) < max(self.n_init, 2 * DIM):
            return [float(v) for v in self._init[len(history)]]
        return self._acquire(data, len(history), obj)

    def _acquire(self, data: list[Observation], n: int, obj: Objective) -> list[float]:
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.acquisition.objective import GenericMCObjective
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import ModelListGP, SingleTaskGP  # type: ignore[attr-defined]
        from botorch.models.transforms.outcome import Standardize
        from botorch.optim import optimize_acqf  # type: ignore[attr-defined]
        from botorch.sampling.normal import SobolQMCNormalSampler
        from gpytorch.mlls import SumMarginalLogLikelihood

        torch.manual_seed(self.seed * 1000 + n)
        x = torch.tensor([d[0] for d in data], dtype=torch.double)
        ys = targets(data, obj.kind)
        models = [SingleTaskGP(x, y, outcome_transform=Standardize(m=1)) for y in ys]
        model = ModelListGP(*models)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(SumMarginalLogLikelihood(model.likelihood, model))
            tmax, rmax = self.temp_max_c, math.log(self.reject_max_pct + REJECT_FLOOR)
            # proposals keep a margin under T_max: a trial over it has already overheated
            tsafe = tmax - self.temp_margin_c

            def objective(z: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
                return composite(z, tmax, obj)

            acqf = qLogNoisyExpectedImprovement(
                model, X_baseline=x, prune_baseline=True,
                sampler=SobolQMCNormalSampler(torch.Size([self.mc_samples]),
                                              seed=self.seed + n),
                objective=GenericMCObjective(objective),
                constraints=[lambda z: z[..., 1] - tsafe, lambda z: z[..., 2] - rmax])
            bounds = torch.stack([torch.zeros(DIM), torch.ones(DIM)]).double()
            cand, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=self.restarts,
                                    raw_samples=self.raw_samples,
                                    options={"seed": self.seed + n, "maxiter": 100})
        return self._safe(models[1], cand[0], data)

    def _safe(self, temp_model: Any, cand: torch.Tensor, data: list[Observation]) -> list[float]:
        """Pull a candidate toward the best feasible point until the temperature model is
        confident (mean + 2 sd) it stays under T_max: no trial should overheat a card."""
        best = best_feasible(data, self.temp_max_c - self.temp_margin_c, self.reject_max_pct)
        if best is None:
            return [float(v) for v in cand]
        anchor = torch.tensor(best[0], dtype=torch.double)
        for a in (1.0, 0.75, 0.5, 0.25):
            x = anchor + a * (cand - anchor)
            with torch.no_grad():
                post = temp_model.posterior(x.unsqueeze(0))
                upper = float(post.mean.squeeze() + 2.0 * post.variance.squeeze().sqrt())
            if upper <= self.temp_max_c:
                return [float(v) for v in x]
        return [float(v) for v in anchor]


def usable(data: Sequence[Observation], obj: Objective) -> list[Observation]:
    """The observations an objective can learn from, each valued by it: for profit, those
    with a recorded power, valued at ``obj``'s rates now (from their parts, as ``composite``
    does); for J, as recorded."""
    if obj.kind == "j":
        return list(data)
    return [(d[0], _profit_of_parts(d[4], d[3], d[5], obj), *d[2:]) for d in data
            if math.isfinite(d[5])]


def _profit_of_parts(hashrate_mhs: float, reject_pct: float, power_w: float,
                     obj: Objective) -> float:
    acc = 100.0 - reject_pct - 100.0 * STALE_FRACTION
    return profit_per_day(hashrate_mhs * acc / 100.0, power_w, obj.revenue_per_mh_day,
                          obj.price_per_mwh or 0.0)


def targets(data: Sequence[Observation], kind: str = "j") -> list[torch.Tensor]:
    """The outcomes the models fit, one column each.  J has a cliff where rejects start, so
    its smooth parts are modelled instead: hashrate, peak temperature, and the log of the
    reject ratio (flat near 0.3 %, then steep); the profit objective adds power."""
    cols = [torch.tensor([[d[4]] for d in data], dtype=torch.double),
            torch.tensor([[d[2]] for d in data], dtype=torch.double),
            torch.tensor([[math.log(d[3] + REJECT_FLOOR)] for d in data], dtype=torch.double)]
    if kind == "profit":
        cols.append(torch.tensor([[d[5]] for d in data], dtype=torch.double))
    return cols


def composite(z: torch.Tensor, temp_max_c: float, obj: Objective) -> torch.Tensor:
    """The objective from sampled (hashrate, peak temperature, log reject[, power])."""
    if obj.kind == "j":
        return _composite(z, temp_max_c)
    rej = (torch.exp(z[..., 2]) - REJECT_FLOOR).clamp(0.0, 100.0)
    acc = 100.0 - rej - 100.0 * STALE_FRACTION
    price = obj.price_per_mwh or 0.0  # agents.tuning.profit_per_day, on tensors
    return z[..., 0] * acc / 100.0 * obj.revenue_per_mh_day \
        - z[..., 3] * HOURS_PER_DAY / 1e6 * price


def _composite(z: torch.Tensor, temp_max_c: float) -> torch.Tensor:
    """J from sampled (hashrate, peak temperature, log reject) (agents.tuning.objective_of)."""
    h, t = z[..., 0], z[..., 1]
    rej = (torch.exp(z[..., 2]) - REJECT_FLOOR).clamp(0.0, 100.0)
    acc = 100.0 - rej - 100.0 * STALE_FRACTION
    reward = (100.0 - rej - (t - temp_max_c).clamp(min=0.0) - (100.0 - acc)).clamp(min=0.0)
    return h * acc / 100.0 * reward / 100.0


class _BLR:
    """Bayesian linear regression on fixed features, with Thompson sampling."""

    def __init__(self, n_features: int, alpha: float = 1.0):
        self.alpha = alpha
        self.n = n_features

    def sample(self, phi: np.ndarray, y: np.ndarray, cand_phi: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        mu_y, sd_y = float(y.mean()), float(y.std()) or 1.0
        z = (y - mu_y) / sd_y
        # noise variance from the spread the features cannot explain, floored
        beta = 1.0 / 0.05
        prec = self.alpha * np.eye(self.n) + beta * phi.T @ phi
        cov = np.linalg.inv(prec)
        cov = (cov + cov.T) / 2.0
        mean = beta * cov @ phi.T @ z
        w = rng.multivariate_normal(mean, cov, method="cholesky")
        return np.asarray(cand_phi @ w * sd_y + mu_y)


class ThompsonBandit:
    """Contextual bandit: random Fourier features + Thompson sampling (see the docstring)."""

    name = "bandit"

    def __init__(self, seed: int = 0, n_init: int = 5, temp_max_c: float = 90.0,
                 reject_max_pct: float = 1.0, prior: Sequence[Observation] = (),
                 features: int = 256, lengthscale: float = 0.2, candidates: int = 2048,
                 objective: Objective = J):
        self.rng = np.random.default_rng(seed)
        self.objective = objective
        self.n_init, self.prior = n_init, list(prior)
        self.temp_max_c, self.reject_max_pct = temp_max_c, reject_max_pct
        self.w = self.rng.normal(0.0, 1.0 / lengthscale, (DIM, features))
        self.b = self.rng.uniform(0.0, 2.0 * math.pi, features)
        self.cands = _sobol(candidates, seed + 7)
        self.cand_phi = self._phi(self.cands)
        self.blr = _BLR(features)
        self._init = _sobol(n_init + 1, seed)

    def _phi(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.sqrt(2.0 / self.w.shape[1]) * np.cos(x @ self.w + self.b))

    def propose(self, history: Sequence[Observation],
                objective: Objective | None = None) -> list[float]:
        obj = objective or self.objective
        data = usable(self.prior + list(history), obj)
        if len(history) < self.n_init and len(data) < self.n_init:
            return [float(v) for v in self._init[len(history)]]
        x = np.array([d[0] for d in data])
        phi = self._phi(x)
        # the same smooth parts as the GP: hashrate, peak temperature, log reject ratio
        h = self.blr.sample(phi, np.array([d[4] for d in data]), self.cand_phi, self.rng)
        t = self.blr.sample(phi, np.array([d[2] for d in data]), self.cand_phi, self.rng)
        logr = self.blr.sample(phi, np.log(np.array([d[3] for d in data]) + REJECT_FLOOR),
                               self.cand_phi, self.rng)
        r = np.exp(logr) - REJECT_FLOOR
        parts = [h, t, logr]
        if obj.kind == "profit":
            parts.append(self.blr.sample(phi, np.array([d[5] for d in data]), self.cand_phi,
                                         self.rng))
        j = np.asarray(composite(torch.from_numpy(np.stack(parts, -1)), self.temp_max_c, obj))
        ok = (t <= self.temp_max_c) & (r <= self.reject_max_pct)
        i = int(np.argmax(np.where(ok, j, -np.inf))) if ok.any() else int(np.argmin(t))
        return [float(v) for v in self.cands[i]]


def make(name: str, seed: int = 0, prior: Sequence[Observation] = (), n_init: int = 5,
         temp_max_c: float = 90.0, reject_max_pct: float = 1.0,
         objective: Objective = J) -> Optimizer:
    """An optimiser by name: botorch, bandit or random (``objective``: the default one; a
    ``propose`` call may pass the one in force)."""
    if name == "botorch":
        return BayesOpt(seed, n_init, temp_max_c, reject_max_pct, prior, objective=objective)
    if name == "bandit":
        return ThompsonBandit(seed, n_init, temp_max_c, reject_max_pct, prior,
                              objective=objective)
    if name == "random":
        return RandomSearch(seed)
    raise ValueError(f"unknown optimizer {name!r}; use botorch, bandit or random")
