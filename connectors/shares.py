"""Share counts from cumulative miner counters (pure): deltas between reads, resets detected."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.events import ShareCountsObserved


@dataclass(frozen=True)
class Counters:
    """The cumulative counters of one read, for share deltas."""

    accepted: int
    rejected: int
    stale: int
    diff_accepted: float
    diff_rejected: float
    elapsed_s: int
    ts: datetime
    worker: str
    pool: str


def share_delta(prev: Counters | None, cur: Counters, *, device_id: str, site: str,
                source: str) -> ShareCountsObserved | None:
    """Shares since the previous read; a restart (counters or uptime going backwards) counts
    from zero and is flagged; never negative; None on the first read (baseline)."""
    if prev is None:
        return None
    reset = (cur.elapsed_s < prev.elapsed_s or cur.accepted < prev.accepted
             or cur.rejected < prev.rejected or cur.stale < prev.stale)
    base = Counters(0, 0, 0, 0.0, 0.0, 0, prev.ts, prev.worker, prev.pool) if reset else prev
    interval = max(0.0, (cur.ts - prev.ts).total_seconds())
    return ShareCountsObserved(
        site=site, device_id=device_id, ts=cur.ts, source=source,
        worker=cur.worker or device_id, pool=cur.pool,
        accepted=max(0, cur.accepted - base.accepted),
        rejected=max(0, cur.rejected - base.rejected), stale=max(0, cur.stale - base.stale),
        difficulty_accepted=max(0.0, cur.diff_accepted - base.diff_accepted),
        difficulty_rejected=max(0.0, cur.diff_rejected - base.diff_rejected),
        interval_s=interval, counter_reset=reset)
