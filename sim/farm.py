"""The simulated site: every device on real sockets, one clock, scenarios, an endpoints file.

``Farm(config).start()`` brings up: N ASICs (LuxOS RPC on their own loopback address, port
4028), GPU rigs (RainbowMiner API + Config dir + simulated NVML), the grid meter (Modbus TCP),
the supply feeds' sensors (MQTT, an embedded broker unless one is given), the job coordinator
(seed 002), model endpoints (seed 004), the uplink check endpoint and the upstream Stratum
pool.  ``endpoints()`` describes them all; ``site()`` is the same as a site inventory
(schemas/site.py), which ``hashplane sim --site-file`` writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from sim.antminer import AntminerApi, AntminerWeb, serve_web
from sim.asgi import WebDevice
from sim.asic import MODELS, PoolSlot, SimAsic
from sim.braiins import BraiinsApi
from sim.cgminer import CgminerApi, serve_rpc
from sim.clock import SimClock
from sim.coordinator import CoordinatorState, coordinator_app
from sim.feeds import Feed, encode, feed_readings, start_embedded_broker
from sim.http1 import serve_http
from sim.luxos import LuxosApi
from sim.market import PowerMarket, market_app
from sim.meter import GridModel, MeterServer
from sim.model_endpoints import ModelEndpoint, model_app
from sim.nvml import SimNvml
from sim.pool import UpstreamPool
from sim.rainbowminer import SimRig, make_rig
from sim.rig_api import rig_app
from sim.scenarios import SCENARIOS
from sim.stratum import MinerSession
from sim.vnish import VnishApi, VnishWeb
from sim.whatsminer import WhatsminerApi

log = logging.getLogger(__name__)

ASIC_MIX = ("S19j Pro", "S19j Pro", "S19 XP", "S21", "S19j Pro", "S21 Pro", "S19 XP", "S21",
            "S19j Pro", "S21")
#: The API each simulated firmware speaks (its RPC; Antminer stock adds its web UI).
FIRMWARE_APIS: dict[str, type[CgminerApi]] = {
    "luxos": LuxosApi, "braiins": BraiinsApi, "antminer": AntminerApi,
    "whatsminer": WhatsminerApi, "vnish": VnishApi}
#: What each firmware runs on: Whatsminer firmware on MicroBT hardware, the rest on Antminers.
WHATSMINER_MODELS = ("M30S++",)
RIG_CARDS = ("RTX 3090", "RTX 4090", "A100", "H100")
AUX_LOAD_FRACTION = 0.04  # cooling fans, network, control: a few % of the IT load


@dataclass
class FarmConfig:
    """What the simulated site contains."""

    site: str = "site-1"
    asics: int = 160
    asic_base_ip: str = "127.0.1.1"
    asic_port: int = 4028
    asic_web_port: int = 8080  # Antminer stock's web UI (80 on a real miner; 80 needs root)
    #: firmware -> share of the fleet, e.g. {"luxos": 1, "braiins": 1} (None: all LuxOS)
    firmware_mix: dict[str, int] | None = None
    gpu_rigs: int = 4
    gpus_per_rig: int = 8
    nominal_hz: float = 50.0
    #: the register map the meter serves (schemas.site.REGISTER_MAPS)
    meter_map: str = "ieee754-float"
    speed: float = 1.0
    seed: int = 7
    data_dir: Path = Path("var/sim")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 0  # 0 = start an embedded broker on a free port
    mqtt_external: bool = False
    model_endpoints: int = 3
    coordinator_api_key: str = "hp-miner-key"
    #: whether the inventory names the coordinator (its jobs run on the stack's own host:
    #: an ASIC-only benchmark leaves it out)
    coordinator: bool = True
    feed_headroom: float = 1.25  # total feed capacity / full load
    tick_s: float = 1.0  # simulated seconds between sensor publications
    scenario: str | None = None
    scenario_delay_s: float = 0.0  # added to every step time


@dataclass
class Farm:
    """A running simulated site."""

    config: FarmConfig
    clock: SimClock = field(default_factory=SimClock)
    asics: list[SimAsic] = field(default_factory=list)
    rigs: list[SimRig] = field(default_factory=list)
    feeds: list[Feed] = field(default_factory=list)
    feed_capacity0: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    uplink_up: bool = True
    market: PowerMarket = field(default_factory=PowerMarket)

    def __post_init__(self) -> None:
        c = self.config
        self.clock = SimClock(c.speed)
        self.rng = random.Random(c.seed)
        self.grid = GridModel(nominal_hz=c.nominal_hz, seed=c.seed)
        self.pool = UpstreamPool()
        self.meter = MeterServer(self.grid, load_kw=self.load_kw, clock=self.t,
                                 register_map=c.meter_map)
        self.coordinator = CoordinatorState(api_keys={c.coordinator_api_key})
        self.models = [ModelEndpoint(f"sim-llm-{i + 1}", latency_ms=150 + 150 * i,
                                     failure_rate=0.01 + 0.03 * i, quality=0.95 - 0.15 * i,
                                     seed=c.seed + i) for i in range(c.model_endpoints)]
        self._servers: list[asyncio.Server] = []
        self._http: list[WebDevice] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._broker: Any = None
        self.uplink_http: WebDevice | None = None
        self.market_http: WebDevice | None = None
        self.sessions: dict[int, MinerSession] = {}
        self._running = True

    def t(self) -> float:
        """Simulated seconds since the farm started."""
        return self.clock.elapsed()

    # -- build ------------------------------------------------------------------------

    def _build(self) -> None:
        c = self.config
        base = ipaddress.IPv4Address(c.asic_base_ip)
        firmwares = firmware_sequence(c.firmware_mix or {"luxos": 1}, c.asics)
        for i, fw in enumerate(firmwares):
            model = MODELS[WHATSMINER_MODELS[i % len(WHATSMINER_MODELS)] if fw == "whatsminer"
                           else ASIC_MIX[i % len(ASIC_MIX)]]
            pools = [PoolSlot(self.pool.url, f"hashplane.asic{i + 1:05d}")]
            self.asics.append(SimAsic(index=i, host=str(base + i), model=model, pools=pools,
                                      seed=c.seed, firmware=fw))
        for r in range(c.gpu_rigs):
            cards = [RIG_CARDS[r % len(RIG_CARDS)]] * c.gpus_per_rig
            rig = make_rig(r, c.data_dir / "rigs" / f"rig{r + 1:02d}", cards, seed=c.seed)
            rig.init_files()
            self.rigs.append(rig)
        full_kw = self.load_kw(full=True)
        cap = full_kw * c.feed_headroom
        self.feeds = [Feed("feed-a", round(cap * 0.6, 1)), Feed("feed-b", round(cap * 0.4, 1))]
        self.feed_capacity0 = {f.feed_id: f.capacity_kw for f in self.feeds}

    def load_kw(self, full: bool = False) -> float:
        """Site load now: ASICs + GPUs + auxiliaries."""
        t = self.t()
        it: float
        if full:
            it = sum(a.current_profile().watts for a in self.asics)
            it += sum(g.card.pl_default_w for r in self.rigs for g in r.gpus)
        else:
            it = sum(a.power_w(t) for a in self.asics)
            it += sum(g.power_w() for r in self.rigs for g in r.gpus)
        return it * (1 + AUX_LOAD_FRACTION) / 1000.0

    def pool_alive(self, url: str) -> bool:
        """Can a miner reach this pool? The upstream one only while the uplink is up."""
        return self.uplink_up or not url.startswith(self.pool.url)

    # -- run --------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        c.data_dir.mkdir(parents=True, exist_ok=True)
        await self.pool.start()
        self._build()
        await self._start_asics()
        for rig in self.rigs:
            svc = WebDevice(rig_app(rig, self.t, SimNvml(rig, self.t)))
            await svc.start()
            rig.api_url = svc.url
            self._http.append(svc)
        await self.meter.start()
        if not c.mqtt_external:
            c.mqtt_port = c.mqtt_port or _free_port(c.mqtt_host)
            self._broker = await start_embedded_broker(c.mqtt_host, c.mqtt_port)
        self.coordinator_http = WebDevice(coordinator_app(self.coordinator, self.clock.now))
        await self.coordinator_http.start()
        self._http.append(self.coordinator_http)
        self.model_http = []
        for ep in self.models:
            svc = WebDevice(model_app(ep, self.clock.now))
            await svc.start()
            self.model_http.append(svc)
            self._http.append(svc)
        self.uplink_http = WebDevice(_uplink_app())
        await self.uplink_http.start()
        self.market_http = WebDevice(market_app(self.market))
        await self.market_http.start()
        self._http.append(self.market_http)
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="farm-tick"))
        if c.scenario:
            self._tasks.append(asyncio.create_task(self.run_scenario(c.scenario)))
        log.info("simulated farm up: %d ASICs, %d rigs, meter %s:%d, MQTT %s:%d",
                 len(self.asics), len(self.rigs), self.meter.host, self.meter.port,
                 c.mqtt_host, c.mqtt_port)

    async def _start_asics(self) -> None:
        sem = asyncio.Semaphore(256)
        self.apis: dict[str, Any] = {}  # host -> the RPC state of that miner
        web: list[asyncio.Server] = []

        async def one(a: SimAsic) -> asyncio.Server:
            async with sem:
                api = self.apis[a.host] = FIRMWARE_APIS[a.firmware](
                    a, self.t, pool_alive=self.pool_alive)
                try:
                    if isinstance(api, VnishApi):
                        web.append(await serve_http(VnishWeb(api).route, a.host,
                                                    self.config.asic_web_port))
                    elif isinstance(api, AntminerApi):
                        web.append(await serve_web(AntminerWeb(api), a.host,
                                                   self.config.asic_web_port))
                    return await serve_rpc(api, a.host, self.config.asic_port)
                except OSError as exc:
                    raise OSError(
                        f"cannot listen on {a.host}:{self.config.asic_port} for ASIC "
                        f"{a.index + 1}: {exc.strerror or exc}. Another simulated farm on "
                        f"these addresses? Choose others with --asic-base-ip.") from exc

        self._servers = list(await asyncio.gather(*(one(a) for a in self.asics))) + web

    async def stop(self) -> None:
        self._running = False
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # Bounded: a library that swallows a cancellation must not hang the shutdown.
            await asyncio.wait(self._tasks, timeout=5)
        for sess in list(self.sessions.values()):
            await sess.stop()
        for s in self._servers:
            s.close()
        for svc in self._http:
            await svc.stop()
        if self.uplink_http is not None:
            await self.uplink_http.stop()
        await self.meter.stop()
        await self.pool.stop()
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.shutdown()

    async def _tick_loop(self) -> None:
        import aiomqtt

        c = self.config
        while self._running:
            try:
                async with aiomqtt.Client(c.mqtt_host, c.mqtt_port,
                                          identifier=f"hashplane-sim-{c.site}") as mqtt:
                    while self._running:
                        await self._tick(mqtt)
                        await self.clock.sleep(c.tick_s)
            except aiomqtt.MqttError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # stopping: aiomqtt replaced it
                log.warning("sim MQTT publisher: %s; reconnecting", exc)
                await asyncio.sleep(1.0)

    async def _supervise_sessions(self) -> None:
        """Open a real Stratum session for every miner switched to a pool other than the
        farm's upstream one (whose shares are accounted statistically, so that ten
        thousand miners need no ten thousand connections); close sessions no longer used."""
        for a in self.asics:
            slot = a.pools[a.active_pool] if a.pools else None
            wanted = (slot is not None and a.state in ("running", "waking") and slot.alive
                      and slot.enabled and not slot.url.startswith(self.pool.url))
            have = self.sessions.get(a.index)
            if have is not None and (not wanted or have.pool_index != a.active_pool
                                     or have.task is None or have.task.done()):
                await have.stop()
                del self.sessions[a.index]
                have = None
            if wanted and have is None:
                s = MinerSession(a, a.active_pool, self.t)
                s.start()
                self.sessions[a.index] = s

    async def _tick(self, mqtt: Any) -> None:
        await self._supervise_sessions()
        t, now = self.t(), self.clock.now()
        for rig in self.rigs:
            rig.tick(t, now)
        load = self.load_kw()
        self.meter.refresh(t, load)
        for feed, payload in feed_readings(self.feeds, load, self.rng, now):
            await mqtt.publish(feed.topic(self.config.site), encode(payload))

    async def run_scenario(self, name: str) -> None:
        steps = SCENARIOS[name]
        start = self.t() + self.config.scenario_delay_s
        for step in steps:
            await self.clock.sleep(start + step.at_s - self.t())
            log.info("scenario %s: %s", name, step.what)
            self.events.append({"t": self.t(), "ts": self.clock.now().isoformat(),
                                "scenario": name, "what": step.what})
            result = step.action(self)
            if asyncio.iscoroutine(result):
                await result

    async def set_uplink(self, up: bool) -> None:
        """Cut or restore the internet: uplink check endpoint and upstream pool."""
        self.uplink_up = up
        t = self.t()
        for a in self.asics:
            a.set_pool_alive(self.pool.url, up, t)
        if up:
            await self.pool.restore()
            if self.uplink_http is not None:
                await self.uplink_http.start()
        else:
            await self.pool.cut()
            if self.uplink_http is not None:
                await self.uplink_http.stop()

    # -- description ------------------------------------------------------------------

    def endpoints(self) -> dict[str, Any]:
        """Every endpoint of the farm, for connectors and tests."""
        c = self.config
        return {
            "site": c.site, "speed": c.speed, "started_at": self.clock.start.isoformat(),
            "asics": [{"id": f"asic-{a.index + 1:05d}", "host": a.host, "port": c.asic_port,
                       "web_port": c.asic_web_port, "model": a.model.type,
                       "dialect": a.firmware, "nameplate_w": a.model.nominal_w}
                      for a in self.asics],
            "modbus": {"host": self.meter.host, "port": self.meter.port, "unit": 1,
                       "register_map": self.meter.map_name, "nominal_hz": c.nominal_hz},
            "mqtt": {"host": c.mqtt_host, "port": c.mqtt_port,
                     "topics": [f.topic(c.site) for f in self.feeds],
                     "feeds": [{"id": f.feed_id, "topic": f.topic(c.site),
                                "capacity_kw": f.capacity_kw} for f in self.feeds]},
            "rigs": [{"id": r.rig_id, "api_url": r.api_url, "nvml_url": f"{r.api_url}/nvml",
                      "config_dir": str(r.config_dir.resolve()),
                      "log_path": str(r.log_path.resolve()),
                      "gpus": [{"index": g.index, "card": g.card.name} for g in r.gpus]}
                     for r in self.rigs],
            "coordinator": {"url": self.coordinator_http.url,
                            "api_key": c.coordinator_api_key},
            "model_endpoints": [{"name": ep.name, "url": svc.url}
                                for ep, svc in zip(self.models, self.model_http, strict=True)],
            "uplink": {"url": f"{self.uplink_http.url}/generate_204" if self.uplink_http
                       else ""},
            "pools": {"upstream": self.pool.url},
            "price": {"url": f"{self.market_http.url}/prices.json" if self.market_http
                      else "", "hashprice_per_th_day": self.market.hashprice_per_th_day},
        }

    #: The environment variable the inventory names for the coordinator's key.
    COORDINATOR_KEY_ENV = "HASHPLANE_SIM_COORDINATOR_KEY"

    def secrets(self) -> dict[str, str]:
        """The secrets the farm's inventory refers to (environment variable -> value)."""
        return {self.COORDINATOR_KEY_ENV: self.config.coordinator_api_key}

    def site(self) -> Any:
        """The farm as a site inventory (schemas/site.py), as an operator would write it."""
        from schemas.site import Site

        e = self.endpoints()
        feeds = e["mqtt"]["feeds"]
        return Site.model_validate({
            "site": e["site"],
            "asics": [{"id": a["id"], "host": a["host"], "port": a["port"],
                       "web_port": a["web_port"], "firmware": a["dialect"], "model": a["model"],
                       "nameplate_w": a["nameplate_w"], "feed": feeds[i % len(feeds)]["id"]}
                      for i, a in enumerate(e["asics"])],
            "rigs": [{"nvml": r["nvml_url"], **{k: r[k] for k in (
                "id", "api_url", "config_dir", "log_path", "gpus")}} for r in e["rigs"]],
            "meter": {"host": e["modbus"]["host"], "port": e["modbus"]["port"], "unit": 1,
                      "register_map": e["modbus"]["register_map"],
                      "nominal_hz": int(e["modbus"]["nominal_hz"])},
            "mqtt": {"url": f"mqtt://{e['mqtt']['host']}:{e['mqtt']['port']}"},
            "feeds": [{"id": f["id"], "topic": f["topic"], "capacity_kw": f["capacity_kw"]}
                      for f in feeds],
            "coordinator": {"url": e["coordinator"]["url"],
                            # its jobs run on the host of hashplane's stack, not on
                            # one of the simulated rigs: no coordinator.rig
                            "api_key_env": self.COORDINATOR_KEY_ENV}
            if self.config.coordinator else None,
            "model_endpoints": e["model_endpoints"],
            "uplink": {"url": e["uplink"]["url"]} if e["uplink"]["url"] else None,
            "price": {"source": e["price"]["url"], "poll_s": 2.0,
                      "hashprice_per_th_day": e["price"]["hashprice_per_th_day"]}
            if e["price"]["url"] else None,
        })

    def write_site(self, path: Path) -> Path:
        """Write the inventory (TOML) and, beside it, ``<name>.env`` with its secrets."""
        from schemas.site import dump_site

        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# The simulated farm of site {self.config.site}, written by hashplane sim.\n"
                  f"# Its secrets are in {path.with_suffix('.env').name} (an environment "
                  f"file: hashplane --env-file).")
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(dump_site(self.site(), header))
        tmp.replace(path)
        env = path.with_suffix(".env")
        env.write_text("".join(f"{k}={v}\n" for k, v in self.secrets().items()))
        env.chmod(0o600)
        return path


def firmware_sequence(mix: dict[str, int], n: int) -> list[str]:
    """``n`` firmwares in the proportions of ``mix``, interleaved (weighted round robin), so
    that every slice of the fleet (and every feed) has each firmware."""
    unknown = set(mix) - set(FIRMWARE_APIS)
    if unknown:
        raise ValueError(f"unknown firmware {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(FIRMWARE_APIS)}")
    weights = {k: v for k, v in mix.items() if v > 0}
    if not weights:
        raise ValueError("the firmware mix is empty")
    total = sum(weights.values())
    out: list[str] = []
    credit = dict.fromkeys(weights, 0.0)
    for _ in range(n):
        for k, w in weights.items():
            credit[k] += w / total
        pick = max(credit, key=lambda k: credit[k])
        credit[pick] -= 1.0
        out.append(pick)
    return out


def _uplink_app() -> FastAPI:
    app = FastAPI(title="uplink check (simulated internet)")

    @app.get("/generate_204")
    def generate_204() -> Response:
        return Response(status_code=204)

    return app


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
