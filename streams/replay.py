"""Replay and rebuild from the event log in ClickHouse.

* ``replay``: re-publish the stored records of a time range in event-time order (ts, then
  topic, partition, offset), to the original topics or to prefixed copies, at the recorded
  pace times ``speed`` or as fast as the broker takes them.  Payloads go out byte for byte as
  they were stored.
* ``rebuild``: fold the same records through the agents' own step functions (agents/) and
  return the site state the Faust tables hold: ASIC cycles / last-off / last-on, home pools,
  firing alerts, the operator's load cap, the compute gate.  Same functions, same order of
  decisions, so the rebuilt state equals the live one (tests/integration/test_replay.py).

Stored records were validated when they were consumed (invalid ones went to dlq), so
rebuild decodes them without validating again (``fast_decode``: orjson + ``model_construct``,
about 10x cheaper than validation); ``strict=True`` validates every record instead.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel

from agents import alerts, compute, energy, failover, scheduler
from agents.workers import alert_params, energy_params, scheduler_params
from schemas.commands import CapSiteLoad, CommandAcknowledged
from schemas.envelope import Event
from schemas.events import AsicTelemetryObserved
from schemas.registry import BY_NAME, TOPICS, kind_of
from streams.codec import decode
from streams.history import HistoryStore
from streams.settings import Settings

#: Topics the site state is folded from (the site agents' inputs).
SITE_TOPICS = ("dlq", "grid.readings", "power.readings", "asic.telemetry", "gpu.telemetry",
               "uplink.status", "compute.jobs", "metrics.energy", "commands.site",
               "commands.acks")


# -- reading the log --------------------------------------------------------------------------

def read_log(store: HistoryStore, since: datetime, until: datetime,
             topics: Iterable[str] | None = None, devices: Iterable[str] | None = None,
             chunk: timedelta = timedelta(hours=1)) -> Iterator[tuple[str, str, bytes]]:
    """(topic, device_id, payload) of every stored record in [since, until), event-time
    order, each event once; read a chunk of time at a time so memory stays bounded."""
    db = store.database
    names = sorted(topics) if topics is not None else [t.name for t in TOPICS]
    unknown = [t for t in names if t not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown topics {unknown}; known: {', '.join(BY_NAME)}")
    devs = sorted(devices) if devices is not None else []
    start = since
    while start < until:
        end = min(until, start + chunk)
        rows = store.query(
            f"SELECT topic, device_id, payload FROM {db}.events WHERE ts >= "
            f"{{s:DateTime64(3, 'UTC')}} AND ts < {{e:DateTime64(3, 'UTC')}} AND topic IN "
            f"{{t:Array(String)}} AND (empty({{d:Array(String)}}) OR has({{d:Array(String)}}, "
            f"device_id)) ORDER BY ts, topic, kafka_partition, kafka_offset "
            f"LIMIT 1 BY event_id", {"s": start, "e": end, "t": names, "d": devs})
        for topic, device, payload in rows:
            yield topic, device, payload.encode() if isinstance(payload, str) else payload
        start = end


# -- decoding without validating again --------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    model: type[BaseModel]
    topic: str
    version: int
    times: tuple[str, ...]
    uuids: tuple[str, ...]
    defaults: dict[str, Any]  # fields a payload may lack (added later with a default)
    required: frozenset[str]


def _plans() -> dict[str, _Plan]:
    plans: dict[str, _Plan] = {}
    for spec in TOPICS:
        for model in spec.models:
            fields = model.model_fields
            hints = {n: str(f.annotation) for n, f in fields.items()}
            plans[kind_of(model)] = _Plan(
                model, spec.name, int(fields["schema_version"].default),
                tuple(n for n, h in hints.items() if "atetime" in h),
                tuple(n for n, h in hints.items() if "UUID" in h),
                {n: f.get_default(call_default_factory=True) for n, f in fields.items()
                 if not f.is_required()},
                frozenset(n for n, f in fields.items() if f.is_required()))
    return plans


_PLANS = _plans()
_set = object.__setattr__


def fast_decode(payload: bytes, topic: str = "") -> Event:
    """A stored (already validated) payload as its model, without validating it again.

    Builds the instance the way pydantic's ``model_construct`` does, minus its per-field
    work: the payload was validated when the sink consumed it.  A payload of another schema
    version (or missing a required field) takes the validating path, with upcasting."""
    d = orjson.loads(payload)
    plan = _PLANS.get(d.get("kind", ""))
    if plan is None or d.get("schema_version") != plan.version or not plan.required <= d.keys():
        return decode(plan.topic if plan is not None else topic, payload)
    for name in plan.times:
        v = d.get(name)
        if isinstance(v, str):
            d[name] = datetime.fromisoformat(v)
    for name in plan.uuids:
        v = d.get(name)
        if isinstance(v, str):
            d[name] = UUID(v)
    if len(d) != len(plan.model.model_fields):
        d = {**plan.defaults, **d}
    obj = plan.model.__new__(plan.model)
    _set(obj, "__dict__", d)
    _set(obj, "__pydantic_fields_set__", set(d))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj  # type: ignore[return-value]


# -- the site fold ----------------------------------------------------------------------------

@dataclass
class SiteFold:
    """The site agents' states, folded from recorded events with their step functions."""

    settings: Settings
    energy: dict[str, energy.EnergyState] = field(default_factory=dict)
    scheduler: dict[str, scheduler.SchedulerState] = field(default_factory=dict)
    failover: dict[str, failover.FailoverState] = field(default_factory=dict)
    alerts: dict[str, alerts.AlertState] = field(default_factory=dict)
    compute: dict[str, compute.ComputeState] = field(default_factory=dict)
    events: int = 0
    _route_cache: dict[type, list[Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self._energy_p = energy_params(s)
        self._sched_p = scheduler_params(s)
        self._fail_p = failover.FailoverParams(
            local_pool_url=s.local_pool_url, down_after=s.uplink_down_after,
            hold_down_s=s.uplink_hold_down_s, ttl_s=s.command_ttl_s)
        self._alert_p = alert_params(s)
        self._gate_p = compute.GateParams(
            miner_id=s.compute_miner_id, pause_kw=s.gate_pause_kw, resume_kw=s.gate_resume_kw,
            hold_s=s.gate_hold_s, ttl_s=s.command_ttl_s)

    def feed(self, e: Event) -> None:
        """Fold one event into every site agent that reads it (as agents/workers.py routes)."""
        self.events += 1
        for fold in self._routes(type(e)):
            fold(e)

    def feed_ledger(self, e: Event) -> None:
        """Fold an old event into the long-lived state only: an ack into the scheduler's
        cycles and last-off/on, an operator's cap into the energy fold, a miner's last
        telemetry on its own pool into its home pool (``restore``)."""
        self.events += 1
        site = e.site
        if isinstance(e, CommandAcknowledged):
            scheduler.step(self.scheduler.setdefault(site, scheduler.SchedulerState()), e,
                           self._sched_p)
        elif isinstance(e, CapSiteLoad):
            energy.step(self.energy.setdefault(site, energy.EnergyState()), e, self._energy_p)
        elif isinstance(e, AsicTelemetryObserved):
            failover.step(self.failover.setdefault(site, failover.FailoverState()), e,
                          self._fail_p)

    def _routes(self, cls: type[Event]) -> list[Any]:
        routes = self._route_cache.get(cls)
        if routes is not None:
            return routes
        routes = []  # each agent's own input union (agents/*.py) decides, as in the worker
        if issubclass(cls, energy.EnergyInput):
            routes.append(lambda e: energy.step(
                self.energy.setdefault(e.site, energy.EnergyState()), e, self._energy_p))
        if issubclass(cls, scheduler.SchedulerInput):
            routes.append(lambda e: scheduler.step(
                self.scheduler.setdefault(e.site, scheduler.SchedulerState()), e,
                self._sched_p))
        if issubclass(cls, failover.FailoverInput):
            routes.append(lambda e: failover.step(
                self.failover.setdefault(e.site, failover.FailoverState()), e, self._fail_p))
        if issubclass(cls, compute.ComputeInput):
            routes.append(lambda e: compute.step(
                self.compute.setdefault(e.site, compute.ComputeState()), e, self._gate_p))
        if issubclass(cls, alerts.AlertInput):
            routes.append(lambda e: alerts.step(
                self.alerts.setdefault(e.site, alerts.AlertState()), e, self._alert_p))
        self._route_cache[cls] = routes
        return routes

    def tables(self) -> dict[str, dict[str, Any]]:
        """The durable state under the Faust tables' names and keys (``site/key``)."""
        out: dict[str, dict[str, Any]] = {"scheduler_asics": {}, "failover_home_pools": {},
                                          "alerts_firing": {}, "energy_caps": {},
                                          "compute_gate": {}}
        for site, s in self.scheduler.items():
            for d, a in s.asics.items():
                if (kept := a.durable()) is not None:
                    out["scheduler_asics"][f"{site}/{d}"] = kept
        for site, f in self.failover.items():
            for d, m in f.miners.items():
                if m.home:
                    out["failover_home_pools"][f"{site}/{d}"] = m.home
        for site, al in self.alerts.items():
            for k, v in al.firing.items():
                out["alerts_firing"][f"{site}/{k}"] = list(v)
        for site, en in self.energy.items():
            if en.cap_kw is not None:
                out["energy_caps"][f"{site}/cap"] = [en.cap_kw, min(en.cap_until, 1e18)]
        for site, c in self.compute.items():
            if c.paused:
                out["compute_gate"][site] = True
        return out


def rebuild(store: HistoryStore, settings: Settings, since: datetime, until: datetime,
            devices: Iterable[str] | None = None, strict: bool = False) -> SiteFold:
    """Fold [since, until) of the log through the site agents' step functions.

    The cyclic garbage collector is paused meanwhile: a fold allocates millions of small
    objects and frees them in order, which the collector would scan over and over (it
    halves decoding throughput); reference counting still frees them."""
    fold = SiteFold(settings)
    was = gc.isenabled()
    gc.disable()
    try:
        for topic, _, payload in read_log(store, since, until, SITE_TOPICS, devices):
            fold.feed(decode(topic, payload) if strict else fast_decode(payload, topic))
    finally:
        if was:
            gc.enable()
    return fold


def restore(store: HistoryStore, settings: Settings, until: datetime | None = None) -> SiteFold:
    """The durable site state as of ``until`` (default now), rebuilt from the log cheaply
    enough to run at a worker's start: everything of the last ``restore_window_s`` through
    every site agent (``rebuild``'s fold), preceded by what outlives that window, folded
    into the long-lived state only: every ack and operator cap before it (cycles,
    last-off/on, caps) and each miner's last telemetry on a pool of its own (home pools).
    Over a range the window covers, this is exactly ``rebuild``."""
    until = until or datetime.now(UTC)
    start = until - timedelta(seconds=settings.restore_window_s)
    fold = SiteFold(settings)
    db = store.database
    was = gc.isenabled()
    gc.disable()
    try:
        first = store.query(f"SELECT min(ts) FROM {db}.events WHERE topic IN "
                            f"('commands.acks', 'commands.site') AND ts < {{s:DateTime64(3, "
                            f"'UTC')}}", {"s": start})[0][0]
        if first is not None and first.year > 1970:
            for topic, _, payload in read_log(store, first, start,
                                              ("commands.acks", "commands.site"),
                                              chunk=timedelta(days=31)):
                fold.feed_ledger(fast_decode(payload, topic))
        homes = store.query(
            f"SELECT payload FROM {db}.events WHERE topic = 'asic.telemetry' AND ts < "
            f"{{s:DateTime64(3, 'UTC')}} AND (device_id, ts) IN (SELECT device_id, max(ts) "
            f"FROM {db}.asic_telemetry WHERE ts < {{s:DateTime64(3, 'UTC')}} AND pool_url "
            f"NOT IN ('', {{local:String}}) GROUP BY device_id) LIMIT 1 BY device_id",
            {"s": start, "local": settings.local_pool_url})
        for (payload,) in homes:
            fold.feed_ledger(fast_decode(payload.encode() if isinstance(payload, str)
                                         else payload, "asic.telemetry"))
        for topic, _, payload in read_log(store, start, until, SITE_TOPICS):
            fold.feed(fast_decode(payload, topic))
    finally:
        if was:
            gc.enable()
    return fold


# -- re-publishing ----------------------------------------------------------------------------

async def replay(store: HistoryStore, bootstrap: str, since: datetime, until: datetime, *,
                 topics: Iterable[str] | None = None, devices: Iterable[str] | None = None,
                 speed: float | None = None, prefix: str = "") -> int:
    """Re-publish [since, until) in event-time order; ``speed`` None = as fast as possible,
    else the recorded pace x ``speed``.  Returns the number of records sent."""
    from streams.publish import Publisher
    from streams.topics import ensure_topics

    if prefix:
        await ensure_topics(bootstrap, prefix=prefix)
    sent = 0
    t0_event: float | None = None
    t0_wall = time.monotonic()
    async with Publisher(bootstrap, client_id="hashplane-replay") as pub:
        pending: list[Any] = []
        rows = await asyncio.to_thread(lambda: list(read_log(store, since, until, topics,
                                                             devices)))
        for topic, device, payload in rows:
            if speed is not None:
                ts = datetime.fromisoformat(orjson.loads(payload)["ts"]).timestamp()
                t0_event = ts if t0_event is None else t0_event
                delay = (ts - t0_event) / speed - (time.monotonic() - t0_wall)
                if delay > 0:
                    await _drain(pending)
                    await asyncio.sleep(delay)
            pending.append(await pub.enqueue_raw(prefix + topic, payload, device.encode()))
            sent += 1
            if len(pending) >= 5_000:
                await _drain(pending)
        await _drain(pending)
    return sent


async def _drain(pending: list[Any]) -> None:
    if pending:
        await asyncio.gather(*pending)
        pending.clear()
