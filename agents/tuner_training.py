"""Training the tuner's models from history, versioned checkpoints, and their comparison.

``train`` reads the tuning trials (``TuningTrialEvaluated``) of a time range from ClickHouse,
groups them by card family, fits one GP per outcome the optimiser models (hashrate, peak
temperature, log reject ratio) on the normalised settings, and saves a checkpoint
``tuner-vNNNN.pt`` (the next free number) holding the observations and the fitted
hyperparameters.  The online tuner warm-starts from a checkpoint's observations
(``HASHPLANE_TUNER_CHECKPOINT``).

``evaluate`` scores checkpoints on the same trials (replayed from ClickHouse): error of the
predicted objective J, rank correlation of predicted vs measured J, and the regret of the
model's pick (the trial it predicts best within the constraints, against the best measured).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.optimizers import REJECT_FLOOR, _composite, targets
from agents.rewards import reward as seed_reward
from agents.tuning import Observation, Settings4, Space

FORMAT = "hashplane-tuner/1"
OUTCOMES = ("hashrate", "temp", "log_reject")


@dataclass
class Checkpoint:
    """A trained checkpoint."""

    version: int
    path: Path
    created: str
    trained_on: dict[str, Any]
    observations: dict[str, list[Observation]]  # family -> trials
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> state dicts


def observations(rows: Iterable[dict[str, Any]]) -> dict[str, list[Observation]]:
    """Stored tuning trials (``streams.queries.tuning_trials``, oldest first) as the
    optimisers' observations, per card family."""
    out: dict[str, list[Observation]] = {}
    for r in rows:
        space = Space.for_card(str(r["card"]))
        x = space.to_unit(Settings4(float(r["power_limit_w"]), float(r["core_offset_mhz"]),
                                    float(r["mem_offset_mhz"]), int(r["intensity"])))
        total = (r["accepted"] or 0) + (r["rejected"] or 0) + (r["stale"] or 0)
        rej = 100.0 * (r["rejected"] or 0) / total if total else 100.0
        power = r.get("power_w")
        out.setdefault(space.family, []).append(
            (x, float(r["objective"]), float(r["temp_max_c"]), rej, float(r["hashrate_mhs"]),
             math.nan if power is None else float(power)))
    return out


def _fit(obs: list[Observation]) -> tuple[Any, list[Any]]:
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    x = torch.tensor([o[0] for o in obs], dtype=torch.double)
    ys = targets(obs)
    models = []
    for y in ys:
        m = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(m.likelihood, m))
        models.append(m)
    return x, models


def next_path(out_dir: Path) -> tuple[int, Path]:
    """The next free checkpoint version in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    have = [int(m.group(1)) for p in out_dir.glob("tuner-v*.pt")
            if (m := re.fullmatch(r"tuner-v(\d+)\.pt", p.name))]
    v = max(have, default=0) + 1
    return v, out_dir / f"tuner-v{v:04d}.pt"


def train(data: dict[str, list[Observation]], since: datetime, until: datetime, out_dir: Path,
          min_trials: int = 5, progress: Callable[[int, int, str], None] | None = None,
          ) -> Checkpoint:
    """Fit the per-family models on the trials of [since, until) (``observations``) and save
    a checkpoint; ``progress(done, total, family)`` after each family's fit."""
    usable = {f: obs for f, obs in data.items() if len(obs) >= min_trials}
    if not usable:
        counts = {f: len(o) for f, o in data.items()}
        raise ValueError(f"no card family has {min_trials} tuning trials in "
                         f"[{since.isoformat()}, {until.isoformat()}): {counts or 'none'}")
    models: dict[str, dict[str, Any]] = {}
    for n, (family, obs) in enumerate(usable.items(), start=1):
        _, fitted = _fit(obs)
        models[family] = {name: m.state_dict() for name, m in zip(OUTCOMES, fitted, strict=True)}
        if progress is not None:
            progress(n, len(usable), family)
    version, path = next_path(out_dir)
    ck = Checkpoint(version, path, datetime.now(UTC).isoformat(), {
        "from": since.isoformat(), "until": until.isoformat(),
        "trials": {f: len(o) for f, o in usable.items()}}, usable, models)
    torch.save({"format": FORMAT, "version": version, "created": ck.created,
                "trained_on": ck.trained_on, "observations": usable, "models": models}, path)
    return ck


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint written by ``train``; ValueError names what is wrong with another file."""
    p = Path(path)
    import pickle

    try:
        raw = torch.load(p, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"cannot read tuner checkpoint {p}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{p} is not a {FORMAT} checkpoint")
    # a checkpoint older than the profit objective has no power: NaN (the J objective
    # does not need it; the profit objective leaves those observations out)
    obs = {f: [(list(o[0]), float(o[1]), float(o[2]), float(o[3]), float(o[4]),
                float(o[5]) if len(o) > 5 else math.nan) for o in v]
           for f, v in raw["observations"].items()}
    return Checkpoint(int(raw["version"]), p, str(raw["created"]), dict(raw["trained_on"]),
                      obs, dict(raw["models"]))


@dataclass(frozen=True)
class Evaluation:
    """How well a checkpoint's models explain a set of trials (one card family)."""

    version: int
    family: str
    trials: int
    rmse_objective: float
    spearman: float
    pick_regret: float  # 1 - measured J of the model's pick / best measured feasible J


def evaluate(ck: Checkpoint, data: dict[str, list[Observation]], temp_max_c: float = 90.0,
             reject_max_pct: float = 1.0) -> list[Evaluation]:
    """Score ``ck`` on ``data`` (per family it has a model for)."""
    out = []
    for family, obs in sorted(data.items()):
        if family not in ck.models or not obs:
            continue
        models = _load_models(ck, family)
        x = torch.tensor([o[0] for o in obs], dtype=torch.double)
        with torch.no_grad():
            mean = torch.stack([m.posterior(x).mean.squeeze(-1) for m in models], -1)
        pred_j = _composite(mean, temp_max_c)
        meas_j = torch.tensor([o[1] for o in obs], dtype=torch.double)
        rmse = float(torch.sqrt(((pred_j - meas_j) ** 2).mean()))
        feasible_pred = (mean[:, 1] <= temp_max_c) & (
            torch.exp(mean[:, 2]) - REJECT_FLOOR <= reject_max_pct)
        pick = int(torch.argmax(torch.where(feasible_pred, pred_j, torch.full_like(
            pred_j, -math.inf)))) if bool(feasible_pred.any()) else int(torch.argmax(pred_j))
        ok = [o[1] for o in obs if o[2] <= temp_max_c and o[3] <= reject_max_pct]
        best = max(ok) if ok else max(o[1] for o in obs)
        regret = 1.0 - obs[pick][1] / best if best > 0 else 0.0
        out.append(Evaluation(ck.version, family, len(obs), rmse, _spearman(pred_j, meas_j),
                              regret))
    return out


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 2:
        return float("nan")
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(torch.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


class OfflineTuningEnv(gym.Env[np.ndarray, np.ndarray]):
    """A gymnasium environment built from replayed history: a checkpoint's GPs (trained on
    stored trials of one card family) stand in for the card.  Same spaces and reward as
    bench/gpu_env.GpuTuningEnv: observation = last predicted window + settings, action =
    bounded change of the four knobs, reward = seed 000's; outcomes are posterior samples,
    so the environment is as noisy as the model is unsure."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, ck: Checkpoint, family: str, max_step: float = 0.25,
                 temp_max_c: float = 90.0, max_trials: int = 25):
        if family not in ck.models:
            raise ValueError(f"checkpoint v{ck.version} has no model for {family!r}; it has "
                             f"{sorted(ck.models)}")
        self.models = _load_models(ck, family)
        obs = ck.observations[family]
        self.space = Space.for_card(family)
        self.max_step, self.temp_max_c, self.max_trials = max_step, temp_max_c, max_trials
        self.observation_space = gym.spaces.Box(0.0, 1.0, (9,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float64)
        self.ref = max(o[4] for o in obs) * 1.3 or 1.0
        self.x = self.space.to_unit(self.space.default())
        self.trials, self.last = 0, (0.0, 0.0, 0.0)

    def _sample(self, x: list[float]) -> tuple[float, float, float]:
        t = torch.tensor([x], dtype=torch.double)
        with torch.no_grad():
            v = [float(m.posterior(t).rsample(torch.Size([1])).squeeze()) for m in self.models]
        return max(0.0, v[0]), v[1], min(100.0, max(0.0, math.exp(v[2]) - REJECT_FLOOR))

    def _obs(self) -> np.ndarray:
        h, temp, rej = self.last
        return np.clip(np.array([temp / 100.0, 0.0, h / self.ref, rej / 10.0,
                                 (100.0 - rej) / 100.0, *self.x], dtype=np.float64), 0.0, 1.0)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        torch.manual_seed(seed or 0)
        self.x = self.space.to_unit(self.space.default())
        self.trials, self.last = 0, self._sample(self.x)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.x = [float(min(1.0, max(0.0, v + d * self.max_step)))
                  for v, d in zip(self.x, a, strict=True)]
        self.last = h, temp, rej = self._sample(self.x)
        r = seed_reward(rej, 100.0 - rej, 0, 0, temp, self.temp_max_c)
        self.trials += 1
        info = {"objective": h * (100.0 - rej) / 100.0 * r / 100.0, "temp_max_c": temp,
                "reject_pct": rej}
        return self._obs(), r, False, self.trials >= self.max_trials, info


def _load_models(ck: Checkpoint, family: str) -> list[Any]:
    """The checkpoint's fitted GPs of one family, in OUTCOMES order, in eval mode."""
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize

    obs = ck.observations[family]
    x = torch.tensor([o[0] for o in obs], dtype=torch.double)
    models = []
    for name, y in zip(OUTCOMES, targets(obs), strict=True):
        m = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
        m.load_state_dict(ck.models[family][name])
        m.eval()
        models.append(m)
    return models
