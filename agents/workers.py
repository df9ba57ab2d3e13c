"""Faust wiring: thin agents around the pure step functions (STYLE.md 1-2).

Two kinds of agents:

* **Partitioned** agents fold per-device state on the contract topics' own partitions and
  scale out with them: ``share_ratio`` (worker and device ratios) and ``endpoint_scores``.
* **Site** agents fold a whole site (supply, load, the fleet, the firing alerts), which needs
  every partition of several topics in one place.  ``site_feed`` forwards the records of
  the partitioned topics they read, validated and unchanged, to the single-partition
  internal topic ``hashplane.site-feed`` (the source topic rides in a header); the site
  agents read it together with the contract's single-partition topics (grid, feeds,
  uplink, energy).  Control-path records (meter -> energy -> scheduler) never take the
  forwarding hop.

Site agents keep their working state in memory (latest readings, open windows: rebuilt
from live data within one poll period after a restart) and persist what must survive a
restart in Faust tables (changelog-backed): each ASIC's cycles and last-off/on, each miner's
home pool, the firing alerts, the compute gate.  Only changed keys are written.

Each ``register_*`` takes an optional ``publish`` coroutine; by default it sends on the
registry topic of the event.  Agent tests pass a recorder instead of a broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import faust

from agents import alerts, compute, energy, failover, rewards, scheduler, share_ratio, tuning
from schemas.commands import CapSiteLoad, CommandAcknowledged
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    ComputeJobChanged,
    EndpointHealthObserved,
    GpuTelemetryObserved,
    ShareCountsObserved,
    UplinkStatusObserved,
)
from schemas.metrics import EnergyHeadroomComputed, ShareRatioComputed
from schemas.registry import TOPICS, topic, topic_of
from streams.app import TOPIC_HEADER, create_app, decoded, raw_topic, send
from streams.codec import encode
from streams.settings import Settings
from streams.topics import SITE_FEED

Publish = Callable[[Event], Awaitable[None]]

#: contract topics the site agents need from the partitioned side, forwarded by site_feed
FEED_SOURCES = ("asic.telemetry", "gpu.telemetry", "shares", "commands.acks", "compute.jobs",
                "metrics.shares", "dlq")


def topic_publisher(app: faust.App) -> Publish:
    """Publish an event on its registry topic through the app's producer."""
    topics = {spec.name: raw_topic(app, spec.name) for spec in TOPICS}

    async def publish(event: Event) -> None:
        await send(topics[topic_of(type(event)).name], event)

    return publish


async def publish_all(publish: Publish, events: Iterable[Event]) -> None:
    """Send a step's outputs in order."""
    for e in events:
        await publish(e)


def site_channel(app: faust.App, *topics: str) -> faust.TopicT:
    """The single-partition channel of a site agent: the site feed plus ``topics``."""
    return app.topic(SITE_FEED, *topics, key_serializer="raw", value_serializer="raw")


def _restore_once(loaded: set[str], site: str, table: Any,
                  load: Callable[[str, Any], None]) -> None:
    """Load a site's persisted keys (``site/key``) from a table on its first event."""
    if site in loaded:
        return
    loaded.add(site)
    prefix = f"{site}/"
    for k, v in list(table.items()):
        if isinstance(k, str) and k.startswith(prefix) and v is not None:
            load(k[len(prefix):], v)


# -- partitioned agents ---------------------------------------------------------------------

def register_share_ratio(app: faust.App, settings: Settings,
                         publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Worker and device share ratios over every window length -> metrics.shares.

    A worker's state lives on its device's partition: a worker name shared by several
    devices is aggregated at pool and site scope, not here."""
    publish = publish or topic_publisher(app)
    state = app.Table("share_ratio_devices", default=lambda: None,
                      partitions=topic("shares").partitions)
    kw: dict[str, Any] = {"windows": tuple(settings.share_windows_s),
                          "grace_s": settings.share_grace_s, "update_s": settings.share_update_s}

    @app.agent(raw_topic(app, "shares"), name="share_ratio")
    async def share_ratio_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, "shares", publish, settings.site, share_ratio.SOURCE):
            assert isinstance(event, ShareCountsObserved)
            msg = stream.current_event.message if stream.current_event else None
            position = (msg.partition, msg.offset) if msg is not None else None
            # one table entry per device (its partition's key) holds both scopes' state
            saved = state[event.device_id] or {}
            changed = {}
            for scope in ("worker", "device"):
                subject = share_ratio.SUBJECTS[scope](event)
                key = f"{scope}/{subject}"
                before = share_ratio.SubjectState.from_primitive(saved.get(key))
                s, metrics = share_ratio.step(before, event, scope=scope, subject=subject,
                                              position=position, **kw)
                if s is not before:
                    changed[key] = s.to_primitive()
                await publish_all(publish, metrics)
            if changed:
                state[event.device_id] = {**saved, **changed}

    return share_ratio_agent


def register_endpoint_scores(app: faust.App, settings: Settings,
                             publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Seed-004 score of every model endpoint probe -> metrics.rewards."""
    publish = publish or topic_publisher(app)

    @app.agent(raw_topic(app, "compute.health"), name="endpoint_scores")
    async def endpoint_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, "compute.health", publish, settings.site,
                                   compute.SOURCE):
            assert isinstance(event, EndpointHealthObserved)
            await publish(compute.endpoint_metric(event))

    return endpoint_agent


Forward = Callable[[bytes, bytes, dict[str, bytes]], Awaitable[Any]]


def register_site_feed(app: faust.App, settings: Settings, publish: Publish | None = None,
                       forward: Forward | None = None) -> faust.types.AgentT[Any]:
    """Forward the partitioned topics the site agents read to the site feed (validated;
    undecodable records go to dlq here, once)."""
    publish = publish or topic_publisher(app)
    feed = app.topic(SITE_FEED, key_serializer="raw", value_serializer="raw")

    async def to_feed(key: bytes, value: bytes, headers: dict[str, bytes]) -> Any:
        return await feed.send(key=key, value=value, headers=headers)

    forward = forward or to_feed
    channel = app.topic(*FEED_SOURCES, key_serializer="raw", value_serializer="raw")

    @app.agent(channel, name="site_feed")
    async def site_feed_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, "agent:site_feed"):
            if isinstance(event, ShareRatioComputed) and not (
                    event.scope == "worker" and event.final and event.window_s == 60):
                continue  # alerts read closed 1-minute worker windows only
            name = topic_of(type(event)).name
            await forward(event.site.encode(), encode(event), {TOPIC_HEADER: name.encode()})

    return site_feed_agent


# -- site agents ----------------------------------------------------------------------------

def register_site_shares(app: faust.App, settings: Settings,
                         publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Pool and site share ratios, and seed-000 rewards -> metrics.shares, metrics.rewards."""
    publish = publish or topic_publisher(app)
    ratios: dict[str, share_ratio.SubjectState] = {}
    rewarding: dict[str, rewards.RewardState] = {}
    windows = tuple(settings.share_windows_s)
    kw: dict[str, Any] = {"windows": windows, "grace_s": settings.share_grace_s,
                          "update_s": settings.share_update_s}

    @app.agent(site_channel(app), name="site_shares")
    async def site_shares_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, rewards.SOURCE):
            if not isinstance(event, ShareCountsObserved | GpuTelemetryObserved):
                continue
            r = rewarding.setdefault(event.site, rewards.RewardState())
            _, out = rewards.step(r, event, windows=windows, grace_s=settings.share_grace_s,
                                  temp_max_c=settings.reward_temp_max_c)
            await publish_all(publish, out)
            if isinstance(event, ShareCountsObserved):
                for scope in ("pool", "site"):
                    subject = share_ratio.SUBJECTS[scope](event)
                    key = f"{event.site}/{scope}/{subject}"
                    ratios[key], metrics = share_ratio.step(
                        ratios.get(key, share_ratio.SubjectState()), event, scope=scope,
                        subject=subject, **kw)
                    await publish_all(publish, metrics)

    return site_shares_agent


def energy_params(s: Settings) -> energy.EnergyParams:
    """Headroom configuration from Settings."""
    return energy.EnergyParams(
        margin_kw=s.energy_margin_kw, bands_50hz=tuple(s.bands_50hz),
        bands_60hz=tuple(s.bands_60hz), hysteresis_hz=s.band_hysteresis_hz, hold_s=s.band_hold_s,
        feed_stale_s=s.feed_stale_s, device_stale_s=s.device_stale_s, emit_s=s.energy_emit_s,
        feeds=tuple(s.supply_feeds), meter_stale_s=s.meter_stale_s)


def register_energy(app: faust.App, settings: Settings,
                    publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Supply, load, headroom and the demand-response target -> metrics.energy; operators'
    load caps (commands.site) -> their acks, kept in table ``energy_caps``."""
    publish = publish or topic_publisher(app)
    p = energy_params(settings)
    table = app.Table("energy_caps", default=lambda: None, partitions=1)
    states: dict[str, energy.EnergyState] = {}
    loaded: set[str] = set()

    def load(s: energy.EnergyState, _: str, v: Any) -> None:
        s.cap_kw, s.cap_until = v[0], float(v[1])

    started: list[float] = []

    def held(o: EnergyHeadroomComputed, now: datetime) -> bool:
        """Whether a headroom is withheld: the live agent's guard, not the fold's rule.

        After a (re)start the agent folds a backlog whose partitions arrive out of event-time
        step (one feed's partition read to the present while another's is still seconds
        behind): supply and load folded that way are short, and a scheduler acting on them
        would shed or wake ASICs for nothing.  Nothing is published for ``energy_warmup_s``
        after the first event, nor from a reading older than ``energy_max_age_s``; the
        scheduler keeps its plan meanwhile, as when the supply is unknown."""
        if asyncio.get_running_loop().time() - started[0] < settings.energy_warmup_s:
            return True
        age = (now - o.ts).total_seconds()
        return settings.energy_max_age_s > 0 and age > settings.energy_max_age_s

    @app.agent(site_channel(app, "grid.readings", "power.readings", "commands.site"),
               name="energy")
    async def energy_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, energy.SOURCE):
            if not isinstance(event, energy.EnergyInput):
                continue
            if not started:
                started.append(asyncio.get_running_loop().time())
            s = states.setdefault(event.site, energy.EnergyState())
            _restore_once(loaded, event.site, table, partial(load, s))
            before = (s.cap_kw, s.cap_until)
            _, out = energy.step(s, event, p)
            if (s.cap_kw, s.cap_until) != before:
                table[f"{event.site}/cap"] = [s.cap_kw, min(s.cap_until, 1e18)]
            now = datetime.now(UTC)
            await publish_all(publish, [
                o.model_copy(update={"latency_ms": max(
                    0.0, (now - event.issued_at).total_seconds() * 1000.0)})
                if isinstance(o, CommandAcknowledged) and isinstance(event, CapSiteLoad) else o
                for o in out if not (isinstance(o, EnergyHeadroomComputed) and held(o, now))])

    return energy_agent


def scheduler_params(s: Settings) -> scheduler.SchedulerParams:
    """Scheduler configuration from Settings."""
    return scheduler.SchedulerParams(
        min_on_s=s.sched_min_on_s, min_off_s=s.sched_min_off_s,
        hysteresis_kw=s.sched_hysteresis_kw, wake_batch=s.sched_wake_batch,
        wake_interval_s=s.sched_wake_interval_s, default_kw=s.asic_default_w / 1000.0,
        ttl_s=s.command_ttl_s)


def register_scheduler(app: faust.App, settings: Settings,
                       publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Sleep and wake ASICs to the target load -> commands.asic.

    The commands in flight are written to the table before the commands go out (the
    producer is flushed in between): a worker killed right after a decision restarts
    knowing what it had sent, and does not send it again."""
    flush = app.producer.flush if publish is None else None
    publish = publish or topic_publisher(app)
    p = scheduler_params(settings)
    table = app.Table("scheduler_asics", default=lambda: None, partitions=1)
    states: dict[str, scheduler.SchedulerState] = {}
    loaded: set[str] = set()

    @app.agent(site_channel(app, "metrics.energy"), name="scheduler")
    async def scheduler_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, scheduler.SOURCE):
            if not isinstance(event, EnergyHeadroomComputed | AsicTelemetryObserved
                              | CommandAcknowledged):
                continue
            s = states.setdefault(event.site, scheduler.SchedulerState())
            _restore_once(loaded, event.site, table, partial(scheduler.restore, s))
            _, out = scheduler.step(s, event, p)
            for d in s.dirty:
                table[f"{event.site}/{d}"] = s.asics[d].durable()
            s.dirty.clear()
            if out and flush is not None:
                await flush()  # the intent is durable before the action
            await publish_all(publish, out)

    return scheduler_agent


def register_failover(app: faust.App, settings: Settings,
                      publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Local-pool failover on uplink loss, and back after the hold-down -> commands.asic."""
    publish = publish or topic_publisher(app)
    p = failover.FailoverParams(local_pool_url=settings.local_pool_url,
                                down_after=settings.uplink_down_after,
                                hold_down_s=settings.uplink_hold_down_s,
                                ttl_s=settings.command_ttl_s)
    table = app.Table("failover_home_pools", default=lambda: None, partitions=1)
    states: dict[str, failover.FailoverState] = {}
    loaded: set[str] = set()

    def load(s: failover.FailoverState, device: str, home: Any) -> None:
        s.miners.setdefault(device, failover.Miner()).home = str(home)

    @app.agent(site_channel(app, "uplink.status"), name="failover")
    async def failover_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, failover.SOURCE):
            if not isinstance(event, UplinkStatusObserved | AsicTelemetryObserved
                              | CommandAcknowledged):
                continue
            s = states.setdefault(event.site, failover.FailoverState())
            _restore_once(loaded, event.site, table, partial(load, s))
            _, out = failover.step(s, event, p)
            for d in s.dirty:
                table[f"{event.site}/{d}"] = s.miners[d].home
            s.dirty.clear()
            await publish_all(publish, out)

    return failover_agent


def register_compute(app: faust.App, settings: Settings,
                     publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Compute gate and seed-001 GPU scores -> commands.compute, metrics.rewards."""
    publish = publish or topic_publisher(app)
    p = compute.GateParams(miner_id=settings.compute_miner_id, pause_kw=settings.gate_pause_kw,
                           resume_kw=settings.gate_resume_kw, hold_s=settings.gate_hold_s,
                           ttl_s=settings.command_ttl_s)
    table = app.Table("compute_gate", default=lambda: None, partitions=1)
    states: dict[str, compute.ComputeState] = {}

    @app.agent(site_channel(app, "metrics.energy"), name="compute")
    async def compute_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, compute.SOURCE):
            if not isinstance(event, EnergyHeadroomComputed | GpuTelemetryObserved
                              | ComputeJobChanged):
                continue
            if event.site not in states:
                states[event.site] = compute.ComputeState(paused=bool(table[event.site]))
            s = states[event.site]
            was = s.paused
            _, out = compute.step(s, event, p)
            if s.paused != was:
                table[event.site] = s.paused
            await publish_all(publish, out)

    return compute_agent


def alert_params(s: Settings) -> alerts.AlertParams:
    """Alert thresholds from Settings."""
    return alerts.AlertParams(
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


def register_alerts(app: faust.App, settings: Settings,
                    publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Alert rules -> alerts (fired, escalated, resolved)."""
    publish = publish or topic_publisher(app)
    p = alert_params(settings)
    table = app.Table("alerts_firing", default=lambda: None, partitions=1)
    states: dict[str, alerts.AlertState] = {}
    loaded: set[str] = set()

    def load(s: alerts.AlertState, key: str, v: Any) -> None:
        s.firing[key] = (str(v[0]), str(v[1]), float(v[2]))

    @app.agent(site_channel(app, "grid.readings", "power.readings", "uplink.status",
                            "metrics.energy"), name="alerts")
    async def alerts_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, alerts.SOURCE):
            if not isinstance(event, alerts.AlertInput):
                continue
            s = states.setdefault(event.site, alerts.AlertState())
            _restore_once(loaded, event.site, table, partial(load, s))
            _, out = alerts.step(s, event, p)
            for k in s.dirty:
                table[f"{event.site}/{k}"] = list(s.firing[k]) if k in s.firing else None
            s.dirty.clear()
            await publish_all(publish, out)

    return alerts_agent


def tuner_params(s: Settings) -> tuning.TunerParams:
    """Online tuning configuration from Settings."""
    return tuning.TunerParams(
        trials=s.tuner_trials, settle_s=s.tuner_settle_s, window_s=s.tuner_window_s,
        max_step=s.tuner_max_step, temp_max_c=s.reward_temp_max_c,
        reject_max_pct=s.tuner_reject_max_pct, ttl_s=max(s.command_ttl_s, 30.0),
        optimizer=s.tuner_optimizer)


def register_tuner(app: faust.App, settings: Settings,
                   publish: Publish | None = None) -> faust.types.AgentT[Any]:
    """Online GPU tuning of ``tuner_gpus`` -> commands.gpu, metrics.rewards (trials)."""
    from agents import optimizers

    publish = publish or topic_publisher(app)
    p = tuner_params(settings)
    devices = frozenset(settings.tuner_gpus)
    prior = checkpoint_prior(settings.tuner_checkpoint)
    opts: dict[str, optimizers.Optimizer] = {}

    def propose(family: str, history: list[tuning.Observation]) -> list[float]:
        if family not in opts:
            opts[family] = optimizers.make(p.optimizer, seed=len(opts),
                                           prior=prior.get(family, ()),
                                           temp_max_c=p.temp_max_c,
                                           reject_max_pct=p.reject_max_pct)
        return opts[family].propose(history)

    states: dict[str, tuning.TunerState] = {}

    @app.agent(site_channel(app), name="tuner")
    async def tuner_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, tuning.SOURCE):
            s = states.setdefault(event.site, tuning.TunerState())
            if isinstance(event, ShareCountsObserved):  # every worker's: the cluster term
                if s.gpus:
                    tuning.step(s, event, devices, propose, p)  # counting only: no proposal
                continue
            # only what concerns a GPU in tuning mode reaches the fold (and its thread hop)
            if not (isinstance(event, GpuTelemetryObserved | CommandAcknowledged)
                    and event.device_id in devices):
                continue
            # a proposal fits a GP (~1 s): off the event loop, the fold itself unchanged
            _, out = await asyncio.to_thread(tuning.step, s, event, devices, propose, p)
            await publish_all(publish, out)

    return tuner_agent


def checkpoint_prior(path: str) -> dict[str, list[tuning.Observation]]:
    """Warm-start observations per card family from a trained checkpoint ('' = none)."""
    if not path:
        return {}
    from agents.tuner_training import load_checkpoint

    return load_checkpoint(path).observations


AGENTS = (register_share_ratio, register_endpoint_scores, register_site_feed,
          register_site_shares, register_energy, register_scheduler, register_failover,
          register_compute, register_alerts)


def build_app(settings: Settings, watchdog_s: float = 2.0) -> faust.App:
    """The worker app with every agent registered, and the changelog watchdog (the broker
    may lose the tables' changelogs under a running worker: streams/restore.py)."""
    from streams.restore import ChangelogWatchdog

    app = create_app(settings)
    for register in AGENTS:
        register(app, settings)
    if settings.tuner_gpus:  # a stream costs every site-feed event: only when tuning
        register_tuner(app, settings)
    if watchdog_s > 0:
        watchdog = ChangelogWatchdog(app, settings)

        @app.timer(watchdog_s, on_leader=False)  # type: ignore[untyped-decorator]
        async def changelog_watchdog() -> None:
            await watchdog.check()
    return app
