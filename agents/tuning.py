"""GPU tuning: the search space, the objective, bounded steps, and the online tuner's fold.

**Objective.** Seed 000 asks for "accepted shares at 100 %, rejected at 0 %, GPUs kept
cool", scored by its reward (agents/rewards.py).  That reward is a percentage of the
worker's own shares, so it is flat in hashrate: every setting below a card's stable memory
offset scores about 99.2 (the simulated cards' base reject and stale ratios), and a tuner
maximising it alone would learn nothing about hashrate.  The seed's goal is more accepted
shares, so the tuner maximises

    J = hashrate (MH/s) x accepted % / 100 x reward / 100   (reward-weighted accepted hashrate)

subject to the seed's constraints made explicit: temperature <= T_max (90 °C) and reject
ratio <= 1 %.  Both J and the reward are recorded with every trial; efficiency (accepted
MH per joule) is reported beside them.

With ``HASHPLANE_TUNER_OBJECTIVE=profit`` it maximises, under the same constraints, the
money the card makes per day instead (``profit_per_day``):

    profit = accepted MH/s x revenue per MH/s per day - power (W) x 24 h / 1e6 x price per MWh

at the power price in force (the ``prices`` topic, else ``HASHPLANE_TUNER_POWER_PRICE_PER_MWH``).
The optimiser models power as a fourth smooth outcome and composes profit at the price of
the moment, so a price that moves changes what it proposes next without refitting.  Every
trial records its profit (when a revenue rate and a price are known) beside J.

**Space.** Four knobs, normalised to [0, 1]: NVML power limit (the card's min..max), core
offset (-200..+300 MHz), memory offset (0..2x the card's typical stable offset) and the
miner's intensity (8..25).  ``bounded`` limits each change to ``max_step`` of the range per
knob, so a trial never jumps the card from one corner to another.

**Online tuner** (``step``): for each GPU in tuning mode, propose settings, command them
(``ApplyGpuProfile`` on commands.gpu), wait for the applied ack, let the card settle, measure
over a window (telemetry: hashrate, power, peak temperature; shares: accepted/rejected/stale),
score the trial, and record it (``TuningTrialEvaluated`` on metrics.rewards).  A trial that
breaks a constraint is rolled back at once to the best settings known.  After ``trials``
trials the best settings are applied and kept.  Proposals come from a ``Proposer`` (the
optimiser, agents/optimizers.py), called with the trial history; the fold itself is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from uuid import NAMESPACE_URL, uuid5

from agents.profit import PriceSchedule, fold_price
from agents.rewards import reward as seed_reward
from agents.spec import AgentSpec, members
from schemas.commands import ApplyGpuProfile, CommandAcknowledged
from schemas.events import GpuTelemetryObserved, PowerPriceObserved, ShareCountsObserved
from schemas.metrics import TuningTrialEvaluated
from schemas.settings import Settings

SOURCE = "agent:tuner"
_NS = uuid5(NAMESPACE_URL, "hashplane:tuner")

CORE_RANGE = (-200.0, 300.0)
INTENSITY_RANGE = (8, 25)
DIMS = ("power_limit_w", "core_offset_mhz", "mem_offset_mhz", "intensity")

#: Card families: NVML power-limit range and typical stable memory offset (public figures;
#: a card's own stable offset varies around it, which is why each card is tuned).
CARD_LIMITS: dict[str, tuple[float, float, float, float]] = {
    # key: (pl_min, pl_max, pl_default, typical stable memory offset MHz)
    "RTX 3090": (100.0, 400.0, 350.0, 1100.0),
    "RTX 4090": (150.0, 600.0, 450.0, 1400.0),
    "A100": (150.0, 250.0, 250.0, 60.0),
    "H100": (200.0, 350.0, 350.0, 80.0),
}


def card_family(card: str) -> str:
    """The CARD_LIMITS key of a card name as NVML or RainbowMiner reports it."""
    flat = card.upper().replace(" ", "")
    for key in CARD_LIMITS:
        if key.replace(" ", "") in flat:
            return key
    raise KeyError(f"no tuning limits for card {card!r}; known: {', '.join(CARD_LIMITS)}")


@dataclass(frozen=True)
class Settings4:
    """The four knobs, in physical units."""

    power_limit_w: float
    core_offset_mhz: float
    mem_offset_mhz: float
    intensity: int

    def as_tuple(self) -> tuple[float, float, float, int]:
        return (self.power_limit_w, self.core_offset_mhz, self.mem_offset_mhz, self.intensity)


@dataclass(frozen=True)
class Space:
    """A card family's search box."""

    family: str
    pl: tuple[float, float]
    core: tuple[float, float]
    mem: tuple[float, float]
    intensity: tuple[int, int]
    pl_default: float

    @classmethod
    def for_card(cls, card: str) -> Space:
        fam = card_family(card)
        pl_min, pl_max, pl_def, stable = CARD_LIMITS[fam]
        return cls(fam, (pl_min, pl_max), CORE_RANGE, (0.0, 2.0 * stable), INTENSITY_RANGE,
                   pl_def)

    def default(self) -> Settings4:
        """RainbowMiner's defaults: the card's default power limit, no offsets, intensity 22
        (what a rig runs before anyone tunes it)."""
        return Settings4(self.pl_default, 0.0, 0.0, 22)

    def to_settings(self, x: Sequence[float]) -> Settings4:
        """Normalised point -> physical settings (intensity rounded, everything clamped)."""
        u = [min(1.0, max(0.0, float(v))) for v in x]

        def lin(r: tuple[float, float], v: float) -> float:
            return r[0] + v * (r[1] - r[0])

        lo, hi = self.intensity
        return Settings4(round(lin(self.pl, u[0]), 1), round(lin(self.core, u[1])),
                         round(lin(self.mem, u[2])), round(lin((float(lo), float(hi)), u[3])))

    def to_unit(self, s: Settings4) -> list[float]:
        """Physical settings -> normalised point."""
        def inv(r: tuple[float, float], v: float) -> float:
            return min(1.0, max(0.0, (v - r[0]) / (r[1] - r[0])))

        return [inv(self.pl, s.power_limit_w), inv(self.core, s.core_offset_mhz),
                inv(self.mem, s.mem_offset_mhz),
                inv((float(self.intensity[0]), float(self.intensity[1])), float(s.intensity))]


def bounded(current: Sequence[float], target: Sequence[float], max_step: float) -> list[float]:
    """Move from ``current`` toward ``target`` by at most ``max_step`` per knob (unit space)."""
    return [c + max(-max_step, min(max_step, t - c)) for c, t in zip(current, target, strict=True)]


@dataclass(frozen=True)
class Measurement:
    """What a trial window observed."""

    hashrate_mhs: float  # mean reported hashrate
    power_w: float  # mean power
    temp_max_c: float  # peak temperature
    accepted: int
    rejected: int
    stale: int


@dataclass(frozen=True)
class Score:
    """A trial's scores."""

    reward: float  # seed 000, 0-100
    objective: float  # J, reward-weighted accepted MH/s
    reject_pct: float
    accepted_pct: float
    efficiency: float  # accepted MH per joule
    feasible: bool
    profit_per_day: float | None = None  # at the objective's rates (None: no price known)


STALE_FRACTION = 0.002  # stale share of all shares a stable card shows (the model's prior)
HOURS_PER_DAY = 24.0
ObjectiveKind = Literal["j", "profit"]


def profit_per_day(accepted_mhs: float, power_w: float, revenue_per_mh_day: float,
                   price_per_mwh: float) -> float:
    """What a card makes per day: its accepted hashrate's revenue minus its power's cost
    (W x 24 h / 1e6 = MWh a day)."""
    return accepted_mhs * revenue_per_mh_day - power_w * HOURS_PER_DAY / 1e6 * price_per_mwh


@dataclass(frozen=True)
class Objective:
    """What a trial is scored by: ``j`` (J) or ``profit`` (``profit_per_day`` at these rates;
    ``price_per_mwh`` None: no price known, no profit computed)."""

    kind: ObjectiveKind = "j"
    revenue_per_mh_day: float = 0.0
    price_per_mwh: float | None = None

    def value(self, sc: Score) -> float:
        """The number the optimiser maximises."""
        if self.kind == "j":
            return sc.objective
        if sc.profit_per_day is None:
            raise ValueError("the profit objective needs a power price")
        return sc.profit_per_day


J = Objective()  # the default objective


def objective_of(hashrate_mhs: float, reject_pct: float, temp_c: float,
                 temp_max_c: float = 90.0, stale: float = STALE_FRACTION) -> float:
    """J from its parts (the composite the optimiser models): accepted % and the seed-000
    reward of a worker alone, with ``stale`` of the shares stale."""
    acc = 100.0 - reject_pct - 100.0 * stale
    r = max(0.0, 100.0 - reject_pct - max(0.0, temp_c - temp_max_c) - (100.0 - acc))
    return hashrate_mhs * acc / 100.0 * r / 100.0


def score(m: Measurement, temp_max_c: float = 90.0, reject_max_pct: float = 1.0,
          cluster_accepted: int = 0, objective: Objective = J) -> Score:
    """Score a measured window (shares of the worker; cluster share 0 = the worker alone);
    its profit at ``objective``'s rates when a price is known."""
    total = m.accepted + m.rejected + m.stale
    acc = 100.0 * m.accepted / total if total else 0.0
    rej = 100.0 * m.rejected / total if total else 0.0
    r = seed_reward(rej, acc, m.accepted, cluster_accepted, m.temp_max_c, temp_max_c)
    j = m.hashrate_mhs * acc / 100.0 * r / 100.0
    eff = m.hashrate_mhs * acc / 100.0 / m.power_w if m.power_w > 0 else 0.0
    money = None if objective.price_per_mwh is None else profit_per_day(
        m.hashrate_mhs * acc / 100.0, m.power_w, objective.revenue_per_mh_day,
        objective.price_per_mwh)
    return Score(r, j, rej, acc, eff, m.temp_max_c <= temp_max_c and rej <= reject_max_pct,
                 money)


# -- the online tuner's fold ------------------------------------------------------------------

#: (unit point, objective value (J or profit per day), peak temperature, reject %,
#: hashrate MH/s, power W) of each trial so far; power NaN where it was not recorded.
Observation = tuple[list[float], float, float, float, float, float]
Proposer = Callable[[str, list[Observation]], list[float]]


@dataclass(frozen=True)
class TunerParams:
    """Online tuning configuration (from Settings)."""

    trials: int = 25
    settle_s: float = 120.0
    window_s: float = 300.0
    max_step: float = 0.25
    temp_max_c: float = 90.0
    reject_max_pct: float = 1.0
    ttl_s: float = 30.0
    ack_timeout_s: float = 120.0
    optimizer: str = "botorch"
    devices: frozenset[str] = frozenset()  # the GPUs in tuning mode (the live agent)
    objective: ObjectiveKind = "j"
    revenue_per_mh_day: float = 0.0  # what an accepted MH/s earns per day
    price_per_mwh: float | None = None  # the power price when none is in force on `prices`
    #: warm-start observations per card family (from a trained checkpoint)
    prior: dict[str, list[Observation]] = field(default_factory=dict)


@dataclass
class GpuTuning:
    """One GPU's tuning run."""

    device: str
    rig_id: str
    gpu_index: int
    space: Space
    current: list[float]
    phase: str = "propose"  # propose, applying, settling, measuring, done
    trial: int = 0
    command_id: str = ""
    since: float = 0.0  # when the phase began (event time)
    window_start: float = 0.0
    rollback: bool = False
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (MH/s, W, °C)
    shares: list[int] = field(default_factory=lambda: [0, 0, 0])
    cluster: int = 0  # every worker's accepted shares in the window (seed 000's cluster)
    history: list[Observation] = field(default_factory=list)
    best: tuple[list[float], float] | None = None


@dataclass
class TunerState:
    """GPUs in tuning mode (by device id)."""

    gpus: dict[str, GpuTuning] = field(default_factory=dict)
    optimizers: dict[str, Any] = field(default_factory=dict)  # the live agent's, per family
    prices: PriceSchedule = field(default_factory=PriceSchedule)  # the power price intervals


def objective_at(state: TunerState, t: float, p: TunerParams) -> Objective:
    """The objective in force at event time ``t``: its price is the market's in force, else
    the configured one."""
    price = state.prices.at(t)
    return Objective(p.objective, p.revenue_per_mh_day,
                     p.price_per_mwh if price is None else price)


TunerInput = GpuTelemetryObserved | ShareCountsObserved | CommandAcknowledged | PowerPriceObserved
TunerOutput = ApplyGpuProfile | TuningTrialEvaluated


def step(state: TunerState, event: TunerInput, devices: frozenset[str], propose: Proposer,
         p: TunerParams = TunerParams()) -> tuple[TunerState, list[TunerOutput]]:
    """Fold one event; may command the next trial and record the finished one."""
    if isinstance(event, PowerPriceObserved):
        fold_price(state.prices, None, event)
        state.prices.forget_before(event.ts.timestamp() - 86_400.0)  # a day is plenty
        return state, []
    if isinstance(event, CommandAcknowledged):
        g = next((g for g in state.gpus.values() if g.command_id == str(event.command_id)),
                 None)
        if g is None or g.phase != "applying":
            return state, []
        t = event.ts.timestamp()
        if event.status == "applied":
            g.phase, g.since = ("settling", t) if not g.rollback else ("propose", t)
            g.rollback = False
        else:  # rejected/failed/expired: count the trial as infeasible, try elsewhere
            g.history.append((g.current, 0.0, p.temp_max_c + 1.0, 100.0, 0.0, math.nan))
            g.phase, g.since = "propose", t
        return state, []
    if isinstance(event, ShareCountsObserved):
        t = event.ts.timestamp()
        for other in state.gpus.values():  # the cluster's accepted shares in each window
            if other.phase == "measuring" and t >= other.window_start:
                other.cluster += event.accepted
        g = state.gpus.get(event.worker) or state.gpus.get(event.device_id)
        if g is not None and g.phase == "measuring" and t >= g.window_start:
            g.shares[0] += event.accepted
            g.shares[1] += event.rejected
            g.shares[2] += event.stale
        return state, []
    if event.device_id not in devices:
        return state, []
    g = state.gpus.get(event.device_id)
    t = event.ts.timestamp()
    if g is None:
        space = Space.for_card(event.card)
        start = Settings4(event.power_limit_w or space.pl_default, 0.0, 0.0, 22)
        g = state.gpus[event.device_id] = GpuTuning(
            event.device_id, event.rig_id, event.gpu_index, space, space.to_unit(start),
            since=t)
    return state, _advance(g, event, t, propose, p, objective_at(state, t, p))


def _advance(g: GpuTuning, e: GpuTelemetryObserved, t: float, propose: Proposer,
             p: TunerParams, objective: Objective) -> list[TunerOutput]:
    if g.phase == "applying" and t - g.since > p.ack_timeout_s:
        g.phase = "propose"  # no ack: the command expired; propose again
    if g.phase == "settling" and t - g.since >= p.settle_s:
        g.phase, g.window_start, g.samples, g.shares = "measuring", t, [], [0, 0, 0]
        g.cluster = 0
        return []
    if g.phase == "measuring":
        g.samples.append((e.hashrate_mhs, e.power_w, e.temp_c))
        if t - g.window_start >= p.window_s:
            return _finish_trial(g, e, t, p, objective)
        if e.temp_c > p.temp_max_c:  # too hot: stop the trial now, roll back
            return _finish_trial(g, e, t, p, objective)
        return []
    if g.phase == "propose":
        if g.trial >= p.trials:
            return _finish_run(g, e, t, p)
        target = propose(g.space.family, list(g.history))
        g.current = bounded(g.current, target, p.max_step)
        g.trial += 1
        return [_command(g, e, g.current, p, f"tuning trial {g.trial}")]
    return []


def _finish_trial(g: GpuTuning, e: GpuTelemetryObserved, t: float, p: TunerParams,
                  objective: Objective) -> list[TunerOutput]:
    n = len(g.samples)
    m = Measurement(
        hashrate_mhs=math.fsum(s[0] for s in g.samples) / n,
        power_w=math.fsum(s[1] for s in g.samples) / n,
        temp_max_c=max(s[2] for s in g.samples), accepted=g.shares[0], rejected=g.shares[1],
        stale=g.shares[2])
    # seed 000's reward with the cluster's accepted shares of the same window (the worker's
    # own included: alone, the cluster is the worker)
    sc = score(m, p.temp_max_c, p.reject_max_pct, cluster_accepted=max(g.cluster, m.accepted),
               objective=objective)
    value = objective.value(sc)
    g.history.append((list(g.current), value, m.temp_max_c, sc.reject_pct, m.hashrate_mhs,
                      m.power_w))
    if sc.feasible and (g.best is None or value > g.best[1]):
        g.best = (list(g.current), value)
    outcome: Literal["kept", "rolled_back"] = "kept" if sc.feasible else "rolled_back"
    record = _trial_event(g, e, t, m, sc, outcome, p, objective)
    out: list[TunerOutput] = [record]
    if not sc.feasible:
        back = g.best[0] if g.best is not None else g.space.to_unit(g.space.default())
        g.current = back  # a rollback goes straight back, not in bounded steps
        g.rollback = True
        out.append(_command(g, e, back, p, f"roll back after trial {g.trial}: "
                            f"{m.temp_max_c:.1f} °C, {sc.reject_pct:.2f} % rejected"))
        return out
    g.phase, g.since = "propose", t
    return out


def _finish_run(g: GpuTuning, e: GpuTelemetryObserved, t: float,
                p: TunerParams) -> list[TunerOutput]:
    best = g.best[0] if g.best is not None else g.space.to_unit(g.space.default())
    g.current = best
    cmd = _command(g, e, best, p, f"tuning done after {g.trial} trials: best settings")
    g.phase = "done"
    return [cmd]


def _command(g: GpuTuning, e: GpuTelemetryObserved, unit: list[float], p: TunerParams,
             reason: str) -> ApplyGpuProfile:
    s = g.space.to_settings(unit)
    cid = uuid5(_NS, f"{g.device}/{g.trial}/{e.event_id}")
    g.command_id, g.phase, g.since = str(cid), "applying", e.ts.timestamp()
    return ApplyGpuProfile(
        event_id=uuid5(_NS, f"cmd/{cid}"), command_id=cid, site=e.site, device_id=g.device,
        ts=e.ts, source=SOURCE, issued_at=e.ts, expires_at=e.ts + timedelta(seconds=p.ttl_s),
        reason=reason, issued_by=SOURCE, rig_id=g.rig_id, gpu_index=g.gpu_index,
        power_limit_w=s.power_limit_w, core_offset_mhz=int(s.core_offset_mhz),
        mem_offset_mhz=int(s.mem_offset_mhz), intensity=s.intensity,
        profile=f"hashplane-tuned-{g.device}")


def _trial_event(g: GpuTuning, e: GpuTelemetryObserved, t: float, m: Measurement, sc: Score,
                 outcome: Literal["kept", "rolled_back"], p: TunerParams,
                 objective: Objective) -> TuningTrialEvaluated:
    s = g.space.to_settings(g.current)
    return TuningTrialEvaluated(
        event_id=uuid5(_NS, f"trial/{g.device}/{g.trial}/{e.event_id}"), site=e.site,
        device_id=g.device, ts=e.ts, source=SOURCE, card=g.space.family, trial=g.trial,
        optimizer=p.optimizer, power_limit_w=s.power_limit_w,
        core_offset_mhz=int(s.core_offset_mhz), mem_offset_mhz=int(s.mem_offset_mhz),
        intensity=s.intensity, window_s=round(t - g.window_start, 3),
        hashrate_mhs=round(m.hashrate_mhs, 6), power_w=round(m.power_w, 3),
        temp_max_c=m.temp_max_c, accepted=m.accepted, rejected=m.rejected, stale=m.stale,
        reward=round(sc.reward, 6), objective=round(sc.objective, 6),
        efficiency_mh_per_j=round(sc.efficiency, 6), feasible=sc.feasible, outcome=outcome,
        objective_kind=objective.kind, price_per_mwh=objective.price_per_mwh,
        profit_per_day=None if sc.profit_per_day is None else round(sc.profit_per_day, 6))


def params(s: Settings) -> TunerParams:
    """Online tuning configuration from Settings (and the checkpoint's warm start)."""
    prior: dict[str, list[Observation]] = {}
    if s.tuner_checkpoint:
        from agents.tuner_training import load_checkpoint

        prior = load_checkpoint(s.tuner_checkpoint).observations
    return TunerParams(
        trials=s.tuner_trials, settle_s=s.tuner_settle_s, window_s=s.tuner_window_s,
        max_step=s.tuner_max_step, temp_max_c=s.reward_temp_max_c,
        reject_max_pct=s.tuner_reject_max_pct, ttl_s=max(s.command_ttl_s, 30.0),
        optimizer=s.tuner_optimizer, devices=frozenset(s.tuner_gpus), prior=prior,
        objective=s.tuner_objective, revenue_per_mh_day=s.gpu_revenue_per_mh_day,
        price_per_mwh=s.tuner_power_price_per_mwh)


def agent_step(state: TunerState, event: TunerInput,
               p: TunerParams) -> tuple[TunerState, list[TunerOutput]]:
    """``step`` for the GPUs in ``p.devices``, proposing with one optimizer per family.

    Every worker's share counts are folded (the cluster term) while a GPU is being tuned;
    nothing else but the tuned GPUs' telemetry and acks reaches the fold."""
    if isinstance(event, ShareCountsObserved):
        if state.gpus:
            step(state, event, p.devices, _no_proposal, p)  # counting only
        return state, []
    if isinstance(event, PowerPriceObserved):
        return step(state, event, p.devices, _no_proposal, p)
    if event.device_id not in p.devices:
        return state, []
    from agents import optimizers  # torch: imported in the offloaded step, not on the loop

    t = event.ts.timestamp()

    def propose(family: str, history: list[Observation]) -> list[float]:
        if family not in state.optimizers:
            state.optimizers[family] = optimizers.make(
                p.optimizer, seed=len(state.optimizers), prior=p.prior.get(family, ()),
                temp_max_c=p.temp_max_c, reject_max_pct=p.reject_max_pct)
        # composed at the price of the moment
        return list(state.optimizers[family].propose(history, objective_at(state, t, p)))

    return step(state, event, p.devices, propose, p)


def _no_proposal(family: str, history: list[Observation]) -> list[float]:
    raise AssertionError("share counts never propose")


def _slow(state: TunerState, event: Any, p: TunerParams) -> bool:
    """A tuned GPU's telemetry or ack may fit a GP (~1 s): off the event loop."""
    return not isinstance(event, ShareCountsObserved | PowerPriceObserved) \
        and event.device_id in p.devices


SPEC = AgentSpec[TunerState, TunerParams](
    name="tuner", source=SOURCE, inputs=members(TunerInput), params=params,
    state=TunerState, step=agent_step, offload=_slow, enabled=lambda s: bool(s.tuner_gpus))
