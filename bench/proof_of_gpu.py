"""Proof-of-GPU benchmark: what a proof costs the rig, what checking it costs the validator,
and how often the check accepts a product the rig did not compute.  Prints measured
numbers; not a test.

    .venv/bin/python bench/proof_of_gpu.py [--n 1024] [--trials 400] [--wrong 0.01 0.02 0.05]

1. Prove and verify an honest challenge per precision on this machine (CUDA when present;
   on a CPU bf16 stands in for fp16): the rig's TFLOPS, its proving time (matrices, timed
   products, Merkle tree) and the validator's verification time.
2. False accepts: a cheating rig commits, faithfully, to a product that is wrong in a
   fraction f of its entries (the rest right: the most a sampled check can miss); over
   ``--trials`` fresh seeds the share the validator accepts, beside the bound (1-f)^k for
   k = rows x entries sampled.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.workloads import _torch
from schemas.proof_of_gpu import Challenge, commit, matrix, prove, verify


def honest(torch: object, n: int, reps: int) -> None:
    for precision in ("fp32", "fp16"):
        c = Challenge(seed=2026, n=n, precision=precision, reps=reps)
        t0 = time.perf_counter()
        proof = prove(c, torch)
        t1 = time.perf_counter()
        v = verify(c, proof, torch=torch)
        t2 = time.perf_counter()
        print(f"  {precision} (answered in {proof['precision']}) n={n} reps={reps} on "
              f"{proof['device']}: {v.tflops:.3f} TFLOPS measured, valid {v.valid}, class "
              f"{v.card_class or 'none listed'}; prove {t1 - t0:.2f} s (timed products "
              f"{proof['seconds']:.3f} s), verify {1000 * (t2 - t1):.1f} ms")


def false_accepts(torch: object, n: int, trials: int, wrong: float, rows: int,
                  entries: int) -> tuple[int, float]:
    """Accepted cheats out of ``trials``, and the median verification time (ms)."""
    import numpy as np

    accepted, times = 0, []
    for t in range(trials):
        c = Challenge(seed=10_000 + t, n=n, precision="fp32", reps=1, rows=rows,
                      entries_per_row=entries)
        good = (matrix(torch, c.seed, 1, n) @ matrix(torch, c.seed, 2, n)).numpy()  # type: ignore[attr-defined]
        rng = np.random.default_rng(t)
        bad = good.copy()
        mask = rng.random(good.shape) < wrong
        bad[mask] += rng.uniform(1.0, 5.0, int(mask.sum())) * rng.choice([-1, 1], int(mask.sum()))
        proof = commit(c, [bad[i].astype("<f4").tobytes() for i in range(n)], 1.0,
                       device="cheat", memory_gb=0.0, precision="fp32")
        t0 = time.perf_counter()
        accepted += verify(c, proof, torch=torch).valid
        times.append(1000 * (time.perf_counter() - t0))
    return accepted, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1024, help="matrix size of the honest proof")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--trials", type=int, default=400, help="cheating rigs per fraction")
    ap.add_argument("--cheat-n", type=int, default=128, help="matrix size of the cheats")
    ap.add_argument("--wrong", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    ap.add_argument("--entries", type=int, nargs="+",
                    default=[16, Challenge(seed=0).entries_per_row],
                    help="entries sampled per opened row (the default challenge's last)")
    a = ap.parse_args()
    torch = _torch()
    where = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    print(f"proof-of-GPU benchmark ({where})")
    print("honest rig:")
    honest(torch, a.n, a.reps)
    rows = Challenge(seed=0).rows
    for entries in a.entries:
        k = rows * entries
        print(f"cheating rigs ({a.trials} per row, n={a.cheat_n}, {rows} rows x {entries} "
              f"entries = {k} sampled):")
        for f in a.wrong:
            ok, ms = false_accepts(torch, a.cheat_n, a.trials, f, rows, entries)
            print(f"  {100 * f:4.1f} % of entries wrong: accepted {ok}/{a.trials} = "
                  f"{ok / a.trials:.4f} (bound (1-f)^{k} = {(1 - f) ** k:.4f}); verify "
                  f"{ms:.1f} ms median")


if __name__ == "__main__":
    main()
