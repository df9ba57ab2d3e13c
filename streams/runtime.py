"""Running hashplane's services together: ``hashplane demo`` (embedded) and ``hashplane up``.

One process owns the history store (the sink and the API share its client, because the
in-process ClickHouse engine allows one owner per data directory).  The Faust worker runs as
a child process, as it would on its own host in production; the embedded broker is a child
process too.  With ``HASHPLANE_KAFKA_BOOTSTRAP`` and ``HASHPLANE_CLICKHOUSE_DSN`` pointing at a
cluster, ``up`` runs the same code with no embedded part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from api.app import create_api
from api.auth import generate_key
from connectors.synthetic import run_synthetic
from schemas.settings import Settings
from schemas.site import Site, dump_site
from streams.broker import BrokerError, EmbeddedBroker, free_port, port_in_use, wait_ready
from streams.history import HistoryStore
from streams.httpserve import QuietServer, serve_in_thread
from streams.publish import Publisher
from streams.sink import HistorySink
from streams.supervise import Supervisor, terminate
from streams.topics import ensure_topics

if TYPE_CHECKING:
    from connectors.gpu_backend import GpuBackend

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            # complex fields (lists) are JSON in the environment, as pydantic-settings reads them
            env[f"HASHPLANE_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, list | dict) else str(value))
    return env


@dataclass
class StackOptions:
    """What to run."""

    embedded_broker: bool = True
    kafka_port: int = 0
    synthetic_workers: int = 16
    synthetic_interval_s: float = 2.0
    worker: bool = True
    sink: bool = True
    api: bool = True
    duration_s: float | None = None
    farm: Any = None  # sim.farm.FarmConfig: start the simulated farm too
    endpoints_file: Path | None = None  # the demo: where the simulated farm's inventory goes
    site: Site | None = None  # `up --site`: the site inventory
    shard: tuple[int, int] = (0, 1)  # `up --shard i/n`: this box's share of the devices


@dataclass
class Stack:
    """Handles to what a running stack started (tests and the banner read them)."""

    settings: Settings
    store: HistoryStore | None = None
    sink: HistorySink | None = None
    broker: EmbeddedBroker | None = None
    api_url: str = ""
    farm: Any = None
    endpoints_file: Path | None = None
    connectors: dict[str, Any] = field(default_factory=dict)
    supervisor: Supervisor | None = None
    generated_key: bool = False


DEMO_CONNECTORS = frozenset({"asic", "asic-actuator", "local-pool", "meter", "power", "rigs",
                             "gpu-actuator", "models", "coordinator", "uplink", "alerts",
                             "price"})


def asic_endpoints(site: Site, environ: Mapping[str, str]) -> list[Any]:
    """The inventory's miners as connector endpoints, their credentials resolved."""
    from connectors.cgminer import AsicEndpoint

    out = []
    for a in site.asics:
        cred = site.credentials.get(a.credentials) if a.credentials else None
        out.append(AsicEndpoint(
            a.id, a.host, a.port, a.firmware, a.web_port,
            username=cred.username if cred else "",
            password=site.secret(cred.password_env, environ) if cred else "",
            nameplate_w=a.nameplate_w, model=a.model))
    return out


def nvml_backend(rig: Any) -> GpuBackend:
    """A rig's NVML: the driver's on this host (``nvml = "local"``), else its endpoint."""
    from connectors import gpu_backend, gpu_telemetry

    if rig.nvml == "local":
        return gpu_backend.LocalNvml(rig.nvml_library or None)
    return gpu_telemetry.HttpNvmlBackend(rig.nvml)


def site_connectors(settings: Settings, publisher: Publisher, site: Site,
                    names: frozenset[str] | None = None,
                    stats: dict[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None,
                    shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The connectors and actuators a site inventory describes (schemas/site.py; the one
    ``hashplane sim`` writes, or an operator's): name -> connector with ``run(stop)``.

    ``shard`` (i, n): only the devices of shard i (``Site.shard``); each shard's actuators
    then read the whole command topic in their own consumer group and skip the other
    shards' devices, and the local pool runs with shard 0."""
    environ = os.environ if environ is None else environ
    site = site.shard(*shard)
    sharded = shard[1] > 1
    group_tail = f"-shard{shard[0]}of{shard[1]}" if sharded else ""
    own_all = settings.actuators_own_site and not sharded
    from connectors import (
        cgminer,
        coordinator,
        gpu_telemetry,
        grid_meter,
        model_probe,
        mqtt_power,
        rainbowminer,
        uplink,
    )
    from connectors.base import Emitter

    def emitter(source: str) -> Emitter:
        e = Emitter(publisher, source=source, site=settings.site)
        if stats is not None:
            stats[source] = e.stats
        return e

    out: dict[str, Any] = {}
    if site.asics:
        eps = asic_endpoints(site, environ)
        out["asic"] = cgminer.AsicTelemetry(
            eps, emitter(cgminer.SOURCE), period_s=settings.asic_poll_s,
            concurrency=settings.asic_concurrency, timeout_s=settings.asic_timeout_s,
            local_pool_url=settings.local_pool_url)
        from connectors import stratum_pool

        if (where := stratum_pool.parse_pool_url(settings.local_pool_url)) and shard[0] == 0:
            out["local-pool"] = stratum_pool.LocalPool(
                where[0], where[1], emitter(stratum_pool.SOURCE),
                difficulty=settings.local_pool_difficulty, bind=settings.local_pool_bind)
        from connectors.asic_actuator import SOURCE as ASIC_ACT
        from connectors.asic_actuator import AsicActuator, SafetyLimits
        from connectors.commands import CommandConsumer

        actuator = AsicActuator(eps, timeout_s=settings.asic_timeout_s, limits=SafetyLimits(
            settings.asic_min_power_w, settings.asic_max_power_w,
            frozenset(settings.asic_maintenance)))
        out["asic-actuator"] = CommandConsumer(
            settings.kafka_bootstrap, "commands.asic",
            f"{settings.app_id}-asic-actuator{group_tail}", actuator.targets, actuator,
            emitter(ASIC_ACT), actuator=ASIC_ACT, concurrency=settings.asic_concurrency,
            timeout_s=settings.asic_timeout_s + 1.0, own_all=own_all,
            session_timeout_s=settings.worker_session_timeout_s * 3,
            journal=settings.data_dir / "actuators" / "asic.acked")
    if (m := site.meter) is not None:
        out["meter"] = grid_meter.GridMeter(
            m.host, m.port, emitter(grid_meter.SOURCE), meter_id=m.id, unit=m.unit,
            period_s=settings.meter_poll_s, rmap=m.registers())
    if (q := site.mqtt) is not None and site.feeds:
        maps = [mqtt_power.SensorMapping(
            topic=f.topic, feed_id=f.id, format=f.format,
            fields=f.fields or {k: k for k in mqtt_power.QUANTITIES}, scale=f.scale,
            nominal_voltage_v=f.nominal_voltage_v, capacity_kw=f.capacity_kw)
            for f in site.feeds]
        out["power"] = mqtt_power.PowerSensors(
            q.host, q.port, maps, emitter(mqtt_power.SOURCE), username=q.username or None,
            password=site.secret(q.password_env, environ) or None,
            tls=mqtt_power.tls_context(q.ca_file, q.client_cert, q.client_key) if q.tls
            else None)
    rigs = [rainbowminer.RigEndpoint(r.id, r.api_url, r.log_path) for r in site.rigs]
    if rigs:
        out["rigs"] = rainbowminer.RainbowMinerRigs(rigs, emitter(rainbowminer.SOURCE),
                                                    period_s=settings.rig_poll_s)
        if names is None or "gpu" in names:
            nvml: dict[str, GpuBackend] = {r.id: nvml_backend(r) for r in site.rigs if r.nvml}
            if nvml:
                out["gpu"] = gpu_telemetry.GpuTelemetry(nvml, emitter(gpu_telemetry.SOURCE),
                                                        period_s=settings.rig_poll_s)
    if rig_dirs := [r for r in site.rigs if r.config_dir and r.nvml]:
        from connectors import gpu_actuator
        from connectors.commands import CommandConsumer

        act = gpu_actuator.GpuActuator([gpu_actuator.Rig(
            r.id, Path(r.config_dir), r.api_url, nvml_backend(r))
            for r in rig_dirs])
        gpus = {rainbowminer.worker_name(r.id, g.index) for r in rig_dirs for g in r.gpus}
        out["gpu-actuator"] = CommandConsumer(
            settings.kafka_bootstrap, "commands.gpu",
            f"{settings.app_id}-gpu-actuator{group_tail}", gpus, act,
            emitter(gpu_actuator.SOURCE), actuator=gpu_actuator.SOURCE, concurrency=16,
            timeout_s=15.0, own_all=own_all,
            session_timeout_s=settings.worker_session_timeout_s * 3,
            journal=settings.data_dir / "actuators" / "gpu.acked")
    if models := [(m.name, m.url) for m in site.model_endpoints]:
        out["models"] = model_probe.ModelProbe(models, emitter(model_probe.SOURCE),
                                               period_s=settings.model_probe_s)
    if (co := site.coordinator) is not None:
        from connectors.commands import CommandConsumer

        em = emitter(coordinator.SOURCE)
        miner = coordinator.CoordinatorMiner(
            coordinator.CoordinatorClient(co.url, site.secret(co.api_key_env, environ)), em,
            miner_id=settings.compute_miner_id, wallet=settings.compute_wallet,
            poll_s=settings.compute_poll_s, rig_id=co.rig,
            max_slots=settings.compute_max_slots)
        cmds = CommandConsumer(settings.kafka_bootstrap, "commands.compute",
                               f"{settings.app_id}-compute-{settings.compute_miner_id}",
                               {settings.compute_miner_id, settings.site}, miner.obey, em,
                               actuator=coordinator.SOURCE,
                               session_timeout_s=settings.worker_session_timeout_s * 3,
                               journal=settings.data_dir / "actuators" / "compute.acked")
        out["coordinator"] = coordinator.ComputeMinerService(miner, cmds)
    if (u := site.uplink) is not None:
        out["uplink"] = uplink.UplinkProbe(u.url, emitter(uplink.SOURCE),
                                           period_s=settings.uplink_poll_s)
    if (pr := site.price) is not None:
        from connectors import power_price

        out["price"] = power_price.PriceFeed(pr, emitter(power_price.SOURCE),
                                             currency=settings.currency)
    if (settings.sms_to or settings.alert_webhooks) and shard[0] == 0:
        from connectors import alert_sinks

        sinks: list[Any] = [alert_sinks.Webhook(u) for u in settings.alert_webhooks]
        if settings.sms_to:
            sinks.append(alert_sinks.TwilioSms(
                settings.sms_to, settings.sms_from, settings.site,
                min_interval_s=settings.sms_min_interval_s, base_url=settings.twilio_base_url,
                policy=alert_sinks.SmsPolicy(
                    severities=frozenset(settings.sms_severities), rules=settings.sms_rules,
                    quiet=alert_sinks.parse_quiet_hours(settings.sms_quiet_hours),
                    timezone=settings.sms_timezone,
                    resolution_digest_s=settings.sms_resolution_digest_s)))
        out["alerts"] = alert_sinks.AlertDispatcher(
            settings.kafka_bootstrap, f"{settings.app_id}-alert-sinks", sinks,
            emitter(alert_sinks.SOURCE))
    return {k: v for k, v in out.items() if names is None or k in names}


def worker_lanes(settings: Settings) -> dict[str, str]:
    """The worker processes ``up`` runs, name -> lane: the control path's agents in one of
    their own and the rest in ``worker`` (``control_lane``), or every agent in ``worker``."""
    return {"worker-control": "control", "worker": "main"} if settings.control_lane \
        else {"worker": "all"}


def spawn_child(settings: Settings, args: list[str], log_path: Any = None,
                nice: int = 0) -> subprocess.Popen[bytes]:
    """Start ``hashplane ARGS`` with ``settings`` as a child process that dies with us (and
    inherits our environment: the inventory's secrets), at niceness ``nice``."""
    from streams.broker import die_with_parent

    out: Any = subprocess.DEVNULL
    if log_path is not None:
        out = open(log_path, "ab")

    def prepare() -> None:
        die_with_parent()
        if nice:
            os.nice(nice)

    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args],
                            env={**os.environ, **settings_env(settings)}, stdout=out,
                            stderr=subprocess.STDOUT, preexec_fn=prepare)


def spawn_worker(settings: Settings, log_path: Any = None,
                 lane: str = "all") -> subprocess.Popen[bytes]:
    """Start ``hashplane worker --lane LANE`` (the Faust agents) as a child process; the
    main lane's at ``main_lane_nice``."""
    return spawn_child(settings, ["worker", "--lane", lane], log_path,
                       settings.main_lane_nice if lane == "main" else 0)


def spawn_connector(settings: Settings, name: str, site_file: Path, log_path: Any = None,
                    shard: tuple[int, int] = (0, 1)) -> subprocess.Popen[bytes]:
    """Start ``hashplane connect NAME --site FILE`` as a child process."""
    shards = ["--shard", f"{shard[0]}/{shard[1]}"] if shard[1] > 1 else []
    return spawn_child(settings, ["connect", name, "--site", str(site_file), *shards],
                       log_path)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM a child, SIGKILL it if it has not exited after ``timeout_s``."""
    terminate(proc, timeout_s)


def supply_feeds(site: Site) -> list[str]:
    """The supply feed ids an inventory configures (energy waits for each of them)."""
    return [f.id for f in site.feeds]


async def run_stack(settings: Settings, opts: StackOptions,
                    stop: asyncio.Event | None = None, ready: asyncio.Event | None = None,
                    stack: Stack | None = None) -> Stack:
    """Start everything ``opts`` asks for, run until ``stop`` or the duration, stop cleanly.

    Every part is supervised (streams/supervise.py): a connector, the sink or the API that
    fails is restarted, so is the worker process when it exits and the embedded broker when
    it dies (it comes back empty on the same port; the sink and the worker recover)."""
    stop = stop or asyncio.Event()
    stack = stack or Stack(settings=settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(stop)
    stack.supervisor = sup
    publisher: Publisher | None = None
    server: QuietServer | None = None
    emitters: dict[str, Any] = {}  # connector source -> its counters, for /metrics
    try:
        port = 0
        if opts.api:
            port = settings.api_port or free_port(settings.api_host)
            if port_in_use(settings.api_host, port):
                raise RuntimeError(f"API port {settings.api_host}:{port} is already in use "
                                   f"(another hashplane?); pick one with --api-port")
            update: dict[str, Any] = {}
            if not settings.api_key and not settings.api_keys:
                # no key configured: one is generated for this run and shown in the banner
                update["api_key"] = generate_key()
                stack.generated_key = True
            if settings.embedded_history and not settings.state_url:
                # the worker restores the site state through the store's owner: this process
                update["state_url"] = f"http://{settings.api_host}:{port}"
            settings = settings.model_copy(update=update)
            stack.settings = settings
        if opts.embedded_broker:
            stack.broker = EmbeddedBroker(opts.kafka_port,
                                          log_file=settings.data_dir / "broker.log")
            await stack.broker.start()
            settings = settings.model_copy(update={"kafka_bootstrap": stack.broker.bootstrap})
            stack.settings = settings
        else:
            await wait_ready(settings.kafka_bootstrap, 30.0)
        await ensure_topics(settings.kafka_bootstrap, replication=settings.topic_replication)

        if opts.farm is not None:
            from sim.farm import Farm

            stack.farm = Farm(opts.farm)
            await stack.farm.start()
            for k, v in stack.farm.secrets().items():
                os.environ.setdefault(k, v)  # what an environment file gives `up`
            if opts.endpoints_file is not None:
                stack.farm.write_site(opts.endpoints_file)
                stack.endpoints_file = opts.endpoints_file
        devices = stack.farm.site() if stack.farm is not None else opts.site
        if devices is not None and not settings.supply_feeds:
            settings = settings.model_copy(update={"supply_feeds": supply_feeds(devices)})
            stack.settings = settings
        if opts.sink or opts.api:
            stack.store = HistoryStore(settings.history_dsn, settings.clickhouse_database)
            await asyncio.to_thread(_open_store, stack.store)
        if opts.worker:
            s_worker = settings
            for name, lane in worker_lanes(settings).items():
                log_path = settings.data_dir / f"{name}.log"
                sup.process(name, partial(spawn_worker, s_worker, log_path, lane))
        if opts.sink:
            assert stack.store is not None
            store = stack.store

            def new_sink() -> Any:
                stack.sink = HistorySink(settings, store)
                return stack.sink.run(stop)

            sup.task("history-sink", new_sink)
        if opts.synthetic_workers or devices is not None:
            publisher = Publisher(settings.kafka_bootstrap, client_id="hashplane-connectors")
            await publisher.start()
        if opts.synthetic_workers:
            assert publisher is not None
            pub = publisher
            sup.task("synthetic-source", lambda: run_synthetic(
                pub, stop, site=settings.site, workers=opts.synthetic_workers,
                interval_s=opts.synthetic_interval_s))
        if devices is not None:
            assert publisher is not None
            here = DEMO_CONNECTORS
            control = [n for n, present in (("meter", devices.meter is not None),
                                            ("asic-actuator", bool(devices.asics))) if present]
            if settings.control_process and control:
                # the control path's connectors in a process of their own, on the inventory
                # as this one has it (its secrets in the environment it inherits)
                here = here - set(control)
                site_file = settings.data_dir / "control.site.toml"
                site_file.parent.mkdir(parents=True, exist_ok=True)
                site_file.write_text(dump_site(devices, "# written by hashplane up for its "
                                                        "control connectors' process"))
                sup.process("control-connectors", partial(
                    spawn_connector, settings, ",".join(control), site_file,
                    settings.data_dir / "control-connectors.log", opts.shard))
            # NVML telemetry would repeat what RainbowMiner reports: not in the demo.
            stack.connectors = site_connectors(settings, publisher, devices, here,
                                               emitters, shard=opts.shard)
        for name, conn in stack.connectors.items():
            sup.task(f"connector-{name}", partial(conn.run, stop))
        if opts.api:
            assert stack.store is not None
            api_store = stack.store

            def new_api() -> Any:
                nonlocal server
                sink = stack.sink
                server = QuietServer(uvicorn.Config(
                    create_api(settings, api_store, connector_stats=lambda: emitters,
                               sink_stats=lambda: sink.stats if sink is not None else None,
                               outbox_stats=lambda: publisher.stats if publisher else None),
                    host=settings.api_host, port=port, log_level="warning", lifespan="on"))
                return serve_in_thread(server)

            api = sup.task("api", new_api)
            stack.api_url = f"http://{settings.api_host}:{port}"
        if opts.api:
            while server is None or not server.started:
                if stop.is_set():
                    break
                if api.running.done() and api.running.exception():
                    raise api.running.exception()
                await asyncio.sleep(0.05)
        if ready is not None:
            ready.set()
        await _wait(stop, sup, opts.duration_s, stack)
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        await sup.shutdown()
        if publisher is not None:
            await publisher.stop()
        if stack.farm is not None:
            await stack.farm.stop()
        if stack.store is not None:
            stack.store.close()
        if stack.broker is not None:
            await stack.broker.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
    return stack


def _open_store(store: HistoryStore) -> None:
    try:
        store.open().migrate()
    except Exception as exc:
        raise RuntimeError(
            f"cannot open the history store {store.dsn}: {exc}. An embedded (chdb) directory "
            f"has one owner process: stop the other hashplane using it or pick another "
            f"--data-dir.") from exc


async def _wait(stop: asyncio.Event, sup: Supervisor, duration_s: float | None,
                stack: Stack) -> None:
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return
        await sup.check()
        if stack.broker is not None and not stack.broker.running() and not stop.is_set():
            log.error("the embedded broker exited; restarting it on %s (memory storage: it "
                      "comes back empty; producers retry, the sink and the worker recover)",
                      stack.broker.bootstrap)
            try:
                await stack.broker.restart()
                await ensure_topics(stack.broker.bootstrap,
                                    replication=stack.settings.topic_replication)
            except (BrokerError, OSError) as exc:
                log.error("broker restart failed: %s", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
