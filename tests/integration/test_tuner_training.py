"""Training from history: tuning trials on the real broker, stored by the real sink in the
real ClickHouse engine; ``tuner train`` fits and saves versioned checkpoints, ``tuner
evaluate`` (the CLI, in its own process) compares them on the same trials."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import torch

from agents import optimizers
from agents import tuner_training as tt
from agents.tuning import Space
from bench.gpu_env import GpuTuningEnv
from schemas.metrics import TuningTrialEvaluated
from schemas.settings import Settings
from streams.history import HistoryStore
from streams.publish import Publisher
from streams.queries import tuning_trials
from streams.sink import HistorySink
from tests.conftest import HASHPLANE, child_env, until

pytestmark = pytest.mark.integration
T = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def train(store: Any, since: Any, until: Any, out: Any) -> Any:
    """The CLI's ``tuner train``: the stored trials of a range, fitted."""
    return tt.train(tt.observations(tuning_trials(store, since, until)), since, until, out)


def recorded_trials(card: str, seed: int, n: int, start: datetime) -> list[TuningTrialEvaluated]:
    env = GpuTuningEnv(card, seed=seed, ambient_c=30.0, window_s=600)
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = [float(v) for v in torch.rand(4, generator=rng)]
        x[2] *= 0.6  # mostly below the cliff, as a cautious operator would try
        m, sc = env.evaluate(x)
        s = env.space.to_settings(x)
        out.append(TuningTrialEvaluated(
            site="site-1", device_id=f"rig01-gpu{seed}", ts=start + timedelta(minutes=i),
            source="agent:tuner", card=env.space.family, trial=i + 1, optimizer="random",
            power_limit_w=s.power_limit_w, core_offset_mhz=int(s.core_offset_mhz),
            mem_offset_mhz=int(s.mem_offset_mhz), intensity=s.intensity, window_s=600.0,
            hashrate_mhs=m.hashrate_mhs, power_w=m.power_w, temp_max_c=m.temp_max_c,
            accepted=m.accepted, rejected=m.rejected, stale=m.stale, reward=sc.reward,
            objective=sc.objective, efficiency_mh_per_j=sc.efficiency, feasible=sc.feasible,
            outcome="kept" if sc.feasible else "rolled_back"))
    return out


async def test_train_checkpoints_and_evaluate_them_on_replayed_trials(
        settings: Settings, store: HistoryStore) -> None:
    first = recorded_trials("RTX 3090", 1, 12, T) + recorded_trials("A100", 2, 3, T)
    later = recorded_trials("RTX 3090", 3, 20, T + timedelta(hours=1))
    async with Publisher(settings.kafka_bootstrap) as pub:
        await pub.publish_many([*first, *later])
    stop = asyncio.Event()
    sink = HistorySink(settings, store)
    task = asyncio.create_task(sink.run(stop))
    await until(lambda: sink.stats.inserted >= len(first) + len(later), 60, what="stored")
    stop.set()
    await task

    data = tt.observations(tuning_trials(store, T, T + timedelta(hours=3)))
    assert {f: len(o) for f, o in data.items()} == {"RTX 3090": 32, "A100": 3}
    out = settings.data_dir / "tuner"
    v1 = train(store, T, T + timedelta(minutes=59), out)  # the first run only
    v2 = train(store, T, T + timedelta(hours=3), out)  # everything
    assert (v1.version, v1.path.name, v2.path.name) == (1, "tuner-v0001.pt", "tuner-v0002.pt")
    assert v1.trained_on["trials"] == {"RTX 3090": 12}  # A100: 3 trials, under the minimum
    with pytest.raises(ValueError, match="no card family has 5 tuning trials"):
        train(store, T - timedelta(days=2), T - timedelta(days=1), out)

    back = tt.load_checkpoint(v2.path)
    assert back.version == 2 and len(back.observations["RTX 3090"]) == 32
    (e1,), (e2,) = (tt.evaluate(tt.load_checkpoint(p), {"RTX 3090": data["RTX 3090"]})
                    for p in (v1.path, v2.path))
    assert e1.trials == e2.trials == 32
    assert e2.rmse_objective < e1.rmse_objective  # trained on more of these trials
    assert e2.spearman > 0.7

    # a checkpoint warm-starts BO: it models at once instead of sampling Sobol points
    bo = optimizers.make("botorch", seed=0, prior=back.observations["RTX 3090"])
    x = bo.propose([])
    cold = optimizers.make("botorch", seed=0).propose([])
    assert x != cold and all(0 <= v <= 1 for v in x)
    best = optimizers.best_feasible(back.observations["RTX 3090"])
    assert best is not None and Space.for_card("RTX 3090").to_settings(best[0])

    # the offline environment: the trained models stand in for the card (gymnasium API)
    from gymnasium.utils.env_checker import check_env

    env = tt.OfflineTuningEnv(back, "RTX 3090")
    check_env(env, skip_render_check=True)
    env.reset(seed=1)
    _, reward, _, _, info = env.step(np.array([0.0, 0.0, 0.5, 0.5]))
    assert 0.0 <= reward <= 100.0 and info["objective"] > 0
    with pytest.raises(ValueError, match="no model for 'A100'"):
        tt.OfflineTuningEnv(back, "A100")

    bad = settings.data_dir / "not-a-checkpoint.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read tuner checkpoint"):
        tt.load_checkpoint(bad)

    store.close()  # the CLI opens the embedded engine in its own process
    env = child_env(settings)
    r = subprocess.run([*HASHPLANE, "tuner", "evaluate", "--from", T.isoformat(), "--to",
                        "now"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines()[1:]]
    assert [(ln[0], ln[1], ln[3]) for ln in lines] == [
        ("tuner-v0001.pt", "RTX", "32"), ("tuner-v0002.pt", "RTX", "32")]
    r = subprocess.run([*HASHPLANE, "tuner", "train", "--from=-1m"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no card family has 5 tuning trials" in r.stderr
