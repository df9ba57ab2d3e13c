"""Share ratios over tumbling event-time windows: pure state and step (STYLE.md 1).

``step(state, event)`` folds one ``ShareCountsObserved`` into a subject's open windows of
every length (1 min, 15 min, 1 h by default) and returns the ratio revisions it causes: a
final revision of every window the event's time closed (end + grace <= watermark), and a
provisional revision of the event's window once ``update_s`` of event time has passed since
the window opened or since its last revision; a twelfth of the window if that is longer (a
1-hour window is revised every 5 minutes, not every few seconds; ``update_s`` 0: on every
event).  Duplicates and events later than the
grace are ignored.  Output ids are derived from the input event id, so reprocessing an
event after a crash produces the same metric ids and the history store collapses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from uuid import NAMESPACE_URL, UUID, uuid5

from agents.spec import AgentSpec
from schemas.events import ShareCountsObserved
from schemas.metrics import Scope, ShareRatioComputed
from schemas.settings import Settings

SOURCE = "agent:share_ratio"
SEEN_IDS = 16  # producer re-sends arrive close together: a short memory is enough
_NS = uuid5(NAMESPACE_URL, "hashplane:share_ratio")


class Counts(NamedTuple):
    """Shares folded into one window (a tuple: a window's counts are replaced on every
    event, and a tuple is the cheapest immutable record Python builds)."""

    accepted: int = 0
    rejected: int = 0
    stale: int = 0
    difficulty_accepted: float = 0.0
    difficulty_rejected: float = 0.0
    events: int = 0

    def add(self, e: ShareCountsObserved) -> Counts:
        return Counts(
            self[0] + e.accepted, self[1] + e.rejected, self[2] + e.stale,
            self[3] + e.difficulty_accepted, self[4] + e.difficulty_rejected, self[5] + 1)

    @property
    def total(self) -> int:
        return self.accepted + self.rejected + self.stale


_EMPTY = Counts()


@dataclass(frozen=True, slots=True)
class WindowState:
    """Open windows of one (scope, subject, window length) and its watermark."""

    windows: dict[int, Counts] = field(default_factory=dict)  # window start, epoch s
    watermark: float = float("-inf")  # highest event time seen, epoch s
    late: int = 0
    revised: dict[int, float] = field(default_factory=dict)  # window -> last provisional, s

    def to_primitive(self) -> list[Any]:
        return [
            [[k, list(c)] for k, c in sorted(self.windows.items())],
            None if self.watermark == float("-inf") else self.watermark,
            self.late,
            sorted(self.revised.items()),
        ]

    @classmethod
    def from_primitive(cls, raw: Any) -> WindowState:
        windows, watermark, late, revised = raw
        return cls(
            windows={int(k): Counts(int(v[0]), int(v[1]), int(v[2]), float(v[3]), float(v[4]),
                                    int(v[5])) for k, v in windows},
            watermark=float("-inf") if watermark is None else float(watermark),
            late=int(late), revised={int(k): float(v) for k, v in revised})


@dataclass(frozen=True, slots=True)
class SubjectState:
    """Every window length of one subject, and what it has folded (dedup).

    Two kinds of duplicates: a producer re-sending an event (same ``event_id``, another
    offset: ``seen`` remembers the last ids) and Kafka redelivering records after a crash
    (same offsets: ``offsets`` keeps the last folded offset per partition, exact at any
    distance within one log; a log begun again is told by event time: ``step``).
    """

    windows: dict[int, WindowState] = field(default_factory=dict)  # window length -> state
    seen: tuple[str, ...] = ()
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> highest offset

    def to_primitive(self) -> list[Any]:
        """Plain JSON-able form for a Faust table (STYLE.md 4)."""
        return [[[w, s.to_primitive()] for w, s in sorted(self.windows.items())],
                list(self.seen), sorted(self.offsets.items())]

    @classmethod
    def from_primitive(cls, raw: Any) -> SubjectState:
        """Inverse of ``to_primitive``; None gives an empty state."""
        if not raw:
            return cls()
        windows, seen, offsets = raw
        return cls({int(w): WindowState.from_primitive(s) for w, s in windows}, tuple(seen),
                   {int(p): int(o) for p, o in offsets})

    @property
    def late(self) -> int:
        return sum(s.late for s in self.windows.values())

    @property
    def watermark(self) -> float:
        """The newest event time folded (epoch s; -inf: none)."""
        return max((s.watermark for s in self.windows.values()), default=float("-inf"))


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


def fold_window(
    state: WindowState, event: ShareCountsObserved, *, window_s: int, grace_s: int,
    update_s: int, scope: Scope, subject: str,
) -> tuple[WindowState, list[ShareRatioComputed]]:
    """Fold one (new) event into one window length: finals of closed windows, and a
    provisional revision of the event's window unless one was sent < ``update_s`` ago."""
    t = event.ts.timestamp()
    start = int(t // window_s) * window_s
    if start + window_s + grace_s <= state.watermark:
        return WindowState(state.windows, state.watermark, state.late + 1, state.revised), []
    windows = dict(state.windows)
    windows[start] = windows.get(start, _EMPTY).add(event)
    watermark = max(state.watermark, t)
    revised = state.revised
    out: list[ShareRatioComputed] = []
    key = f"{scope}/{subject}/{window_s}"
    span = window_s + grace_s
    if len(windows) > 1 or start + span <= watermark:  # else one window, still open
        closed = sorted(k for k in windows if k + span <= watermark)
        if closed:
            revised = {k: v for k, v in revised.items() if k not in closed}
        for w in closed:
            out.append(ratio(windows.pop(w), site=event.site, scope=scope, subject=subject,
                             window_s=window_s, ts=event.ts, start=w, final=True,
                             event_id=uuid5(_NS, f"{key}/{w}/final")))
    every = max(update_s, window_s // 12) if update_s else 0
    if t - revised.get(start, start) >= every:
        revised = {**revised, start: t}
        out.append(ratio(windows[start], site=event.site, scope=scope, subject=subject,
                         window_s=window_s, ts=event.ts, start=start, final=False,
                         event_id=uuid5(_NS, f"{key}/{start}/{event.event_id}")))
    return WindowState(windows, watermark, state.late, revised), out


def step(
    state: SubjectState, event: ShareCountsObserved, *, windows: Sequence[int] = (60,),
    grace_s: int = 30, update_s: int = 0, scope: Scope = "worker", subject: str | None = None,
    position: tuple[int, int] | None = None,
) -> tuple[SubjectState, list[ShareRatioComputed]]:
    """Fold one share-count event into every window length of a subject; return the new
    state and the ratio revisions it causes.  A duplicate (same event id, or a Kafka
    ``position`` (partition, offset) at or before one already folded) changes nothing.

    Except where the log began again: an event at or before a folded position but newer
    than anything the subject has folded cannot have been folded (a broker that came back
    empty numbers its records from 0 again); it is folded, and the partition's position
    starts again from it."""
    eid = str(event.event_id)
    if eid in state.seen:
        return state, []
    offsets = state.offsets
    if position is not None:
        partition, offset = position
        if offset <= offsets.get(partition, -1) and event.ts.timestamp() <= state.watermark:
            return state, []
        offsets = {**offsets, partition: offset}
    subject = subject if subject is not None else event.worker
    out: list[ShareRatioComputed] = []
    new: dict[int, WindowState] = {}
    for w in windows:
        new[w], produced = fold_window(state.windows.get(w, WindowState()), event, window_s=w,
                                       grace_s=grace_s, update_s=update_s, scope=scope,
                                       subject=subject)
        out += produced
    return SubjectState(new, (*state.seen[-(SEEN_IDS - 1):], eid), offsets), out


#: scope -> subject of a share event (worker and device are the partition's own keys)
SUBJECTS: dict[Scope, Callable[[ShareCountsObserved], str]] = {
    "worker": lambda e: e.worker,
    "device": lambda e: e.device_id,
    "pool": lambda e: e.pool or "unknown",
    "site": lambda e: e.site,
}


def fold(events: Iterable[ShareCountsObserved], scopes: Sequence[Scope] = ("worker",),
         **kw: Any) -> tuple[dict[str, SubjectState], list[ShareRatioComputed]]:
    """Run ``step`` over events for each scope (what replay and tests use); state keys are
    ``scope/subject``."""
    states: dict[str, SubjectState] = {}
    out: list[ShareRatioComputed] = []
    for e in events:
        for scope in scopes:
            subject = SUBJECTS[scope](e)
            key = f"{scope}/{subject}"
            states[key], produced = step(states.get(key, SubjectState()), e, scope=scope,
                                         subject=subject, **kw)
            out += produced
    return states, out


@dataclass(frozen=True, slots=True)
class RatioParams:
    """Window configuration (from Settings)."""

    windows: tuple[int, ...] = (60,)
    grace_s: int = 30
    update_s: int = 0


def params(s: Settings) -> RatioParams:
    """Window configuration from Settings."""
    return RatioParams(tuple(s.share_windows_s), s.share_grace_s, s.share_update_s)


#: A device's entry: its worker's and its own windows, by ``scope/subject``.
DeviceShares = dict[str, SubjectState]
_NONE = SubjectState()  # a subject not seen yet


def load_device(raw: Any) -> DeviceShares:
    """A device's entry from its table value (``save_device``'s form; None: empty)."""
    return {k: SubjectState.from_primitive(v) for k, v in (raw or {}).items()}


def save_device(state: DeviceShares) -> dict[str, Any]:
    """A device's entry as the table keeps it: ``scope/subject`` -> ``to_primitive``."""
    return {k: s.to_primitive() for k, s in state.items()}


def device_step(state: DeviceShares, event: ShareCountsObserved, p: RatioParams,
                position: tuple[int, int] | None = None,
                ) -> tuple[DeviceShares, list[ShareRatioComputed]]:
    """Fold one event into its device's entry (worker and device scope).

    A worker's state lives on its device's partition: a worker name shared by several
    devices is aggregated at pool and site scope, not here.  The entry is returned
    unchanged (the same object) when nothing in it changed."""
    changed: DeviceShares = {}
    out: list[ShareRatioComputed] = []
    for scope in ("worker", "device"):
        subject = SUBJECTS[scope](event)
        key = f"{scope}/{subject}"
        before = state.get(key) or _NONE
        after, metrics = step(before, event, scope=scope, subject=subject, position=position,
                              windows=p.windows, grace_s=p.grace_s, update_s=p.update_s)
        if after is not before:
            changed[key] = after
        out += metrics
    return ({**state, **changed} if changed else state), out


#: Worker and device ratios on the shares topic's own partitions (one table entry per
#: device holds both scopes' windows).
SPEC = AgentSpec[dict[str, Any], RatioParams](
    name="share_ratio", source=SOURCE, inputs=(ShareCountsObserved,), params=params,
    state=dict, step=device_step, scope="partition", partition_table="share_ratio_devices",
    load=load_device, save=save_device)
