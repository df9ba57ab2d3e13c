"""Compute gate and compute scores: pure state and step.

Gate: when a site's headroom falls below ``pause_kw`` the compute connector is told to stop
taking jobs (``PauseComputeIntake``; running jobs finish); once headroom has stayed at or
above ``resume_kw`` for ``hold_s`` of event time it is told to resume.  The two thresholds
and the hold make a gap, so headroom hovering at one value does not toggle intake.

Scores: the seed-001 score of every GPU machine (its cards from ``gpu.telemetry``, doubled
while it holds a compute job from ``compute.jobs``: the job event's ``rig_id``, which the
coordinator connector takes from the inventory), published when it changes, and ranked by
the GPU class a coordinator verified from the rig's proof of GPU once there is one (every
card of the rig taken as that class: a proof runs on its first GPU); and the
seed-004 score of each model endpoint probe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from agents.spec import AgentSpec, Durable, members
from schemas.commands import PauseComputeIntake, ResumeComputeIntake
from schemas.compute_score import base_score, endpoint_score, rig_score
from schemas.events import ComputeJobChanged, EndpointHealthObserved, GpuTelemetryObserved
from schemas.metrics import ComputeScoreComputed, EnergyHeadroomComputed
from schemas.settings import Settings

SOURCE = "agent:compute"
_NS = uuid5(NAMESPACE_URL, "hashplane:compute")
BUSY = frozenset({"assigned", "started", "completed"})

ComputeInput = EnergyHeadroomComputed | GpuTelemetryObserved | ComputeJobChanged
ComputeOutput = PauseComputeIntake | ResumeComputeIntake | ComputeScoreComputed


@dataclass(frozen=True, slots=True)
class GateParams:
    """Configuration of the gate (from Settings)."""

    miner_id: str = "hashplane-miner-1"
    pause_kw: float = 0.0
    resume_kw: float = 20.0
    hold_s: float = 30.0
    ttl_s: float = 10.0


@dataclass(slots=True)
class ComputeState:
    """One site's gate and GPU machines.  Mutated in place by ``step``."""

    paused: bool = False
    ok_since: float | None = None
    cards: dict[str, dict[int, str]] = field(default_factory=dict)  # rig -> index -> card
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)  # rig -> job -> state
    scored: dict[str, float] = field(default_factory=dict)  # rig -> last published score
    #: rig -> the GPU class a coordinator verified from its proof of GPU ("": none listed)
    verified: dict[str, str] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # durable keys changed ("": the gate)


def step(state: ComputeState, event: ComputeInput, p: GateParams = GateParams(),
         ) -> tuple[ComputeState, list[ComputeOutput]]:
    """Fold one event; return gate commands and changed GPU scores."""
    if isinstance(event, EnergyHeadroomComputed):
        return state, list[ComputeOutput](gate(state, event, p))
    if isinstance(event, GpuTelemetryObserved):
        state.cards.setdefault(event.rig_id, {})[event.gpu_index] = event.card
        return state, _rescore(state, event.rig_id, event)
    # the machine the job runs on: the connector names it (its inventory's coordinator.rig);
    # the miner id is a coordinator account, not a machine with cards
    machine = event.rig_id or event.device_id
    if event.verified_gpu is not None and event.rig_id:
        state.verified[machine] = event.verified_gpu
    jobs = state.jobs.setdefault(machine, {})
    if event.state in BUSY:
        jobs[event.job_id] = event.state
    else:
        jobs.pop(event.job_id, None)
    return state, _rescore(state, machine, event) if machine in state.cards else []


def gate(state: ComputeState, e: EnergyHeadroomComputed,
         p: GateParams) -> list[PauseComputeIntake | ResumeComputeIntake]:
    """Pause intake when headroom is short; resume after it held above the resume level."""
    now = e.ts.timestamp()
    if not state.paused:
        if e.headroom_kw < p.pause_kw:
            state.paused, state.ok_since = True, None
            state.dirty.add("")
            return [_gate_cmd(PauseComputeIntake, e, p,
                              f"headroom {e.headroom_kw:.1f} kW < {p.pause_kw:g} kW")]
        return []
    if e.headroom_kw < p.resume_kw:
        state.ok_since = None
        return []
    state.ok_since = now if state.ok_since is None else state.ok_since
    if now - state.ok_since < p.hold_s:
        return []
    state.paused, state.ok_since = False, None
    state.dirty.add("")
    return [_gate_cmd(ResumeComputeIntake, e, p,
                      f"headroom >= {p.resume_kw:g} kW for {p.hold_s:g} s")]


def _gate_cmd(kind: type[PauseComputeIntake] | type[ResumeComputeIntake],
              e: EnergyHeadroomComputed, p: GateParams,
              reason: str) -> PauseComputeIntake | ResumeComputeIntake:
    cid = uuid5(_NS, f"{e.event_id}/{kind.__name__}")
    return kind(event_id=cid, command_id=cid, site=e.site, device_id=p.miner_id, ts=e.ts,
                source=SOURCE, issued_at=e.ts, expires_at=e.ts + timedelta(seconds=p.ttl_s),
                reason=reason, issued_by=SOURCE)


def _rescore(state: ComputeState, rig: str,
             cause: GpuTelemetryObserved | ComputeJobChanged) -> list[ComputeOutput]:
    cards = list(state.cards.get(rig, {}).values())
    allocated = bool(state.jobs.get(rig))
    verified = state.verified.get(rig)
    if verified is not None:  # ranked by what its proof delivered; names only label
        cards = [verified] * len(cards)
    score = rig_score(cards, allocated)
    if state.scored.get(rig) == score:
        return []
    state.scored[rig] = score
    known = [c for c in cards if base_score(c)[0] is not None]
    return [ComputeScoreComputed(
        event_id=uuid5(_NS, f"{cause.event_id}/{rig}"), site=cause.site, device_id=rig,
        ts=cause.ts, source=SOURCE, scheme="gpu", subject=rig, score=score,
        components={"gpus": float(len(cards)), "listed_gpus": float(len(known)),
                    "allocated": float(allocated), "verified": float(verified is not None),
                    "base_sum": round(sum(base_score(c)[1] for c in cards), 6)})]


def endpoint_metric(e: EndpointHealthObserved) -> ComputeScoreComputed:
    """Seed 004's weighted score of one endpoint probe, as a metric."""
    comp = {"quality": e.quality, "speed": e.speed, "availability": e.availability,
            "participation": e.participation}
    return ComputeScoreComputed(
        event_id=uuid5(_NS, f"{e.event_id}/endpoint"), site=e.site, device_id=e.device_id,
        ts=e.ts, source=SOURCE, scheme="endpoint", subject=e.endpoint_url,
        score=endpoint_score(comp), components=comp)


def fold(events: Iterable[ComputeInput], p: GateParams = GateParams()) -> tuple[
        ComputeState, list[ComputeOutput]]:
    """Run ``step`` over one site's events (replay and tests)."""
    state, out = ComputeState(), []
    for e in events:
        state, produced = step(state, e, p)
        out += produced
    return state, out


def params(s: Settings) -> GateParams:
    """Gate configuration from Settings."""
    return GateParams(miner_id=s.compute_miner_id, pause_kw=s.gate_pause_kw,
                      resume_kw=s.gate_resume_kw, hold_s=s.gate_hold_s, ttl_s=s.command_ttl_s)


def _load(state: ComputeState, _: str, paused: Any) -> None:
    state.paused = bool(paused)


#: The gate is durable (the site's own table entry): a restarted worker keeps intake paused.
SPEC = AgentSpec[ComputeState, GateParams](
    name="compute", source=SOURCE, inputs=members(ComputeInput), params=params,
    state=ComputeState, step=step,
    durable=Durable(table="compute_gate", keys=lambda _: ("",),
                    save=lambda s, _: s.paused, load=_load))


def _endpoint_step(state: None, event: EndpointHealthObserved, p: None,
                   position: tuple[int, int] | None = None,
                   ) -> tuple[None, list[ComputeScoreComputed]]:
    return state, [endpoint_metric(event)]


#: Seed-004 score of every model endpoint probe, on compute.health's own partitions.
ENDPOINT_SPEC = AgentSpec[None, None](
    name="endpoint_scores", source=SOURCE, inputs=(EndpointHealthObserved,),
    params=lambda _: None, state=lambda: None, step=_endpoint_step, scope="partition")
