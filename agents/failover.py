"""Pool failover: when the uplink is down, point the ASICs at the local Stratum pool.

Pure state and step.  ``uplink.status`` probes decide the mode: ``down_after`` failed
probes in a row mean "down" (one lost probe is not an outage) and every ASIC not already on
the local pool gets a ``SwitchAsicPool`` to it; once probes have succeeded for
``hold_down_s`` of event time the ASICs go back to the pool they used before (their "home",
learnt from telemetry, so each miner returns to its own pool).  Telemetry also reconciles: an
ASIC that restarts onto the wrong pool during either mode is switched again.  One command
in flight per ASIC, cleared by its ack or expiry.  ``worker`` is left empty on the commands:
the actuator keeps the miner's current worker name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from uuid import NAMESPACE_URL, uuid5

from agents.spec import AgentSpec, Durable, members
from schemas.commands import CommandAcknowledged, SwitchAsicPool
from schemas.envelope import Event
from schemas.events import AsicTelemetryObserved, UplinkStatusObserved
from schemas.settings import Settings

SOURCE = "agent:failover"
_NS = uuid5(NAMESPACE_URL, "hashplane:failover")
SWITCHABLE = frozenset({"running", "waking", "sleeping"})

FailoverInput = UplinkStatusObserved | AsicTelemetryObserved | CommandAcknowledged


@dataclass(frozen=True, slots=True)
class FailoverParams:
    """Configuration of the failover (from Settings)."""

    local_pool_url: str = "stratum+tcp://127.0.0.1:3333"
    down_after: int = 2
    hold_down_s: float = 120.0
    ttl_s: float = 10.0


@dataclass(slots=True)
class Miner:
    """What failover knows of one ASIC."""

    pool: str = ""
    home: str = ""  # last pool other than the local one
    state: str = "running"
    seen: float = float("-inf")
    pending: tuple[str, str, float] | None = None  # (command_id, target pool, expires)


@dataclass(slots=True)
class FailoverState:
    """One site's uplink mode and miners.  Mutated in place; ``dirty`` lists miners whose
    home pool changed (the agent persists homes: after a restart mid-outage every miner
    is on the local pool and only the table remembers where they came from)."""

    mode: Literal["upstream", "local"] = "upstream"
    fails: int = 0
    healthy_since: float | None = None
    miners: dict[str, Miner] = field(default_factory=dict)
    acked: dict[str, None] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)


def target(state: FailoverState, m: Miner, p: FailoverParams) -> str | None:
    """The pool a miner should be on now, or None when it is where it should be."""
    want = p.local_pool_url if state.mode == "local" else m.home
    if not want or m.pool == want or m.state not in SWITCHABLE:
        return None
    return want


def step(state: FailoverState, event: FailoverInput, p: FailoverParams = FailoverParams(),
         ) -> tuple[FailoverState, list[SwitchAsicPool]]:
    """Fold one probe, telemetry read or ack; return the pool switches it calls for."""
    now = event.ts.timestamp()
    if isinstance(event, CommandAcknowledged):
        _ack(state, event)
        return state, []
    if isinstance(event, AsicTelemetryObserved):
        m = state.miners.setdefault(event.device_id, Miner())
        if now < m.seen:
            return state, []
        m.seen, m.state, m.pool = now, event.state, event.pool_url
        if event.pool_url and event.pool_url != p.local_pool_url and event.pool_url != m.home:
            m.home = event.pool_url
            state.dirty.add(event.device_id)
        return state, _switch(state, {event.device_id: m}, event, p)

    if event.up:
        state.fails = 0
        if state.mode == "local":
            state.healthy_since = state.healthy_since if state.healthy_since is not None \
                else now
            if now - state.healthy_since >= p.hold_down_s:
                state.mode, state.healthy_since = "upstream", None
                return state, _switch(state, state.miners, event, p)
        return state, []
    state.fails += 1
    state.healthy_since = None
    if state.mode == "upstream" and state.fails >= p.down_after:
        state.mode = "local"
        return state, _switch(state, state.miners, event, p)
    return state, []


def _switch(state: FailoverState, miners: dict[str, Miner], cause: Event,
            p: FailoverParams) -> list[SwitchAsicPool]:
    now = cause.ts.timestamp()
    out: list[SwitchAsicPool] = []
    why = ("uplink down: mining on the local pool" if state.mode == "local"
           else f"uplink healthy for {p.hold_down_s:g} s: back to the home pool")
    for device in sorted(miners):
        m = miners[device]
        if m.pending is not None and m.pending[2] <= now:
            m.pending = None
        want = target(state, m, p)
        if want is None or m.pending is not None:
            continue
        cid = uuid5(_NS, f"{cause.event_id}/{device}/{want}")
        out.append(SwitchAsicPool(
            event_id=cid, command_id=cid, site=cause.site, device_id=device, ts=cause.ts,
            source=SOURCE, issued_at=cause.ts, expires_at=cause.ts + timedelta(seconds=p.ttl_s),
            reason=why, issued_by=SOURCE, pool_url=want))
        m.pending = (str(cid), want, now + p.ttl_s)
    return out


def _ack(state: FailoverState, ack: CommandAcknowledged) -> None:
    if ack.command_kind != "SwitchAsicPool":
        return
    cid = str(ack.command_id)
    if cid in state.acked:
        return
    state.acked[cid] = None
    if len(state.acked) > 50_000:
        del state.acked[next(iter(state.acked))]
    m = state.miners.get(ack.device_id)
    if m is None or m.pending is None or m.pending[0] != cid:
        return
    if ack.status == "applied":
        m.pool = m.pending[1]
        m.seen = max(m.seen, ack.ts.timestamp())
    m.pending = None


def fold(events: Iterable[FailoverInput], p: FailoverParams = FailoverParams()) -> tuple[
        FailoverState, list[SwitchAsicPool]]:
    """Run ``step`` over one site's events (replay and tests)."""
    state, out = FailoverState(), []
    for e in events:
        state, produced = step(state, e, p)
        out += produced
    return state, out


def params(s: Settings) -> FailoverParams:
    """Failover configuration from Settings."""
    return FailoverParams(local_pool_url=s.local_pool_url, down_after=s.uplink_down_after,
                          hold_down_s=s.uplink_hold_down_s, ttl_s=s.command_ttl_s)


def _save(state: FailoverState, device: str) -> str | None:
    m = state.miners.get(device)
    return m.home if m is not None and m.home else None


def _load(state: FailoverState, device: str, home: Any) -> None:
    state.miners.setdefault(device, Miner()).home = str(home)


#: Home pools are durable: after a restart mid-outage every miner is on the local pool and
#: only the table remembers where each came from.
SPEC = AgentSpec[FailoverState, FailoverParams](
    name="failover", source=SOURCE, inputs=members(FailoverInput), params=params,
    state=FailoverState, step=step,
    durable=Durable(table="failover_home_pools", keys=lambda s: s.miners, save=_save,
                    load=_load, ledger=(AsicTelemetryObserved,)))
