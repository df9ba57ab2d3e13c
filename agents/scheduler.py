"""ASIC scheduler: which ASICs sleep or wake so the site runs at its target load.

Pure state and step (STYLE.md 1-2).  The fleet is folded from ``asic.telemetry`` (state,
draw) and ``commands.acks`` (an applied ``SleepAsic`` is one cycle and sets last-off; an
applied ``WakeAsic`` sets last-on), so cycles and last-off are event-sourced: replaying the
acks rebuilds them.  Each ``EnergyHeadroomComputed`` is a decision point:

* ASIC budget = min(target load, available supply) - non-ASIC load (GPUs).
* planned = draw of the ASICs running or being woken, minus those being put to sleep.  A
  woken ASIC whose firmware reports no hashrate while it restarts its hashboards is still
  being woken for ``boot_s``: a dip meanwhile sleeps it with the rest.
* planned > budget: sleep running ASICs, fewest cycles first, then oldest last-off, until
  planned <= budget.  ASICs inside their minimum on-dwell are spared unless the plan is
  above available supply (safety beats wear).
* budget - planned > hysteresis: wake sleeping ASICs in the same order, each only when
  planned + its draw + hysteresis stays within budget, past its minimum off-dwell, and at
  most ``wake_batch`` per ``wake_interval_s`` (staggered, so inrush stays small).

* price: with an efficiency limit (``max_j_per_th``, the energy agent's price-aware
  curtailment), running ASICs measured less efficient than the limit are put to sleep,
  least efficient first, past their minimum on-dwell (money does not override wear), and
  no ASIC above the limit is woken.  The budget rules above apply to the rest, so the
  frequency bands and the operator's cap win whenever they ask for less.

The planned load therefore never exceeds available supply by the scheduler's own doing.
An ASIC with a command in flight is not commanded again until its ack (or expiry); the
command in flight is durable with the cycles, so a restarted scheduler does not re-decide
for an ASIC whose predecessor's command has not been acked yet.
Commands carry a deterministic ``command_id`` (from the headroom event and device), so a
redelivered headroom event yields the same command, which the actuator applies once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from agents.spec import AgentSpec, Durable, members
from schemas.commands import CommandAcknowledged, SleepAsic, WakeAsic
from schemas.events import AsicTelemetryObserved
from schemas.metrics import EnergyHeadroomComputed
from schemas.settings import Settings

SOURCE = "agent:scheduler"
_NS = uuid5(NAMESPACE_URL, "hashplane:scheduler")
ACK_MEMORY = 50_000
ON_STATES = frozenset({"running", "waking"})
CONTROLLABLE = frozenset({"running", "waking", "sleeping"})

SchedulerInput = EnergyHeadroomComputed | AsicTelemetryObserved | CommandAcknowledged

#: A cycle (seed 000's wear count) is one applied sleep; the last one is the ASIC's last-off.
#: The history queries count cycles by the same rule (streams/queries.py).
CYCLE_KIND, CYCLE_STATUS = SleepAsic.__name__, "applied"
WAKE_KIND = WakeAsic.__name__


@dataclass(frozen=True, slots=True)
class SchedulerParams:
    """Configuration of the scheduler (from Settings)."""

    min_on_s: float = 120.0
    min_off_s: float = 60.0
    hysteresis_kw: float = 5.0
    wake_batch: int = 20
    wake_interval_s: float = 5.0
    default_kw: float = 3.25
    ttl_s: float = 10.0
    boot_s: float = 300.0


@dataclass(slots=True)
class Asic:
    """One ASIC as the scheduler knows it."""

    state: str = "running"
    draw_kw: float = 0.0  # draw when hashing (last seen running), kW
    cycles: int = 0
    last_off: float | None = None
    last_on: float | None = None
    seen: float = float("-inf")  # last telemetry, event time
    j_per_th: float | None = None  # efficiency: the best of the last few readings, J/TH
    recent_j: list[float] = field(default_factory=list)  # those readings
    pending: tuple[str, str, float] | None = None  # (command_id, kind, expires)

    @property
    def on(self) -> bool:
        if self.pending is not None:
            return self.pending[1] == "WakeAsic"
        return self.state in ON_STATES

    def durable(self) -> list[Any] | None:
        """What must survive a restart: the ack-derived history, the command in flight and
        the efficiency last measured (an ASIC asleep on price is not woken for want of a
        reading; None when there is nothing to keep)."""
        if not self.cycles and self.last_off is None and self.last_on is None \
                and self.pending is None:
            return None
        return [self.cycles, self.last_off, self.last_on,
                None if self.pending is None else list(self.pending), self.j_per_th]


@dataclass(slots=True)
class SchedulerState:
    """The fleet of one site.  Mutated in place; ``dirty`` lists devices whose durable part
    changed since the agent last persisted it."""

    asics: dict[str, Asic] = field(default_factory=dict)
    acked: dict[str, None] = field(default_factory=dict)  # command ids seen, bounded
    wave_start: float = float("-inf")  # current stagger step
    wave_woken: int = 0
    dirty: set[str] = field(default_factory=set)


def order(device: str, a: Asic) -> tuple[int, float, str]:
    """Fewest cycles first, then oldest last-off (never off counts as oldest), then device id
    (so the choice does not depend on the order telemetry arrived in)."""
    return (a.cycles, a.last_off if a.last_off is not None else float("-inf"), device)


def step(state: SchedulerState, event: SchedulerInput, p: SchedulerParams = SchedulerParams(),
         ) -> tuple[SchedulerState, list[SleepAsic | WakeAsic]]:
    """Fold telemetry and acks; decide on a headroom event."""
    if isinstance(event, AsicTelemetryObserved):
        a = state.asics.setdefault(event.device_id, Asic(draw_kw=p.default_kw))
        t = event.ts.timestamp()
        if t >= a.seen:
            a.seen, a.state = t, booting(a, event.state, t, p)
            if event.state == "running" and event.power_w > 0:
                a.draw_kw = event.power_w / 1000.0
                if event.hashrate_ths > 0:
                    measured(a, event.power_w / event.hashrate_ths)
        return state, []
    if isinstance(event, CommandAcknowledged):
        _ack(state, event)
        return state, []
    return state, decide(state, event, p)


def booting(a: Asic, reported: str, t: float, p: SchedulerParams) -> str:
    """The state to keep of a reading: a miner we woke that reports no hashrate yet (the
    firmware's "error": Antminer stock, Whatsminer and VNish while they restart their
    hashboards) is still waking for ``boot_s`` after its wake's ack.  It is about to draw its
    full power, so a grid dip in the meantime puts it back to sleep with the rest; an ASIC
    that was not woken, or still hashes nothing after ``boot_s``, stays in error: neither
    load nor a candidate."""
    if reported == "error" and a.state == "waking" and a.last_on is not None \
            and t - a.last_on < p.boot_s:
        return "waking"
    return reported


#: A miner's efficiency is the best of its last few readings: one that has just woken
#: draws full power while its hashrate ramps up (hundreds of J/TH for a poll or two), which
#: is not what it costs to run; a miner that really got worse shows it in every reading.
EFFICIENCY_READINGS = 5


def measured(a: Asic, j_per_th: float) -> None:
    """Fold one running reading's J/TH into the ASIC's efficiency."""
    a.recent_j = [*a.recent_j[-(EFFICIENCY_READINGS - 1):], j_per_th]
    a.j_per_th = min(a.recent_j)


def _ack(state: SchedulerState, ack: CommandAcknowledged) -> None:
    if ack.command_kind not in (CYCLE_KIND, WAKE_KIND):
        return
    cid = str(ack.command_id)
    if cid in state.acked:
        return
    state.acked[cid] = None
    if len(state.acked) > ACK_MEMORY:
        del state.acked[next(iter(state.acked))]
    a = state.asics.get(ack.device_id)
    if a is None:
        a = state.asics[ack.device_id] = Asic()
    if a.pending is not None and a.pending[0] == cid:
        a.pending = None
        state.dirty.add(ack.device_id)
    if ack.status != CYCLE_STATUS:
        return
    t = ack.ts.timestamp()
    a.seen = max(a.seen, t)  # a telemetry read older than the ack no longer says the state
    if ack.command_kind == CYCLE_KIND:
        a.cycles += 1
        a.last_off = t if a.last_off is None else max(a.last_off, t)
        a.state = "sleeping"
    else:
        a.last_on = t if a.last_on is None else max(a.last_on, t)
        a.state = "waking" if a.state != "running" else a.state
    state.dirty.add(ack.device_id)


def decide(state: SchedulerState, e: EnergyHeadroomComputed,
           p: SchedulerParams) -> list[SleepAsic | WakeAsic]:
    """Sleep or wake ASICs so the planned load meets the budget of ``e``."""
    now = e.ts.timestamp()
    for d, a in state.asics.items():
        if a.pending is not None and a.pending[2] <= now:
            a.pending = None  # expired in flight: the actuator refused it, act again
            state.dirty.add(d)
    other = max(0.0, e.load_kw - e.asic_load_kw)
    supply_budget = e.available_kw - other
    budget = min(e.target_load_kw, e.available_kw) - other
    live = {d: a for d, a in state.asics.items() if a.state in CONTROLLABLE}
    planned = math.fsum(a.draw_kw for a in live.values() if a.on)  # order-independent
    out: list[SleepAsic | WakeAsic] = []
    why = f"band {e.band}: budget {budget:.1f} kW"
    limit = e.max_j_per_th

    def dwelt(a: Asic) -> bool:
        return a.last_on is None or now - a.last_on >= p.min_on_s

    def losing(a: Asic) -> bool:
        return limit is not None and a.j_per_th is not None and a.j_per_th > limit

    if limit is not None:  # price: the units that lose money at this price sleep
        costly = sorted(((d, a) for d, a in live.items()
                         if a.on and a.pending is None and losing(a) and dwelt(a)),
                        key=lambda da: (-(da[1].j_per_th or 0.0), da[0]))
        price = "?" if e.price_per_mwh is None else f"{e.price_per_mwh:.2f}"
        for d, a in costly:
            out.append(_command(SleepAsic, e, d, p,
                                f"price {price}/MWh: {a.j_per_th:.1f} J/TH above the "
                                f"limit {limit:.1f} J/TH"))
            planned -= a.draw_kw
            a.pending = (str(out[-1].command_id), "SleepAsic", now + p.ttl_s)
            state.dirty.add(d)

    if planned > budget:
        running = sorted(((d, a) for d, a in live.items() if a.on and a.pending is None),
                         key=lambda da: order(*da))
        for spare_dwell in (True, False):
            for d, a in running:
                if planned <= budget or (not spare_dwell and planned <= supply_budget):
                    break
                if a.pending is not None or (spare_dwell and not dwelt(a)):
                    continue
                out.append(_command(SleepAsic, e, d, p, f"{why}, planned {planned:.1f} kW"))
                planned -= a.draw_kw
                a.pending = (str(out[-1].command_id), "SleepAsic", now + p.ttl_s)
                state.dirty.add(d)
        return out

    if budget - planned <= p.hysteresis_kw:
        return out
    if now - state.wave_start >= p.wake_interval_s:
        state.wave_start, state.wave_woken = now, 0
    sleeping = sorted(((d, a) for d, a in live.items() if not a.on and a.pending is None
                       and a.state == "sleeping" and not losing(a)
                       and (a.last_off is None or now - a.last_off >= p.min_off_s)),
                      key=lambda da: order(*da))
    for d, a in sleeping:
        if state.wave_woken >= p.wake_batch:
            break
        if planned + a.draw_kw + p.hysteresis_kw > budget:
            continue
        out.append(_command(WakeAsic, e, d, p, f"{why}, planned {planned:.1f} kW"))
        planned += a.draw_kw
        a.pending = (str(out[-1].command_id), "WakeAsic", now + p.ttl_s)
        state.dirty.add(d)
        state.wave_woken += 1
    return out


def _command(kind: type[SleepAsic] | type[WakeAsic], e: EnergyHeadroomComputed, device: str,
             p: SchedulerParams, reason: str) -> SleepAsic | WakeAsic:
    cid: UUID = uuid5(_NS, f"{e.event_id}/{device}/{kind.__name__}")
    return kind(event_id=cid, command_id=cid, site=e.site, device_id=device, ts=e.ts,
                source=SOURCE, issued_at=e.ts, expires_at=e.ts + timedelta(seconds=p.ttl_s),
                reason=reason[:1024], issued_by=SOURCE)


def restore(state: SchedulerState, device: str, durable: list[Any]) -> None:
    """Load one device's durable part (from the agent's table) into the state."""
    cycles, last_off, last_on = durable[:3]
    pending = durable[3] if len(durable) > 3 else None  # entries written before it was kept
    a = state.asics.setdefault(device, Asic())
    a.cycles = int(cycles or 0)
    a.last_off = None if last_off is None else float(last_off)
    a.last_on = None if last_on is None else float(last_on)
    if pending:
        a.pending = (str(pending[0]), str(pending[1]), float(pending[2]))
    if len(durable) > 4 and durable[4] is not None and a.j_per_th is None:
        measured(a, float(durable[4]))  # an ASIC asleep since: no newer reading says


def fold(events: Iterable[SchedulerInput], p: SchedulerParams = SchedulerParams()) -> tuple[
        SchedulerState, list[SleepAsic | WakeAsic]]:
    """Run ``step`` over one site's events (replay and tests)."""
    state, out = SchedulerState(), []
    for e in events:
        state, produced = step(state, e, p)
        out += produced
    return state, out


def params(s: Settings) -> SchedulerParams:
    """Scheduler configuration from Settings."""
    return SchedulerParams(
        min_on_s=s.sched_min_on_s, min_off_s=s.sched_min_off_s,
        hysteresis_kw=s.sched_hysteresis_kw, wake_batch=s.sched_wake_batch,
        wake_interval_s=s.sched_wake_interval_s, default_kw=s.asic_default_w / 1000.0,
        ttl_s=s.command_ttl_s, boot_s=s.sched_boot_s)


def _save(state: SchedulerState, device: str) -> list[Any] | None:
    a = state.asics.get(device)
    return None if a is None else a.durable()


#: The commands in flight are durable before they go out (``commit_first``): a worker
#: killed right after a decision restarts knowing what it had sent, and does not send it
#: again.
SPEC = AgentSpec[SchedulerState, SchedulerParams](
    name="scheduler", source=SOURCE, inputs=members(SchedulerInput), params=params,
    state=SchedulerState, step=step, commit_first=True, lane="control",
    durable=Durable(table="scheduler_asics", keys=lambda s: s.asics, save=_save, load=restore,
                    ledger=(CommandAcknowledged,)))
