"""A synthetic share source: drives the pipeline where no simulated farm is running.

Each worker produces shares at a rate with a reject and stale probability; one worker in
eight has a bad memory overclock and rejects about 8 %.  ``tick`` is pure (time and the
random generator are inputs); ``run_synthetic`` publishes a tick every interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from schemas.envelope import Event
from schemas.events import ShareCountsObserved

log = logging.getLogger(__name__)
SOURCE = "connector:synthetic"


class Offer(Protocol):
    """Where the ticks go (the stack's publisher)."""

    async def offer(self, events: Sequence[Event]) -> Any: ...


@dataclass(frozen=True)
class SyntheticWorker:
    """One simulated worker's share behaviour."""

    name: str
    shares_per_s: float
    reject_p: float
    stale_p: float
    difficulty: float = 65_536.0


def default_workers(n: int, seed: int = 7) -> list[SyntheticWorker]:
    """``n`` workers; every eighth is overclocked past its stable memory offset."""
    rng = random.Random(seed)
    return [
        SyntheticWorker(
            name=f"rig{i // 8 + 1:02d}-gpu{i % 8}",
            shares_per_s=rng.uniform(0.5, 2.0),
            reject_p=0.08 if i % 8 == 5 else rng.uniform(0.002, 0.01),
            stale_p=rng.uniform(0.0, 0.005),
        )
        for i in range(n)
    ]


def tick(workers: list[SyntheticWorker], rng: random.Random, ts: datetime, interval_s: float,
         site: str) -> list[ShareCountsObserved]:
    """Share counts every worker produced during the interval ending at ``ts``."""
    out = []
    for w in workers:
        mean = w.shares_per_s * interval_s
        n = max(0, round(rng.gauss(mean, mean**0.5)))
        rejected = sum(1 for _ in range(n) if rng.random() < w.reject_p)
        stale = sum(1 for _ in range(n - rejected) if rng.random() < w.stale_p)
        accepted = n - rejected - stale
        out.append(ShareCountsObserved(
            site=site, device_id=w.name, ts=ts, source=SOURCE, worker=w.name,
            pool="stratum+tcp://pool.example:3333", accepted=accepted, rejected=rejected,
            stale=stale, difficulty_accepted=accepted * w.difficulty,
            difficulty_rejected=rejected * w.difficulty, interval_s=interval_s))
    return out


async def run_synthetic(publisher: Offer, stop: asyncio.Event, *, site: str,
                        workers: int = 16, interval_s: float = 2.0, seed: int = 7,
                        clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """Publish a tick of share counts every ``interval_s`` until ``stop``."""
    ws, rng = default_workers(workers, seed), random.Random(seed)
    while not stop.is_set():
        await publisher.offer(tick(ws, rng, clock(), interval_s, site))
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
