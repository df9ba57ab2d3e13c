"""Alert rules and their firing state: pure state and step.

Every rule turns an event into ``Condition``s (rule, dedup key, active?, severity, value,
threshold).  One engine keeps the firing set: an active condition whose key is not firing
fires (``AlertFired``) unless the same key resolved less than ``cooldown_s`` ago; a change
of severity while firing fires again (escalation); an inactive condition whose key is
firing resolves (``AlertResolved``).  The set is event-sourced: replaying the events gives
the same alerts with the same ids.

Rules (thresholds from Settings): grid frequency low (warning / critical below nominal),
load near or over available supply, over-temperature (ASIC chip, GPU), reject ratio of a
worker's closed 1-minute window, miner offline (no telemetry for N poll intervals, or the
miner says offline/error), supply feed silent, uplink down (N failed probes in a row),
compute job failures (N within a window), a command without effect (an applied sleep or
wake that the miner's telemetry does not show within ``confirm_s``), a silent meter and
an unknown supply (critical: the control plane decides nothing then), and a device fault
(a device whose input a connector dead-lettered: garbage or implausible readings; it clears
after ``fault_clear_s`` without another), and a GPU fault (critical: NVML could not read a
card or start at all; it clears the same way), and a GPU's Xid errors (critical for the
ones NVIDIA's catalogue says need a reset, a reseat or an RMA).  Silence is judged on the
site clock (meter, feed and headroom events), once a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from agents.spec import AgentSpec, Durable, members
from schemas.alerts import AlertFired, AlertResolved, Severity
from schemas.commands import CommandAcknowledged
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    ComputeJobChanged,
    FeedPowerMeasured,
    GpuTelemetryObserved,
    GridMeasured,
    RecordDeadLettered,
    UplinkStatusObserved,
)
from schemas.metrics import EnergyHeadroomComputed, ShareRatioComputed
from schemas.settings import Settings

SOURCE = "agent:alerts"
#: Xid errors that mean the card needs hands (NVIDIA's Xid catalogue)
XID_MEANING = {48: "double-bit ECC error", 63: "ECC page retirement / row remap",
               64: "ECC page retirement / row remap failure", 74: "NVLink error",
               79: "fell off the bus", 92: "high single-bit ECC rate",
               94: "contained ECC error", 95: "uncontained ECC error"}
FATAL_XIDS = frozenset(XID_MEANING)
_NS = uuid5(NAMESPACE_URL, "hashplane:alerts")

AlertInput = (GridMeasured | FeedPowerMeasured | AsicTelemetryObserved | GpuTelemetryObserved
              | ShareRatioComputed | UplinkStatusObserved | ComputeJobChanged
              | EnergyHeadroomComputed | CommandAcknowledged | RecordDeadLettered)
Alert = AlertFired | AlertResolved
#: An alert fires from its ``AlertFired`` until an ``AlertResolved`` of the same dedup key:
#: the last of the two says.  The history queries read firing alerts by this rule
#: (streams/queries.py).
FIRING = AlertFired.__name__


@dataclass(frozen=True, slots=True)
class AlertParams:
    """Thresholds (from Settings)."""

    freq_warn_hz: float = 0.2
    freq_crit_hz: float = 0.5
    load_pct: float = 95.0
    asic_temp_c: float = 95.0
    gpu_temp_c: float = 88.0
    gpu_temp_crit_c: float = 90.0
    reject_pct: float = 5.0
    reject_min_shares: int = 10
    offline_intervals: int = 3
    asic_poll_s: float = 10.0
    gpu_poll_s: float = 5.0
    feed_stale_s: float = 10.0
    uplink_down_after: int = 2
    job_failures: int = 3
    job_window_s: float = 900.0
    cooldown_s: float = 300.0
    sweep_s: float = 1.0
    confirm_s: float = 30.0
    asleep_w: float = 200.0
    meter_stale_s: float = 5.0  # 0: the site has no meter
    fault_clear_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Condition:
    """What a rule concluded about one dedup key."""

    rule: str
    key: str
    active: bool
    severity: Severity = "warning"
    message: str | Callable[[], str] = ""  # a callable is formatted only if an alert is sent
    value: float | None = None
    threshold: float | None = None


@dataclass(slots=True)
class AlertState:
    """Firing alerts and what the rules need to remember.  Mutated in place; ``dirty``
    lists dedup keys whose firing entry changed (the agent persists those)."""

    #: dedup key -> (rule, severity, since)
    firing: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    resolved_at: dict[str, float] = field(default_factory=dict)
    seen: dict[str, tuple[float, float]] = field(default_factory=dict)  # device -> (ts, poll)
    feeds: dict[str, float] = field(default_factory=dict)  # feed -> last reading
    meter: float | None = None  # last grid reading
    faults: dict[str, float] = field(default_factory=dict)  # alert key -> last dead letter
    uplink_fails: int = 0
    job_failures: dict[str, list[float]] = field(default_factory=dict)
    last_sweep: float = float("-inf")
    #: device -> (command kind, applied at, confirm by): effects telemetry must show
    expect: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)


def conditions(state: AlertState, e: AlertInput, p: AlertParams) -> list[Condition]:
    """The rules: which conditions an event establishes or clears."""
    now = e.ts.timestamp()
    out: list[Condition] = []
    if isinstance(e, RecordDeadLettered):  # whoever refused it: the device sent garbage
        # a meter that reads nonsense leaves the site blind to the grid: critical
        meter = e.source_topic.startswith("modbus://")
        if e.source_topic.startswith("nvml://"):  # NVML could not read the card (fell off
            # the bus, no driver): nothing about it is known, and it may be burning power
            key = f"gpu_fault/{e.device_id}"
            state.faults[key] = max(now, state.faults.get(key, now))
            out.append(Condition("gpu_fault", key, True, "critical",
                                 lambda: f"{e.device_id}: NVML cannot read it: "
                                         f"{e.reason[:300]}"))
            return out
        kind = "meter_fault" if meter else "device_fault"
        key = f"{kind}/{e.device_id}"
        state.faults[key] = max(now, state.faults.get(key, now))
        out.append(Condition(kind, key, True, "critical" if meter else "warning",
                             lambda: f"{e.device_id} sent input that was refused: "
                                     f"{e.reason[:300]}"
                                     + (" (readings that cannot be real never move the "
                                        "band)" if meter else "")))
        return out
    if isinstance(e, GridMeasured):
        state.meter = now if state.meter is None else max(state.meter, now)
        out.append(Condition("meter_silent", "meter_silent/meter", False))
        low = e.nominal_hz - e.frequency_hz
        sev: Severity = "critical" if low >= p.freq_crit_hz else "warning"
        out.append(Condition(
            "grid_frequency_low", f"grid_frequency_low/{e.device_id}", low >= p.freq_warn_hz,
            sev, lambda: f"grid at {e.frequency_hz:.3f} Hz ({low:+.3f} Hz under "
                         f"{e.nominal_hz:g})",
            e.frequency_hz, e.nominal_hz - (p.freq_crit_hz if sev == "critical"
                                            else p.freq_warn_hz)))
    elif isinstance(e, EnergyHeadroomComputed):
        over = e.load_kw > 0 and e.load_kw > e.available_kw
        near = e.load_kw > 0 and e.load_kw >= e.available_kw * p.load_pct / 100.0
        out.append(Condition(
            "load_near_supply", f"load_near_supply/{e.site}", over or near,
            "critical" if over else "warning",
            lambda: f"load {e.load_kw:.1f} kW vs available {e.available_kw:.1f} kW", e.load_kw,
            e.available_kw if over else e.available_kw * p.load_pct / 100.0))
    elif isinstance(e, FeedPowerMeasured):
        state.feeds[e.feed_id] = max(now, state.feeds.get(e.feed_id, now))
        out.append(Condition("feed_silent", f"feed_silent/{e.feed_id}", False))
        out.append(Condition("supply_unknown", "supply_unknown/supply", False))
    elif isinstance(e, AsicTelemetryObserved | GpuTelemetryObserved):
        asic = isinstance(e, AsicTelemetryObserved)
        poll = p.asic_poll_s if asic else p.gpu_poll_s
        prev = state.seen.get(e.device_id)
        state.seen[e.device_id] = (max(now, prev[0]) if prev else now, poll)
        if isinstance(e, AsicTelemetryObserved):
            out += _effect(state, e, now, p)
        down = asic and e.state in ("offline", "error")  # type: ignore[union-attr]
        key = f"miner_offline/{e.device_id}"
        if down or key in state.firing:  # (an inactive, non-firing condition changes nothing)
            out.append(Condition("miner_offline", key, down, "critical",
                                 lambda: f"{e.device_id} reports {getattr(e, 'state', '')}"))
        if isinstance(e, GpuTelemetryObserved) and e.xid_errors:
            # NVIDIA's Xid catalogue: these need a reset, a reseat or an RMA, not a retry
            fatal = sorted(set(e.xid_errors) & FATAL_XIDS)
            key = f"gpu_xid/{e.device_id}"
            state.faults[key] = max(now, state.faults.get(key, now))
            out.append(Condition("gpu_xid", key, True, "critical" if fatal else "warning",
                                 lambda: f"{e.device_id} reported Xid "
                                 f"{', '.join(map(str, e.xid_errors))}"
                                 + (f" ({', '.join(XID_MEANING.get(x, '') for x in fatal)})"
                                    if fatal else "")))
        temp = e.temp_chip_c if isinstance(e, AsicTelemetryObserved) else e.temp_c
        limit = p.asic_temp_c if asic else p.gpu_temp_c
        if temp is not None and (temp > limit
                                 or f"over_temperature/{e.device_id}" in state.firing):
            crit = not asic and temp > p.gpu_temp_crit_c
            out.append(Condition("over_temperature", f"over_temperature/{e.device_id}",
                                 temp > limit, "critical" if crit else "warning",
                                 lambda: f"{e.device_id} at {temp:.1f} °C (limit {limit:g} °C)",
                                 temp, limit))
    elif isinstance(e, ShareRatioComputed):
        total = e.accepted + e.rejected + e.stale
        if e.scope == "worker" and e.final and e.window_s == 60 \
                and total >= p.reject_min_shares:
            out.append(Condition(
                "reject_ratio_high", f"reject_ratio_high/{e.subject}",
                e.rejected_pct > p.reject_pct, "warning",
                f"{e.subject} rejected {e.rejected_pct:.1f} % of {total} shares in a minute",
                e.rejected_pct, p.reject_pct))
    elif isinstance(e, UplinkStatusObserved):
        state.uplink_fails = 0 if e.up else state.uplink_fails + 1
        out.append(Condition("uplink_down", f"uplink_down/{e.site}",
                             state.uplink_fails >= p.uplink_down_after, "critical",
                             f"uplink {e.target} down: {e.detail}" if not e.up
                             else f"uplink {e.target} up", float(state.uplink_fails),
                             float(p.uplink_down_after)))
    elif isinstance(e, ComputeJobChanged):
        times = state.job_failures.setdefault(e.device_id, [])
        if e.state in ("failed", "rejected"):
            times.append(now)
        times[:] = [t for t in times if now - t < p.job_window_s]
        out.append(Condition(
            "compute_job_failures", f"compute_job_failures/{e.device_id}",
            len(times) >= p.job_failures, "warning",
            f"{len(times)} compute jobs failed or were rejected in {p.job_window_s:g} s"
            + (f"; last: {e.detail}" if e.detail else ""), float(len(times)),
            float(p.job_failures)))
    elif isinstance(e, CommandAcknowledged):
        if e.status == "applied" and e.command_kind in ("SleepAsic", "WakeAsic"):
            state.expect[e.device_id] = (e.command_kind, now, now + p.confirm_s)
        # a miner that refuses our login cannot be curtailed: say so until it accepts one
        if e.status == "rejected" and e.detail.startswith("authentication failed"):
            out.append(Condition("device_login_refused", f"device_login_refused/{e.device_id}",
                                 True, "critical", lambda: f"{e.device_id} refused the "
                                 f"actuator's login, so it cannot be commanded: {e.detail}"))
        elif e.status == "applied":
            out.append(Condition("device_login_refused", f"device_login_refused/{e.device_id}",
                                 False, message=f"{e.device_id} accepted a command again"))
    if isinstance(e, GridMeasured | FeedPowerMeasured | EnergyHeadroomComputed) \
            and now - state.last_sweep >= p.sweep_s:
        state.last_sweep = now
        out += silence(state, now, p)
    return out


def _effect(state: AlertState, e: AsicTelemetryObserved, now: float,
            p: AlertParams) -> list[Condition]:
    """Did the miner do what an applied sleep or wake said?  Judged on its telemetry after
    the ack; an alert when ``confirm_s`` passed without the effect, resolved when seen."""
    exp = state.expect.get(e.device_id)
    if exp is None or now < exp[1]:
        return []
    kind, _, deadline = exp
    asleep = e.power_w < p.asleep_w and e.hashrate_ths < 1.0
    awake = e.state == "running" or (e.state == "waking" and not asleep)
    done = asleep if kind == "SleepAsic" else awake
    key = f"command_without_effect/{e.device_id}"
    if done:
        del state.expect[e.device_id]
        return [Condition("command_without_effect", key, False,
                          message=f"{e.device_id} did as {kind} said")]
    if now <= deadline:
        return []
    return [Condition("command_without_effect", key, True, "warning",
                      f"{kind} was applied to {e.device_id} but {now - deadline + p.confirm_s:.0f}"
                      f" s later it draws {e.power_w:.0f} W at {e.hashrate_ths:.1f} TH/s "
                      f"({e.state})", e.power_w, p.asleep_w)]


def silence(state: AlertState, now: float, p: AlertParams) -> list[Condition]:
    """Devices and feeds that stopped reporting (and those that came back)."""
    out = []
    for device, (ts, poll) in state.seen.items():
        limit = p.offline_intervals * poll
        key = f"miner_offline/{device}"
        if now - ts > limit:
            out.append(Condition("miner_offline", key, True, "critical",
                                 f"no telemetry from {device} for {now - ts:.0f} s",
                                 now - ts, limit))
    for feed, ts in state.feeds.items():
        if now - ts > p.feed_stale_s:
            out.append(Condition("feed_silent", f"feed_silent/{feed}", True, "warning",
                                 f"no reading from feed {feed} for {now - ts:.0f} s: "
                                 "it no longer counts as supply", now - ts, p.feed_stale_s))
    if state.feeds:
        gone = not any(now - ts <= p.feed_stale_s for ts in state.feeds.values())
        if gone or "supply_unknown/supply" in state.firing:
            out.append(Condition("supply_unknown", "supply_unknown/supply", gone, "critical",
                                 "every supply feed is silent: supply unknown, no new "
                                 "decisions until they report again"))
    if p.meter_stale_s > 0 and state.meter is not None and now - state.meter > p.meter_stale_s:
        out.append(Condition("meter_silent", "meter_silent/meter", True, "critical",
                             f"no grid meter reading for {now - state.meter:.0f} s: no new "
                             "decisions until it reports again", now - state.meter,
                             p.meter_stale_s))
    for key, ts in list(state.faults.items()):
        if now - ts > p.fault_clear_s:
            del state.faults[key]
            kind, _, device = key.partition("/")
            out.append(Condition(kind, key, False, message=f"no refused input from {device} "
                                                            f"for {p.fault_clear_s:g} s"))
    return out


def step(state: AlertState, e: AlertInput, p: AlertParams = AlertParams(),
         ) -> tuple[AlertState, list[Alert]]:
    """Fold one event through the rules and the firing set."""
    return state, apply(state, conditions(state, e, p), e, p)


def apply(state: AlertState, conds: list[Condition], cause: Event,
          p: AlertParams) -> list[Alert]:
    """Fire, escalate or resolve by dedup key."""
    now = cause.ts.timestamp()
    out: list[Alert] = []
    for c in conds:
        firing = state.firing.get(c.key)
        if not c.active and firing is None:
            continue  # the common case: nothing fires, nothing to resolve
        ident = uuid5(_NS, f"{c.key}/{cause.event_id}")
        message = c.message() if callable(c.message) else c.message
        if c.active:
            if firing is not None and firing[1] == c.severity:
                continue
            if firing is None and now - state.resolved_at.get(c.key, float("-inf")) \
                    < p.cooldown_s:
                continue
            state.firing[c.key] = (c.rule, c.severity, now if firing is None else firing[2])
            state.dirty.add(c.key)
            out.append(AlertFired(
                event_id=ident, site=cause.site, device_id=_subject(c.key), ts=cause.ts,
                source=SOURCE, rule=c.rule, severity=c.severity, dedup_key=c.key,
                message=message[:2048], value=c.value, threshold=c.threshold))
        elif firing is not None:
            del state.firing[c.key]
            state.resolved_at[c.key] = now
            state.dirty.add(c.key)
            out.append(AlertResolved(
                event_id=ident, site=cause.site, device_id=_subject(c.key), ts=cause.ts,
                source=SOURCE, rule=firing[0], severity=firing[1],  # type: ignore[arg-type]
                dedup_key=c.key,
                message=(message or f"{c.rule} cleared")[:2048], value=c.value))
    return out


def _subject(key: str) -> str:
    return key.split("/", 1)[1] or key


def fold(events: Iterable[AlertInput], p: AlertParams = AlertParams()) -> tuple[
        AlertState, list[Alert]]:
    """Run ``step`` over one site's events (replay and tests)."""
    state, out = AlertState(), []
    for e in events:
        state, produced = step(state, e, p)
        out += produced
    return state, out


def params(s: Settings) -> AlertParams:
    """Alert thresholds from Settings."""
    return AlertParams(
        freq_warn_hz=s.alert_freq_warn_hz, freq_crit_hz=s.alert_freq_crit_hz,
        load_pct=s.alert_load_pct, asic_temp_c=s.alert_asic_temp_c,
        gpu_temp_c=s.alert_gpu_temp_c, gpu_temp_crit_c=s.reward_temp_max_c,
        reject_pct=s.alert_reject_pct, reject_min_shares=s.alert_reject_min_shares,
        offline_intervals=s.alert_offline_intervals, asic_poll_s=s.asic_poll_s,
        gpu_poll_s=s.rig_poll_s, feed_stale_s=s.feed_stale_s,
        uplink_down_after=s.uplink_down_after, job_failures=s.alert_job_failures,
        job_window_s=s.alert_job_window_s, cooldown_s=s.alert_cooldown_s,
        confirm_s=s.alert_confirm_s, meter_stale_s=s.meter_stale_s,
        fault_clear_s=s.alert_fault_clear_s)


def accepts(e: Event) -> bool:
    """Share ratios: the reject rule reads closed 1-minute worker windows only."""
    return not isinstance(e, ShareRatioComputed) or (
        e.scope == "worker" and e.final and e.window_s == 60)


def _save(state: AlertState, key: str) -> list[Any] | None:
    v = state.firing.get(key)
    return None if v is None else list(v)


def _load(state: AlertState, key: str, v: Any) -> None:
    state.firing[key] = (str(v[0]), str(v[1]), float(v[2]))


#: The firing alerts are durable: a restarted worker resolves what it fired before.
SPEC = AgentSpec[AlertState, AlertParams](
    name="alerts", source=SOURCE, inputs=members(AlertInput), params=params,
    state=AlertState, step=step, accepts=accepts,
    durable=Durable(table="alerts_firing", keys=lambda s: s.firing, save=_save, load=_load))
