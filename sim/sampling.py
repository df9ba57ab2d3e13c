"""Random counts for the simulated devices (stdlib only, fast for small means)."""

from __future__ import annotations

import math
import random


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw: Knuth's method for small means, a normal approximation above 30."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def binomial(rng: random.Random, n: int, p: float) -> int:
    """A binomial draw (normal or Poisson approximation where they hold)."""
    if n <= 0 or p <= 0:
        return 0
    if n * p > 30:
        return max(0, min(n, round(rng.gauss(n * p, math.sqrt(n * p * (1 - p))))))
    return poisson(rng, n * p) if n > 50 else sum(1 for _ in range(n) if rng.random() < p)
