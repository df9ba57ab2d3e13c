"""Antminer stock firmware (bmminer): the RPC to read, the web UI's CGI API to write.

Where the values live (Bitmain's cgminer API; the fields pyasic's Antminer backend reads):
hashrate in ``summary`` (GH/s); fans (``fan1..``) and temperatures (``temp_chip1..``,
``temp_pcb1..`` as ``a-b-c-d``) in ``stats``; the model in ``version`` (``Type``).  Stock
firmware reports no power: the inventory's ``nameplate_w`` stands in while it hashes.
Whether it sleeps is in the web UI's ``get_miner_conf.cgi`` (``bitmain-work-mode`` 1), read
only when the RPC shows no hashrate, so the sweep stays one RPC request per miner.

Writes: ``set_miner_conf.cgi`` with HTTP digest authentication (realm ``antMiner
Configuration``; the factory login is root/root; connectors/httplite.py), posting the
current conf back with ``miner-mode`` 1 (sleep) or 0 (normal), or with the new pool
first.  Stock firmware has modes, not power targets: that command is rejected.
"""

from __future__ import annotations

from typing import Any

import orjson

from connectors import httplite
from connectors.cgminer import (
    AsicEndpoint,
    Locations,
    _section,
    _temps,
    merged_stats,
    stats_fans,
    version_type,
)
from connectors.firmware import AuthFailed, Dialect, Outcome, Refused

FACTORY_LOGIN = ("root", "root")
MAX_WEB_BYTES = 256 << 10


def _login(ep: AsicEndpoint) -> tuple[str, str]:
    return (ep.username or FACTORY_LOGIN[0], ep.password or FACTORY_LOGIN[1])


async def web(ep: AsicEndpoint, cgi: str, timeout_s: float,
              body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One CGI call; AuthFailed on a refused login, Refused on anything not JSON."""
    r = await httplite.request(
        ep.host, ep.web_port, "POST" if body is not None else "GET", f"/cgi-bin/{cgi}.cgi",
        body=orjson.dumps(body) if body is not None else b"", timeout_s=timeout_s,
        max_bytes=MAX_WEB_BYTES, digest=_login(ep))
    if r.status == 401:
        raise AuthFailed(f"web login refused for user {_login(ep)[0]!r} (check the "
                         f"inventory's credentials for {ep.device_id})")
    if r.status != 200:
        raise Refused(f"{cgi}: HTTP {r.status}")
    try:
        out = orjson.loads(r.body)
    except orjson.JSONDecodeError:
        raise Refused(f"{cgi}: not JSON") from None
    if not isinstance(out, dict):
        raise Refused(f"{cgi}: not a JSON object")
    return out


async def conf_when_idle(ep: AsicEndpoint, reply: dict[str, Any], timeout_s: float) -> None:
    """Add the web conf to a reply that shows no hashrate (is it asleep, or failing?)."""
    summary = _section(reply, "summary", "SUMMARY")
    if summary and float(summary[0].get("GHS 5s") or 0) > 0:
        return
    try:
        reply["web_conf"] = await web(ep, "get_miner_conf", timeout_s)
    except AuthFailed:
        raise  # wrong credentials: the operator must hear about it (a dead letter, an alert)
    except (Refused, OSError, TimeoutError):
        reply["web_conf"] = {}


def _sleeping(reply: dict[str, Any]) -> bool | None:
    conf = reply.get("web_conf")
    if not isinstance(conf, dict) or "bitmain-work-mode" not in conf:
        return False if conf is None else None
    return str(conf["bitmain-work-mode"]) == "1"


WHERE = Locations(
    power_w=lambda r: None,
    chip_c=lambda r: _temps(merged_stats(r), "temp_chip"),
    board_c=lambda r: _temps(merged_stats(r), "temp_pcb"),
    fans=stats_fans,
    sleeping=_sleeping,
    model=version_type)


def _written(r: dict[str, Any]) -> Outcome:
    if str(r.get("stats", "")).lower() == "success" or r.get("code") == "M000":
        return "applied", f"set_miner_conf: {r.get('msg', 'OK')}"
    raise Refused(f"set_miner_conf: {r.get('msg') or r.get('code') or r}")


def _conf_body(conf: dict[str, Any], mode: int) -> dict[str, Any]:
    body = {k: v for k, v in conf.items() if k.startswith("bitmain-") or k == "pools"}
    body.pop("bitmain-work-mode", None)
    body["miner-mode"] = mode
    return body


async def _mode(ep: AsicEndpoint, timeout_s: float, mode: int) -> Outcome:
    conf = await web(ep, "get_miner_conf", timeout_s)
    return _written(await web(ep, "set_miner_conf", timeout_s, _conf_body(conf, mode)))


async def sleep(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    return await _mode(ep, timeout_s, 1)


async def wake(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    return await _mode(ep, timeout_s, 0)


async def switch_pool(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    conf = await web(ep, "get_miner_conf", timeout_s)
    pools = [p for p in conf.get("pools", []) if isinstance(p, dict)]
    user = cmd.worker or (str(pools[0].get("user", "")) if pools else "") or cmd.device_id
    rest = [p for p in pools if p.get("url") != cmd.pool_url]
    body = _conf_body(conf, 1 if str(conf.get("bitmain-work-mode")) == "1" else 0)
    body["pools"] = [{"url": cmd.pool_url, "user": user, "pass": cmd.password or "x"},
                     *rest][:3]
    outcome = _written(await web(ep, "set_miner_conf", timeout_s, body))
    return outcome[0], f"pool {cmd.pool_url} first ({outcome[1]})"


DIALECT = Dialect(
    name="antminer", requests=("summary+pools+stats+version",), where=WHERE,
    extra=conf_when_idle,
    actions={"SleepAsic": sleep, "WakeAsic": wake, "SwitchAsicPool": switch_pool},
    unsupported={"SetAsicPowerTarget": "Antminer stock firmware has work modes (normal, "
                 "low power, sleep), not power targets"})
