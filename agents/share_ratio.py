"""Share ratios over tumbling event-time windows: pure state and step (STYLE.md 1).

``step(state, event)`` folds one ``ShareCountsObserved`` into the subject's open windows
and returns the ratio revisions it causes: a provisional revision of the event's window, and
a final revision of every window the event's time closed (end + grace <= watermark).
Duplicates (same ``event_id``) and events later than the grace are ignored.  Output ids are
derived from the input event id, so reprocessing an event after a crash produces the same
metric ids and the history store collapses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from schemas.events import ShareCountsObserved
from schemas.metrics import Scope, ShareRatioComputed

SOURCE = "agent:share_ratio"
SEEN_IDS = 512  # duplicates are re-deliveries, close in the log: a short memory is enough
_NS = uuid5(NAMESPACE_URL, "hashplane:share_ratio")


@dataclass(frozen=True, slots=True)
class Counts:
    """Shares folded into one window."""

    accepted: int = 0
    rejected: int = 0
    stale: int = 0
    difficulty_accepted: float = 0.0
    difficulty_rejected: float = 0.0
    events: int = 0

    def add(self, e: ShareCountsObserved) -> Counts:
        return Counts(
            self.accepted + e.accepted, self.rejected + e.rejected, self.stale + e.stale,
            self.difficulty_accepted + e.difficulty_accepted,
            self.difficulty_rejected + e.difficulty_rejected, self.events + 1)

    @property
    def total(self) -> int:
        return self.accepted + self.rejected + self.stale


@dataclass(frozen=True, slots=True)
class WindowState:
    """Open windows of one (scope, subject, window length), its watermark and recent ids."""

    windows: dict[int, Counts] = field(default_factory=dict)  # window start, epoch s
    watermark: float = float("-inf")  # highest event time seen, epoch s
    seen: tuple[str, ...] = ()
    late: int = 0

    def to_primitive(self) -> list[Any]:
        """Plain JSON-able form for a Faust table (STYLE.md 4)."""
        return [
            [[k, [c.accepted, c.rejected, c.stale, c.difficulty_accepted,
                  c.difficulty_rejected, c.events]] for k, c in sorted(self.windows.items())],
            None if self.watermark == float("-inf") else self.watermark,
            list(self.seen),
            self.late,
        ]

    @classmethod
    def from_primitive(cls, raw: Any) -> WindowState:
        """Inverse of ``to_primitive``; None gives an empty state."""
        if not raw:
            return cls()
        windows, watermark, seen, late = raw
        return cls(
            windows={int(k): Counts(int(v[0]), int(v[1]), int(v[2]), float(v[3]), float(v[4]),
                                    int(v[5])) for k, v in windows},
            watermark=float("-inf") if watermark is None else float(watermark),
            seen=tuple(seen), late=int(late))


def ratio(
    c: Counts, *, site: str, scope: Scope, subject: str, window_s: int, start: int,
    final: bool, ts: datetime, event_id: UUID,
) -> ShareRatioComputed:
    """Ratios of one window's counts; an empty window is all zeros, never a division error."""
    total = c.total
    pct = (lambda n: 100.0 * n / total) if total else (lambda n: 0.0)
    begin = datetime.fromtimestamp(start, UTC)
    return ShareRatioComputed(
        event_id=event_id, site=site, device_id=subject, ts=ts, source=SOURCE,
        scope=scope, subject=subject, window_s=window_s, window_start=begin,
        window_end=begin + timedelta(seconds=window_s), final=final,
        accepted=c.accepted, rejected=c.rejected, stale=c.stale,
        accepted_pct=pct(c.accepted), rejected_pct=pct(c.rejected), stale_pct=pct(c.stale),
        shares_per_s=total / window_s,
        difficulty_accepted=c.difficulty_accepted, difficulty_rejected=c.difficulty_rejected,
        events=c.events)


def step(
    state: WindowState, event: ShareCountsObserved, *, window_s: int = 60, grace_s: int = 30,
    scope: Scope = "worker", subject: str | None = None,
) -> tuple[WindowState, list[ShareRatioComputed]]:
    """Fold one share-count event; return the new state and the ratio revisions it causes."""
    eid = str(event.event_id)
    if eid in state.seen:
        return state, []
    subject = subject if subject is not None else event.worker
    t = event.ts.timestamp()
    start = int(t // window_s) * window_s
    seen = (*state.seen, eid)[-SEEN_IDS:]
    if start + window_s + grace_s <= state.watermark:
        return replace(state, seen=seen, late=state.late + 1), []

    windows = dict(state.windows)
    windows[start] = windows.get(start, Counts()).add(event)
    watermark = max(state.watermark, t)
    out: list[ShareRatioComputed] = []
    emit = partial(ratio, site=event.site, scope=scope, subject=subject, window_s=window_s,
                   ts=event.ts)
    key = f"{scope}/{subject}/{window_s}"
    for w in sorted(k for k in windows if k + window_s + grace_s <= watermark):
        out.append(emit(windows.pop(w), start=w, final=True,
                        event_id=uuid5(_NS, f"{key}/{w}/final")))
    out.append(emit(windows[start], start=start, final=False,
                    event_id=uuid5(_NS, f"{key}/{start}/{eid}")))
    return WindowState(windows=windows, watermark=watermark, seen=seen, late=state.late), out


def fold(events: Iterable[ShareCountsObserved], **kw: Any) -> tuple[
        dict[str, WindowState], list[ShareRatioComputed]]:
    """Run ``step`` over events per worker (what replay and tests use)."""
    states: dict[str, WindowState] = {}
    out: list[ShareRatioComputed] = []
    for e in events:
        states[e.worker], produced = step(states.get(e.worker, WindowState()), e, **kw)
        out += produced
    return states, out
