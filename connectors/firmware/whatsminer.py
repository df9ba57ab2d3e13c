"""Whatsminer (btminer API V2): plain reads, privileged writes with a token and AES.

Where the values live (MicroBT's "WhatsMiner API V2" document; the fields pyasic's BTMiner
backend reads): ``summary`` holds hashrate (``MHS 5s``), ``Power``, ``Power Limit``, the
board ``Temperature`` and the fans (``Fan Speed In``/``Out``); ``devs`` the chips'
temperatures (``Chip Temp Avg``); ``status`` whether it is powered off (``mineroff``).
btminer combines the cgminer reads but not ``status``: a read is two requests.

Writes: ``get_token`` gives ``time``, ``salt`` and ``newsalt``; the key is
``host_passwd_md5`` = md5-crypt(admin password, salt), the token ``host_sign`` =
md5-crypt(host_passwd_md5 + time, newsalt); the command is sent as
``{"enc": 1, "data": base64(AES-256-ECB(json + token))}`` with key sha256(host_passwd_md5),
and the answer comes back encrypted the same way.  A token is reused while it is young.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from connectors.cgminer import (
    AsicEndpoint,
    Locations,
    _num,
    _section,
    parse_reply,
    rpc,
    watts_at,
)
from connectors.firmware import AuthFailed, Dialect, Outcome, Refused

FACTORY_PASSWORD = "admin"
TOKEN_TTL_S = 25 * 60  # btminer keeps a token 30 min
OK_CODE = 131
TOKEN_ERRORS = {135, 136}  # "check token err", "token over max num"


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    rows = _section(r, "summary", "SUMMARY")
    return rows[0] if rows else {}


def _sleeping(r: dict[str, Any]) -> bool | None:
    part = (r.get("status") or [{}])[0]
    msg = part.get("Msg") if isinstance(part, dict) else None
    if not isinstance(msg, dict) or "mineroff" not in msg:
        return None
    return str(msg["mineroff"]).lower() == "true"


WHERE = Locations(
    power_w=lambda r: watts_at(_summary(r), "Power"),
    chip_c=lambda r: [t for t in (_num(d.get("Chip Temp Avg"))
                                  for d in _section(r, "devs", "DEVS")) if t],
    board_c=lambda r: [t for t in [_num(_summary(r).get("Temperature"))] if t],
    fans=lambda r: [int(v) for v in (_num(_summary(r).get(k))
                                     for k in ("Fan Speed In", "Fan Speed Out"))
                    if v is not None],
    sleeping=_sleeping,
    model=lambda r: "")


# -- the privileged API ---------------------------------------------------------------

def md5_crypt(word: str, salt: str) -> str:
    """The hash part of ``$1$salt$hash`` (passlib's md5-crypt)."""
    from passlib.hash import md5_crypt as _md5

    return str(_md5.using(salt=salt).hash(word)).split("$")[3]


def _aes(key: bytes, data: bytes, *, decrypt: bool) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    c = Cipher(algorithms.AES(key), modes.ECB())
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(data) + op.finalize()


@dataclass(frozen=True)
class Token:
    passwd_md5: str
    sign: str
    at: float

    @property
    def key(self) -> bytes:
        return binascii.unhexlify(hashlib.sha256(self.passwd_md5.encode()).hexdigest())


#: host -> its current token
TOKENS: dict[str, Token] = {}


async def _plain(ep: AsicEndpoint, command: str, timeout_s: float) -> dict[str, Any]:
    return parse_reply(await rpc(ep.host, ep.port, command, timeout_s=timeout_s))


async def token(ep: AsicEndpoint, timeout_s: float, fresh: bool = False) -> Token:
    t = TOKENS.get(ep.host)
    if t is not None and not fresh and time.monotonic() - t.at < TOKEN_TTL_S:
        return t
    reply = await _plain(ep, "get_token", timeout_s)
    msg = reply.get("Msg")
    if not isinstance(msg, dict) or not all(k in msg for k in ("time", "salt", "newsalt")):
        raise Refused(f"get_token: {reply.get('Msg') or reply}")
    passwd_md5 = md5_crypt(ep.password or FACTORY_PASSWORD, str(msg["salt"]))
    sign = md5_crypt(passwd_md5 + str(msg["time"]), str(msg["newsalt"]))
    t = TOKENS[ep.host] = Token(passwd_md5, sign, time.monotonic())
    return t


async def privileged(ep: AsicEndpoint, timeout_s: float, cmd: str,
                     **params: str) -> dict[str, Any]:
    """One encrypted command; Refused with the miner's words when it says no."""
    for attempt in (0, 1):
        t = await token(ep, timeout_s, fresh=attempt == 1)
        clear = json.dumps({"cmd": cmd, **params, "token": t.sign}).encode()
        data = base64.b64encode(_aes(t.key, clear + b"\0" * (-len(clear) % 16), decrypt=False))
        body = json.dumps({"enc": 1, "data": data.decode()})
        reply = parse_reply(await rpc(ep.host, ep.port, "", timeout_s=timeout_s, raw=body))
        if "enc" in reply:
            try:
                reply = json.loads(_aes(t.key, base64.b64decode(str(reply["enc"])),
                                        decrypt=True).rstrip(b"\0").decode())
            except (ValueError, UnicodeDecodeError):
                raise Refused(f"{cmd}: an answer that does not decrypt") from None
        code = reply.get("Code")
        if reply.get("STATUS") == "S" and code == OK_CODE:
            return reply
        if code in TOKEN_ERRORS and attempt == 0:
            continue  # the token expired (or the miner restarted): a fresh one, once
        if code in TOKEN_ERRORS:
            raise AuthFailed(f"{cmd}: {reply.get('Msg')} (the admin password in the "
                             f"inventory's credentials for {ep.device_id} is not the miner's)")
        raise Refused(f"{cmd}: {reply.get('Msg')} (code {code})")
    raise Refused(f"{cmd}: no answer")  # pragma: no cover - the loop returns or raises


async def sleep(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    r = await privileged(ep, timeout_s, "power_off", respbefore="true")
    return "applied", f"power_off: {r.get('Msg')}"


async def wake(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    r = await privileged(ep, timeout_s, "power_on")
    return "applied", f"power_on: {r.get('Msg')}"


async def power_target(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    r = await privileged(ep, timeout_s, "adjust_power_limit",
                         power_limit=str(int(cmd.power_target_w)))
    return "applied", f"power limit {int(cmd.power_target_w)} W: {r.get('Msg')}"


async def switch_pool(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    pools = _section(await _plain(ep, "pools", timeout_s), "pools", "POOLS")
    others = [p for p in pools if p.get("URL") != cmd.pool_url][:2]
    user = cmd.worker or (str(pools[0].get("User", "")) if pools else "") or cmd.device_id
    params = {"pool1": cmd.pool_url, "worker1": user, "passwd1": cmd.password or "x"}
    for i, p in enumerate(others, start=2):
        params |= {f"pool{i}": str(p.get("URL", "")), f"worker{i}": str(p.get("User", "")),
                   f"passwd{i}": "x"}
    r = await privileged(ep, timeout_s, "update_pools", **params)
    return "applied", f"update_pools {cmd.pool_url}: {r.get('Msg')}"


DIALECT = Dialect(
    name="whatsminer", requests=("summary+pools+devs", "status"), where=WHERE,
    actions={"SleepAsic": sleep, "WakeAsic": wake, "SetAsicPowerTarget": power_target,
             "SwitchAsicPool": switch_pool},
    prepare=token)
