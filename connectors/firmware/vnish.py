"""VNish (AnthillOS) on Antminers: the bmminer RPC to read, its ``/api/v1`` web API for the rest.

Where the values live (VNish's web API, the one its UI uses; the fields pyasic's VNish
backend reads): hashrate, pools, fans and temperatures in the RPC as on stock firmware
(``summary+pools+stats+version``); power (``miner.power_usage``) and whether it mines
(``miner.miner_status.miner_state``: ``stopped`` is a sleep) in the web ``summary``, read
every sweep with a kept token (connectors/httplite.py: httpx would cost more CPU per
request than the whole RPC read).  Login: ``POST /api/v1/unlock {"pw"}`` -> a token sent as
``Authorization`` (factory password ``admin``).

Commands: sleep / wake ``POST mining/stop|start``; power target: the highest tuned preset
(``GET autotune/presets``, named by watts) at or under the target, ``POST settings`` with
``miner.overclock.preset``; pools: ``POST settings`` with ``miner.pools``, the new one first.
"""

from __future__ import annotations

from typing import Any

import orjson

from connectors import httplite
from connectors.cgminer import (
    AsicEndpoint,
    Locations,
    _temps,
    merged_stats,
    stats_fans,
    watts_at,
)
from connectors.firmware import AuthFailed, Dialect, Outcome, Refused

FACTORY_PASSWORD = "admin"
MAX_WEB_BYTES = 256 << 10
#: host -> the web API token last issued there
TOKENS: dict[str, str] = {}


async def _call(ep: AsicEndpoint, method: str, path: str, timeout_s: float,
                body: Any = None, token: str = "") -> httplite.Reply:
    return await httplite.request(
        ep.host, ep.web_port, method, f"/api/v1/{path}", timeout_s=timeout_s,
        body=orjson.dumps(body) if body is not None else b"", max_bytes=MAX_WEB_BYTES,
        headers={"Authorization": token} if token else None)


async def _unlock(ep: AsicEndpoint, timeout_s: float) -> str:
    r = await _call(ep, "POST", "unlock", timeout_s, {"pw": ep.password or FACTORY_PASSWORD})
    if r.status in (401, 403):
        raise AuthFailed(f"web login refused (check the inventory's credentials for "
                         f"{ep.device_id})")
    token = _json(r, "unlock").get("token")
    if not isinstance(token, str) or not token:
        raise Refused("unlock: no token in the answer")
    TOKENS[ep.host] = token
    return token


def _json(r: httplite.Reply, what: str) -> Any:
    if r.status != 200:
        raise Refused(f"{what}: HTTP {r.status} {r.body[:200]!r}")
    try:
        return orjson.loads(r.body or b"{}")
    except orjson.JSONDecodeError:
        raise Refused(f"{what}: not JSON") from None


async def web(ep: AsicEndpoint, path: str, timeout_s: float,
              body: dict[str, Any] | None = None) -> Any:
    """One API call with the kept token (a refused token is renewed once)."""
    token = TOKENS.get(ep.host) or await _unlock(ep, timeout_s)
    for attempt in (0, 1):
        r = await _call(ep, "POST" if body is not None else "GET", path, timeout_s, body,
                        token)
        if r.status == 401 and attempt == 0:
            token = await _unlock(ep, timeout_s)
            continue
        return _json(r, path)
    raise Refused(f"{path}: unauthorised")  # pragma: no cover - the loop returns or raises


async def web_summary(ep: AsicEndpoint, reply: dict[str, Any], timeout_s: float) -> None:
    """Add the web summary (power, state) to the RPC reply; {} when the web API fails
    (the RPC's values stand; power falls back to the nameplate).  A refused login is
    raised: the inventory's credentials are wrong, which an operator must hear about."""
    try:
        reply["web_summary"] = await web(ep, "summary", timeout_s)
    except AuthFailed:
        raise
    except (Refused, OSError, TimeoutError):
        reply["web_summary"] = {}


def _miner(r: dict[str, Any]) -> dict[str, Any]:
    s = r.get("web_summary")
    m = s.get("miner") if isinstance(s, dict) else None
    return m if isinstance(m, dict) else {}


def _sleeping(r: dict[str, Any]) -> bool | None:
    status = _miner(r).get("miner_status")
    state = status.get("miner_state") if isinstance(status, dict) else None
    return None if not isinstance(state, str) else state in ("stopped", "shutting-down")


def _model(r: dict[str, Any]) -> str:
    stats = merged_stats(r)
    return str(stats.get("Type") or "").split(" (")[0]


WHERE = Locations(
    power_w=lambda r: watts_at(_miner(r), "power_usage"),
    chip_c=lambda r: _temps(merged_stats(r), "temp_chip"),
    board_c=lambda r: _temps(merged_stats(r), "temp_pcb"),
    fans=stats_fans,
    sleeping=_sleeping,
    model=_model)


async def sleep(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    await web(ep, "mining/stop", timeout_s, {})
    return "applied", "mining/stop"


async def wake(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    await web(ep, "mining/start", timeout_s, {})
    return "applied", "mining/start"


async def power_target(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    presets = await web(ep, "autotune/presets", timeout_s)
    watts = sorted(int(p["name"]) for p in presets if isinstance(p, dict)
                   and str(p.get("name", "")).isdigit() and p.get("status", "tuned") == "tuned")
    fitting = [w for w in watts if w <= cmd.power_target_w]
    if not fitting:
        return "rejected", (f"no tuned preset at or under {cmd.power_target_w:g} W "
                            f"(lowest {watts[0] if watts else 0} W)")
    await web(ep, "settings", timeout_s, {"miner": {"overclock": {"preset": str(fitting[-1])}}})
    return "applied", f"preset {fitting[-1]} W"


async def switch_pool(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    settings = await web(ep, "settings", timeout_s)
    pools = [p for p in ((settings.get("miner") or {}).get("pools") or [])
             if isinstance(p, dict)]
    user = cmd.worker or (str(pools[0].get("user", "")) if pools else "") or cmd.device_id
    rest = [p for p in pools if p.get("url") != cmd.pool_url]
    await web(ep, "settings", timeout_s, {"miner": {"pools": [
        {"url": cmd.pool_url, "user": user, "pass": cmd.password or "x"}, *rest][:3]}})
    return "applied", f"pool {cmd.pool_url} first"


DIALECT = Dialect(
    name="vnish", requests=("summary+pools+stats+version",), where=WHERE, extra=web_summary,
    actions={"SleepAsic": sleep, "WakeAsic": wake, "SetAsicPowerTarget": power_target,
             "SwitchAsicPool": switch_pool},
    prepare=_unlock)
