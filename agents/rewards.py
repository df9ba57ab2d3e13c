"""Seed-000 rewards per worker and window: the formula, and a pure state and step.

The formula, as seed 000's code computes it (inputs are percentages of the worker's shares
in the window)::

    reward = max(0, 100 - rejected% - max(0, T_gpu - T_max)
                    - (100 - accepted%) * (1 - accepted_worker / accepted_cluster))

with ``(1 - ...)`` taken as 1 when the cluster accepted nothing.  Seed 000's own example:
rejected 10 %, accepted 95 %, 30 of the cluster's 100 accepted shares, 92 °C ->
``100 - 10 - 2 - 5 * 0.7 = 84.5``.

``step`` folds share counts and GPU telemetry of one site; when a window closes (its end +
grace passed in event time) it emits one ``RewardComputed`` per worker that had shares in
it.  T_gpu is the hottest reading of the worker's GPU inside the window (the card must stay
under T_max all window, not on average); with no reading in the window the last earlier one
is used, and a worker with no GPU telemetry at all (an ASIC) gets no temperature penalty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import NAMESPACE_URL, uuid5

from schemas.events import GpuTelemetryObserved, ShareCountsObserved
from schemas.metrics import RewardComputed

SOURCE = "agent:rewards"
_NS = uuid5(NAMESPACE_URL, "hashplane:rewards")
SEEN_IDS = 4096


def reward(rejected_pct: float, accepted_pct: float, accepted_worker: int,
           accepted_cluster: int, temp_c: float | None, temp_max_c: float = 90.0) -> float:
    """Seed 000's reward (0-100); see the module docstring."""
    penalty_temp = max(0.0, temp_c - temp_max_c) if temp_c is not None else 0.0
    penalty_accepted = 100.0 - accepted_pct if accepted_pct < 100.0 else 0.0
    contribution = 1.0 - accepted_worker / accepted_cluster if accepted_cluster > 0 else 1.0
    return max(0.0, 100.0 - rejected_pct - penalty_temp - penalty_accepted * contribution)


@dataclass(slots=True)
class RewardState:
    """Open windows of one site: per worker [accepted, rejected, stale] and GPU peak temps.

    Mutated in place by ``step`` (a site has thousands of workers; copying per event would
    cost more than the fold)."""

    counts: dict[tuple[int, int], dict[str, list[int]]] = field(default_factory=dict)
    peaks: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)
    last_temp: dict[str, float] = field(default_factory=dict)  # device -> latest, °C
    device_of: dict[str, str] = field(default_factory=dict)  # worker -> device
    watermark: float = float("-inf")
    seen: dict[str, None] = field(default_factory=dict)  # insertion-ordered, bounded
    late: int = 0


def step(
    state: RewardState, event: ShareCountsObserved | GpuTelemetryObserved, *,
    windows: Sequence[int] = (60,), grace_s: int = 30, temp_max_c: float = 90.0,
) -> tuple[RewardState, list[RewardComputed]]:
    """Fold one event; return the rewards of the windows it closed."""
    eid = str(event.event_id)
    if eid in state.seen:
        return state, []
    state.seen[eid] = None
    if len(state.seen) > SEEN_IDS:
        del state.seen[next(iter(state.seen))]
    t = event.ts.timestamp()
    if isinstance(event, GpuTelemetryObserved):
        state.last_temp[event.device_id] = event.temp_c
        for w in windows:
            start = int(t // w) * w
            if (w, start) in state.counts or start + w + grace_s > state.watermark:
                peaks = state.peaks.setdefault((w, start), {})
                peaks[event.device_id] = max(peaks.get(event.device_id, event.temp_c),
                                             event.temp_c)
        return state, []

    state.device_of[event.worker] = event.device_id
    for w in windows:
        start = int(t // w) * w
        if start + w + grace_s <= state.watermark:
            state.late += 1
            continue
        c = state.counts.setdefault((w, start), {}).setdefault(event.worker, [0, 0, 0])
        c[0] += event.accepted
        c[1] += event.rejected
        c[2] += event.stale
    state.watermark = max(state.watermark, t)
    return state, _close(state, event.site, event.ts, grace_s, temp_max_c)


def _close(state: RewardState, site: str, ts: datetime, grace_s: int,
           temp_max_c: float) -> list[RewardComputed]:
    out: list[RewardComputed] = []
    for (w, start) in sorted(k for k in state.counts if k[1] + k[0] + grace_s <= state.watermark):
        workers = state.counts.pop((w, start))
        peaks = state.peaks.pop((w, start), {})
        cluster = sum(c[0] for c in workers.values())
        begin = datetime.fromtimestamp(start, UTC)
        for worker, (acc, rej, stale) in sorted(workers.items()):
            total = acc + rej + stale
            acc_pct = 100.0 * acc / total if total else 0.0
            rej_pct = 100.0 * rej / total if total else 0.0
            device = state.device_of.get(worker, worker)
            temp = peaks.get(device, state.last_temp.get(device))
            out.append(RewardComputed(
                event_id=uuid5(_NS, f"{site}/{worker}/{w}/{start}"), site=site,
                device_id=worker, ts=ts, source=SOURCE, worker=worker, window_s=w,
                window_start=begin, accepted_pct=acc_pct, rejected_pct=rej_pct,
                reward=reward(rej_pct, acc_pct, acc, cluster, temp, temp_max_c),
                temp_c=temp, temp_max_c=temp_max_c, worker_accepted=acc,
                cluster_accepted=cluster))
    for key in [k for k in state.peaks if k[1] + k[0] + grace_s <= state.watermark]:
        del state.peaks[key]  # a window with temperatures but no shares
    return out


def fold(events: Iterable[ShareCountsObserved | GpuTelemetryObserved],
         **kw: object) -> tuple[RewardState, list[RewardComputed]]:
    """Run ``step`` over one site's events (replay and tests)."""
    state, out = RewardState(), []
    for e in events:
        state, produced = step(state, e, **kw)  # type: ignore[arg-type]
        out += produced
    return state, out
