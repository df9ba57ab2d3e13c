"""Antminer stock firmware (bmminer) as a simulated miner speaks it: RPC to read, web to write.

From Bitmain's cgminer/bmminer API and the fields pyasic's Antminer backend reads: the RPC
(4028) answers ``version`` (``Type: Antminer S19j Pro``), ``summary`` in GH/s, ``stats``
(``fan1..``, ``temp_chip1..`` as ``a-b-c-d``, ``chain_rate1..``) and ``pools``; it reports
no power.  Writes go through the web UI's CGI API with HTTP digest authentication (realm
``antMiner Configuration``, factory login root/root): ``get_miner_conf.cgi`` holds the
pools and ``bitmain-work-mode`` (0 normal, 1 sleep, 3 low power), ``set_miner_conf.cgi``
takes the same JSON (``miner-mode``), ``get_system_info.cgi`` names the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from typing import Any

from sim.cgminer import CgminerApi
from sim.http1 import Answer, Request, Route, serve_http

log = logging.getLogger(__name__)

FIRMWARE = "Thu Jan  4 10:27:59 CST 2024"
BMMINER = "1.0.0"
REALM = "antMiner Configuration"
DEFAULT_LOGIN = ("root", "root")


class AntminerApi(CgminerApi):
    """bmminer's RPC (read commands only: the stock API is not privileged)."""

    DESCRIPTION = f"bmminer {BMMINER}"
    ABSENT = frozenset({"switchpool", "enablepool", "disablepool", "removepool", "addpool"})

    def cmd_version(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 22, "BMMiner versions", VERSION=[{
            "BMMiner": BMMINER, "API": "3.1", "Miner": "uart_trans.1.3",
            "CompileTime": FIRMWARE, "Type": self.asic.model.type}])

    def cmd_summary(self, args: list[str], t: float) -> dict[str, Any]:
        row = {k: v for k, v in self._summary_row(t).items() if not k.startswith("MHS")}
        return self._status("S", 11, "Summary", SUMMARY=[row])

    def cmd_stats(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        n = a.model.boards
        prof = a.current_profile()
        board: dict[str, Any] = {
            "STATS": 0, "ID": "BC50", "Elapsed": a.elapsed(t),
            "GHS 5s": round(a.hashrate_5s_ths() * 1e3, 2),
            "GHS av": round(a.hashrate_avg_ths(t) * 1e3, 2), "rate_unit": "GH/s",
            "Mode": 1 if a.state == "sleeping" else 0, "total_rateideal": round(prof.ths * 1e3, 2),
            "total_freqavg": prof.frequency_mhz, "total_acn": a.model.chips_per_board * n,
            "miner_count": n, "fan_num": a.model.fans, "temp_num": n}
        for i, rpm in enumerate(a.fan_rpm(t), start=1):
            board[f"fan{i}"] = rpm
        for b in range(n):
            chips, pcb = self._board_temps(b)
            k = b + 1
            board[f"chain_rate{k}"] = f"{a.hashrate_5s_ths() * 1e3 / n:.2f}"
            board[f"chain_acn{k}"] = a.model.chips_per_board
            board[f"temp{k}"] = max(pcb)
            board[f"temp_pcb{k}"] = "-".join(str(x) for x in pcb)
            board[f"temp_chip{k}"] = "-".join(str(x) for x in chips)
        head = {"BMMiner": BMMINER, "Miner": "uart_trans.1.3", "CompileTime": FIRMWARE,
                "Type": a.model.type}
        return self._status("S", 70, "BMMiner stats", STATS=[head, board])


class AntminerWeb:
    """The web UI's CGI API of one miner, behind digest authentication."""

    def __init__(self, api: AntminerApi, login: tuple[str, str] = DEFAULT_LOGIN) -> None:
        self.api, self.login = api, login
        self.nonces: set[str] = set()

    def conf(self) -> dict[str, Any]:
        a = self.api.asic
        mode = {"sleeping": "1"}.get(a.state, "0")
        return {"pools": [{"url": p.url, "user": p.user, "pass": p.password}
                          for p in a.pools[:3]],
                "api-listen": True, "api-network": True, "api-groups": "A:stratum",
                "api-allow": "A:0/0,W:*", "bitmain-fan-ctrl": False, "bitmain-fan-pwm": "100",
                "bitmain-use-vil": True, "bitmain-freq": str(a.current_profile().frequency_mhz),
                "bitmain-voltage": "1400", "bitmain-ccdelay": "0", "bitmain-pwth": "0",
                "bitmain-work-mode": mode, "bitmain-freq-level": "100"}

    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        a = self.api.asic
        t = self.api.clock()
        a.advance(t)
        if path == "/cgi-bin/get_system_info.cgi":
            return 200, {"minertype": a.model.type, "nettype": "DHCP", "netdevice": "eth0",
                         "macaddr": f"02:41:4D:{(a.index >> 8) & 255:02X}:{a.index & 255:02X}:00",
                         "hostname": "Antminer", "ipaddress": a.host,
                         "system_mode": "GNU/Linux", "firmware_type": "Release",
                         "system_filesystem_version": FIRMWARE, "serinum": f"SIM{a.index:08d}"}
        if path == "/cgi-bin/get_miner_conf.cgi":
            return 200, self.conf()
        if path == "/cgi-bin/get_blink_status.cgi":
            return 200, {"blink": False}
        if path == "/cgi-bin/summary.cgi":
            return 200, {"STATUS": {"STATUS": "S", "when": int(time.time()), "Msg": "summary"},
                         "SUMMARY": [{"status": []}]}
        if path == "/cgi-bin/set_miner_conf.cgi" and method == "POST":
            try:
                conf = json.loads(body or b"{}")
            except ValueError:
                return 200, {"stats": "error", "code": "M001", "msg": "Illegal json"}
            if not isinstance(conf, dict):
                return 200, {"stats": "error", "code": "M001", "msg": "Illegal json"}
            mode = str(conf.get("miner-mode", conf.get("bitmain-work-mode", "")))
            if mode == "1":
                a.sleep(t)
            elif mode in ("0", "3"):
                a.wake(t)
            elif mode:
                return 200, {"stats": "error", "code": "M002", "msg": f"bad mode {mode}"}
            pools = conf.get("pools")
            if isinstance(pools, list) and pools and isinstance(pools[0], dict):
                url = str(pools[0].get("url", ""))
                if url:
                    full = url if "://" in url else f"stratum+tcp://{url}"
                    n = next((k for k, p in enumerate(a.pools) if p.url == full), None)
                    if n is None:
                        n = a.add_pool(full, str(pools[0].get("user", "")),
                                       str(pools[0].get("pass", "x")),
                                       alive=self.api.pool_alive(full))
                    a.switch_pool(n, t)
            return 200, {"stats": "success", "code": "M000", "msg": "OK!"}
        return 404, {"stats": "error", "msg": "not found"}

    # -- digest authentication (RFC 7616, MD5, qop=auth) --------------------------------

    def challenge(self) -> str:
        nonce = secrets.token_hex(16)
        self.nonces.add(nonce)
        if len(self.nonces) > 256:
            self.nonces.pop()
        return f'Digest realm="{REALM}", nonce="{nonce}", qop="auth", algorithm=MD5'

    def authorised(self, method: str, header: str) -> bool:
        if not header.startswith("Digest "):
            return False
        f = dict(re.findall(r'(\w+)="?([^",]*)"?', header[7:]))
        if f.get("username") != self.login[0] or f.get("nonce") not in self.nonces:
            return False

        def md5(s: str) -> str:
            return hashlib.md5(s.encode()).hexdigest()  # the protocol's hash

        ha1 = md5(f"{self.login[0]}:{REALM}:{self.login[1]}")
        ha2 = md5(f"{method}:{f.get('uri', '')}")
        expect = md5(f"{ha1}:{f['nonce']}:{f.get('nc', '')}:{f.get('cnonce', '')}:"
                     f"{f.get('qop', '')}:{ha2}") if f.get("qop") else md5(
            f"{ha1}:{f['nonce']}:{ha2}")
        return secrets.compare_digest(expect, f.get("response", ""))


def route(web: AntminerWeb) -> Route:
    """The CGI API behind digest authentication (an unauthorised request gets the challenge
    pyasic and browsers answer)."""

    def answer(req: Request) -> Answer | None:
        if web.api.asic.state == "offline":
            return None
        if not web.authorised(req.method, req.headers.get("authorization", "")):
            return Answer(401, {"stats": "error", "msg": "Unauthorized"},
                          (("WWW-Authenticate", web.challenge()),))
        return Answer(*web.route(req.method, req.path, req.body))

    return answer


async def serve_web(web: AntminerWeb, host: str, port: int) -> asyncio.Server:
    return await serve_http(route(web), host, port)
