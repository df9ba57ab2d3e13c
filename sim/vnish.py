"""VNish (AnthillOS) firmware on an Antminer, as a simulated miner speaks it.

From VNish's HTTP API (``/api/v1``, the one its web UI uses) and the fields pyasic's VNish
backend reads: the bmminer RPC stays for reads (``version``/``stats`` name ``vnish``;
``summary``, ``pools``, ``stats`` as on stock firmware, no power); the web API adds
``POST /api/v1/unlock {"pw": ...}`` -> ``{"token"}`` (factory password ``admin``), then with
``Authorization: <token>``: ``GET summary`` (``miner.power_usage``,
``miner.miner_status.miner_state``), ``GET settings`` (``miner.overclock.preset``,
``miner.pools``), ``GET autotune/presets`` (watt presets), ``POST settings``, and
``POST mining/stop|start|pause|resume``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sim.antminer import AntminerApi
from sim.http1 import Answer, Request, Route

VERSION = "1.2.6"
DEFAULT_PASSWORD = "admin"
#: The web UI's page (its title is how field tools tell VNish from stock firmware).
PAGE = ('<!doctype html><html><head><meta charset="utf-8"><title>AnthillOS</title></head>'
        '<body><div id="app"></div><script src="/js/app.js"></script></body></html>')


class VnishApi(AntminerApi):
    """VNish keeps bmminer's RPC and names itself in it."""

    DESCRIPTION = f"bmminer vnish {VERSION}"

    def cmd_version(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 22, "BMMiner versions", VERSION=[{
            "BMMiner": "2.0.0", "API": "3.1", "Miner": f"vnish {VERSION}",
            "CompileTime": "Fri Mar 15 2024", "Type": f"{self.asic.model.type} (vnish {VERSION})"}])

    def cmd_stats(self, args: list[str], t: float) -> dict[str, Any]:
        out = super().cmd_stats(args, t)
        out["STATS"][0]["Type"] = f"{self.asic.model.type} (vnish {VERSION})"
        out["STATS"][0]["Miner"] = f"vnish {VERSION}"
        return out


class VnishWeb:
    """The ``/api/v1`` of one miner."""

    def __init__(self, api: VnishApi, password: str = DEFAULT_PASSWORD) -> None:
        self.api, self.password = api, password
        self.tokens: set[str] = set()

    def presets(self) -> list[int]:
        return sorted(p.watts for p in self.api.asic.profiles.values())

    def summary(self) -> dict[str, Any]:
        a = self.api.asic
        t = self.api.clock()
        state = {"sleeping": "stopped", "waking": "starting", "running": "mining"}.get(
            a.state, "failure")
        return {"miner": {
            "miner_type": f"{a.model.type} (vnish {VERSION})",
            "miner_status": {"miner_state": state, "miner_state_time": a.elapsed(t)},
            "average_hashrate": round(a.hashrate_avg_ths(t), 2),
            "instant_hashrate": round(a.hashrate_5s_ths(), 2), "hr_nominal": a.model.nominal_ths,
            "power_usage": round(a.power_w(t)), "power_efficiency": round(
                a.power_w(t) / max(0.01, a.hashrate_5s_ths()), 1),
            "cooling": {"fan_num": a.model.fans,
                        "fans": [{"id": i, "rpm": r} for i, r in enumerate(a.fan_rpm(t))]},
            "chains": [{"id": b + 1, "status": {"state": state}} for b in range(a.model.boards)],
            "pools": [{"url": p.url, "user": p.user, "status": "active" if i == a.active_pool
                       else "offline"} for i, p in enumerate(a.pools)]},
            "system": {"network_status": {
                "mac": f"02:56:4E:{(a.index >> 8) & 255:02X}:{a.index & 255:02X}:00",
                "hostname": f"vnish-{a.index + 1}", "ip": a.host}, "uptime": a.elapsed(t)}}

    def settings(self) -> dict[str, Any]:
        a = self.api.asic
        return {"miner": {"overclock": {"preset": str(round(a.current_profile().watts))},
                          "pools": [{"url": p.url, "user": p.user, "pass": p.password}
                                    for p in a.pools[:3]]}}

    def route(self, req: Request) -> Answer | None:
        a = self.api.asic
        if a.state == "offline":
            return None
        t = self.api.clock()
        a.advance(t)
        if req.method == "GET" and req.path in ("/", "/index.html"):
            return Answer(200, PAGE)
        path = req.path.removeprefix("/api/v1/")
        if req.method == "POST" and path == "unlock":
            try:
                pw = req.json().get("pw")
            except (ValueError, AttributeError):
                return Answer(400, {"err": "bad request"})
            if pw != self.password:
                return Answer(401, {"err": "wrong password"})
            token = secrets.token_hex(16)
            self.tokens.add(token)
            return Answer(200, {"token": token})
        if req.headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            return Answer(401, {"err": "unauthorized"})
        if req.method == "GET" and path == "summary":
            return Answer(200, self.summary())
        if req.method == "GET" and path == "info":
            return Answer(200, {"miner": a.model.type, "fw_name": "Vnish", "fw_version": VERSION,
                                "build_time": "2024-03-15", "system": {"uptime": time.time()}})
        if req.method == "GET" and path == "settings":
            return Answer(200, self.settings())
        if req.method == "GET" and path == "autotune/presets":
            return Answer(200, [{"name": str(w), "pretty": f"{w} watt", "status": "tuned",
                                 "modded_psu_required": False} for w in self.presets()])
        if req.method == "POST" and path in ("mining/stop", "mining/pause"):
            a.sleep(t)
            return Answer(200, {})
        if req.method == "POST" and path in ("mining/start", "mining/resume"):
            a.wake(t)
            return Answer(200, {})
        if req.method == "POST" and path == "settings":
            return self.apply(req, t)
        return Answer(404, {"err": "not found"})

    def apply(self, req: Request, t: float) -> Answer:
        a = self.api.asic
        try:
            miner = req.json().get("miner", {})
            preset = miner.get("overclock", {}).get("preset")
            pools = miner.get("pools")
        except (ValueError, AttributeError):
            return Answer(400, {"err": "bad settings"})
        if preset is not None:
            try:
                watts = int(str(preset))
            except ValueError:
                return Answer(400, {"err": f"unknown preset {preset!r}"})
            profile = next((p for p in a.profiles.values() if p.watts == watts), None)
            if profile is None:
                return Answer(400, {"err": f"unknown preset {preset!r}"})
            a.set_profile(profile.name, t)
        if isinstance(pools, list) and pools and isinstance(pools[0], dict) and pools[0].get("url"):
            url = str(pools[0]["url"])
            full = url if "://" in url else f"stratum+tcp://{url}"
            n = next((k for k, p in enumerate(a.pools) if p.url == full), None)
            if n is None:
                n = a.add_pool(full, str(pools[0].get("user", "")), str(pools[0].get("pass", "x")),
                               alive=self.api.pool_alive(full))
            a.switch_pool(n, t)
        return Answer(200, {"restart_required": False, "reboot_required": False})


def route(web: VnishWeb) -> Route:
    return web.route
