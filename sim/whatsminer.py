"""Whatsminer (btminer, API V2) as a simulated miner speaks it.

From MicroBT's public "WhatsMiner API V2" document and the fields pyasic's BTMiner backend
reads: requests are ``{"cmd": "summary"}`` (``command`` is accepted too); reads answer
cgminer-style (``SUMMARY`` with ``MHS 5s``, ``Power``, ``Power Limit``, ``Temperature``,
``Fan Speed In``/``Out``), the newer ones (``get_version``, ``status``, ``get_token``) a
``Msg`` object with code 131.  Writes are privileged: ``get_token`` gives ``time``, ``salt``
and ``newsalt``; the client derives ``host_passwd_md5`` = md5-crypt(admin password, salt) and
the token ``host_sign`` = md5-crypt(host_passwd_md5 + time, newsalt), then sends
``{"enc": 1, "data": base64(AES-256-ECB(json with "token"))}`` keyed by
sha256(host_passwd_md5); the reply is ``{"enc": base64(AES(json))}``.  The cgminer reads
combine (``summary+pools+devs``); ``status`` and the ``get_*`` commands do not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from typing import Any

from sim.cgminer import INVCMD, INVJSON, CgminerApi, RpcError

FIRMWARE = "20230911.15.REL"
API_VERSION = "2.0.5"
DEFAULT_PASSWORD = "admin"
TOKEN_ERR, CMD_ERR, OK = 135, 132, 131


def md5_crypt(word: str, salt: str) -> str:
    """The ``$1$salt$hash`` md5-crypt the Whatsminer token scheme is built on (passlib's)."""
    from passlib.hash import md5_crypt as _md5

    return str(_md5.using(salt=salt).hash(word))


def aes_key(host_passwd_md5: str) -> bytes:
    return binascii.unhexlify(hashlib.sha256(host_passwd_md5.encode()).hexdigest())


def aes(key: bytes, data: bytes, *, decrypt: bool) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    c = Cipher(algorithms.AES(key), modes.ECB())
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(data) + op.finalize()


def pad16(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 16)


class WhatsminerApi(CgminerApi):
    """btminer's API V2."""

    DESCRIPTION = "btminer"
    SINGLE = frozenset({"status", "get_token", "get_version", "get_miner_info", "get_psu"})

    def __init__(self, *args: Any, password: str = DEFAULT_PASSWORD, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.password = password
        self.token: tuple[str, str] | None = None  # (host_passwd_md5, host_sign) issued
        self.power_limit_w = int(self.asic.current_profile().watts)

    # -- framing ----------------------------------------------------------------------

    def handle(self, raw: bytes) -> bytes:
        text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
        try:
            obj = json.loads(text) if text.startswith("{") else {"cmd": text.split("|")[0]}
        except json.JSONDecodeError:
            return self._encode(self._msg("E", INVJSON, "invalid JSON message"))
        if not isinstance(obj, dict):
            return self._encode(self._msg("E", INVJSON, "invalid JSON message"))
        if self.asic.state == "offline":
            return b""
        t = self.clock()
        self.asic.advance(t)
        if obj.get("enc") == 1:
            return self._privileged(obj, t)
        cmd = obj.get("cmd", obj.get("command"))
        if not isinstance(cmd, str):
            return self._encode(self._msg("E", INVJSON, "invalid JSON message"))
        param = str(obj.get("parameter", "") or "")
        parts = cmd.strip().split("+")
        if len(parts) > 1:  # the cgminer reads combine; get_* and status do not
            reply: dict[str, Any] = {c: [self._one(c, param, t) if c not in self.SINGLE else
                                         self._status("E", INVCMD, "Invalid command")]
                                     for c in parts}
            return self._encode({**reply, "id": 1})
        return self._encode(self._one(cmd.strip(), param, t))

    def _msg(self, status: str, code: int, msg: Any) -> dict[str, Any]:
        return {"STATUS": status, "When": int(time.time()), "Code": code, "Msg": msg,
                "Description": ""}

    def _privileged(self, obj: dict[str, Any], t: float) -> bytes:
        if self.token is None:
            return self._encode(self._msg("E", TOKEN_ERR, "check token err"))
        passwd_md5, sign = self.token
        key = aes_key(passwd_md5)
        try:
            clear = aes(key, base64.b64decode(str(obj.get("data", ""))), decrypt=True)
            req = json.loads(clear.rstrip(b"\0").decode())
        except (ValueError, UnicodeDecodeError):
            return self._encode(self._msg("E", TOKEN_ERR, "check token err"))
        if not isinstance(req, dict) or req.get("token") != sign:
            return self._encode(self._msg("E", TOKEN_ERR, "check token err"))
        handler = getattr(self, f"priv_{req.get('cmd')}", None)
        try:
            reply = handler(req, t) if handler else self._msg("E", CMD_ERR, "Command error")
        except RpcError as exc:
            reply = self._msg("E", exc.code, exc.msg)
        enc = base64.b64encode(aes(key, pad16(json.dumps(reply).encode()), decrypt=False))
        return self._encode({"enc": enc.decode()})

    # -- reads ------------------------------------------------------------------------

    def cmd_get_token(self, args: list[str], t: float) -> dict[str, Any]:
        salt, newsalt = secrets.token_hex(4), secrets.token_hex(4)
        stamp = str(int(time.time()))[-4:]
        passwd_md5 = md5_crypt(self.password, salt).split("$")[3]
        sign = md5_crypt(passwd_md5 + stamp, newsalt).split("$")[3]
        self.token = (passwd_md5, sign)
        return self._msg("S", OK, {"time": stamp, "salt": salt, "newsalt": newsalt})

    def cmd_get_version(self, args: list[str], t: float) -> dict[str, Any]:
        return self._msg("S", OK, {"api_ver": API_VERSION, "fw_ver": FIRMWARE,
                                   "platform": "H6OS", "chip": "K210"})

    def cmd_status(self, args: list[str], t: float) -> dict[str, Any]:
        off = self.asic.state == "sleeping"
        return self._msg("S", OK, {"mineroff": "true" if off else "false",
                                   "mineroff_reason": "power off by API" if off else "",
                                   "mineroff_time": "", "FirmwareVersion": f"'{FIRMWARE}'",
                                   "power_mode": "", "hash_percent": ""})

    def cmd_summary(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        row = {k: v for k, v in self._summary_row(t).items() if not k.startswith("GHS")}
        row.update({
            "Temperature": round(a.temp_c, 2), "freq_avg": a.current_profile().frequency_mhz,
            "Fan Speed In": (a.fan_rpm(t) or [0])[0], "Fan Speed Out": (a.fan_rpm(t) or [0])[-1],
            "Power": round(a.power_w(t)), "Power Rate": 0.0, "Power Limit": self.power_limit_w,
            "Power Mode": "Normal", "Factory GHS": round(a.model.nominal_ths * 1e3),
            "Firmware Version": f"'{FIRMWARE}'", "Env Temp": a.ambient_c,
            "MAC": f"C4:08:28:{(a.index >> 16) & 255:02X}:{(a.index >> 8) & 255:02X}:"
                   f"{a.index & 255:02X}", "Error Code Count": 0})
        return self._status("S", 11, "Summary", SUMMARY=[row])

    def cmd_devdetails(self, args: list[str], t: float) -> dict[str, Any]:
        rows = [{"DEVDETAILS": b, "Name": "SM", "ID": b, "Driver": "bitmicro", "Kernel": "",
                 "Model": self.asic.model.type.split(" ", 1)[1].replace(" ", "_")}
                for b in range(self.asic.model.boards)]
        return self._status("S", 69, "Device Details", DEVDETAILS=rows)

    def cmd_devs(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        n = a.model.boards
        rows = []
        for b in range(n):
            chips, pcb = self._board_temps(b)
            mhs = round(a.hashrate_5s_ths() * 1e6 / n, 2)
            rows.append({"ASC": b, "Slot": b, "Enabled": "Y", "Status": "Alive",
                         "Temperature": float(max(pcb)), "Chip Temp Avg": float(sum(chips) / 4),
                         "MHS av": mhs, "MHS 5s": mhs, "MHS 1m": mhs,
                         "Effective Chips": a.model.chips_per_board,
                         "PCB SN": f"SIMPCB{a.index:06d}{b}"})
        return self._status("S", 9, f"{n} ASC(s)", DEVS=rows)

    # the cgminer pool commands are not on btminer's API
    ABSENT = frozenset({"switchpool", "enablepool", "disablepool", "removepool", "addpool"})

    # -- privileged ---------------------------------------------------------------------

    def priv_power_off(self, req: dict[str, Any], t: float) -> dict[str, Any]:
        self.asic.sleep(t)
        return self._msg("S", OK, "API command OK")

    def priv_power_on(self, req: dict[str, Any], t: float) -> dict[str, Any]:
        self.asic.wake(t)
        return self._msg("S", OK, "API command OK")

    def priv_adjust_power_limit(self, req: dict[str, Any], t: float) -> dict[str, Any]:
        try:
            limit = int(str(req.get("power_limit", "")))
        except ValueError:
            raise RpcError(CMD_ERR, "Command error: power_limit") from None
        if not 0 < limit <= 99999:
            raise RpcError(CMD_ERR, "Command error: power_limit")
        fitting = [p for p in self.asic.profiles.values() if p.watts <= limit]
        if not fitting:
            raise RpcError(CMD_ERR, f"power limit {limit} W under the lowest step")
        self.asic.set_profile(max(fitting, key=lambda p: p.watts).name, t)
        self.power_limit_w = limit
        return self._msg("S", OK, "API command OK")

    def priv_update_pools(self, req: dict[str, Any], t: float) -> dict[str, Any]:
        urls = [str(req.get(f"pool{i}", "")) for i in (1, 2, 3)]
        if not urls[0]:
            raise RpcError(CMD_ERR, "Command error: pool1")
        for i, url in enumerate(urls, start=1):
            if not url:
                continue
            full = url if "://" in url else f"stratum+tcp://{url}"
            n = next((k for k, p in enumerate(self.asic.pools) if p.url == full), None)
            if n is None:
                n = self.asic.add_pool(full, str(req.get(f"worker{i}", "")),
                                       str(req.get(f"passwd{i}", "x")),
                                       alive=self.pool_alive(full))
            if i == 1:
                self.asic.switch_pool(n, t)
        return self._msg("S", OK, "API command OK")


__all__ = ["INVCMD", "WhatsminerApi"]
