"""LuxOS: the CGMiner RPC with sessions for writes.

LuxOS's write commands need a session: ``logon`` opens one (a miner has one session at a
time; when another is open, ``session`` names it and it is adopted), the command carries
the session id.  The session is kept for the next command (a grid programme's curtailment
is then one request per miner) and a new one is opened when the miner says it is no longer
valid.

* sleep / wake: ``curtail <sid>,sleep|wakeup``.
* power target: the highest-wattage profile at or under the target (``profiles`` lists
  them with their watts), ``profileset <sid>,<name>``.
* pool switch: ``pools``; ``addpool url,user,pass`` when the URL is not configured (the
  user is the command's worker, else the active pool's user); ``switchpool n``.
"""

from __future__ import annotations

from typing import Any

from connectors.cgminer import LUXOS, AsicEndpoint, parse_reply, rpc
from connectors.firmware import Dialect, Outcome, Refused
from schemas.commands import SetAsicPowerTarget, SwitchAsicPool

ACCESS_DENIED = 45
INVALID_SESSION = 110

#: host -> the LuxOS session id last opened or adopted there (shared by every command)
SESSIONS: dict[str, str] = {}


class RpcRefused(Refused):
    """The miner answered with a cgminer error (``STATUS: E``)."""

    def __init__(self, command: str, code: int, msg: str) -> None:
        super().__init__(f"{command}: {msg} (code {code})")
        self.code = code


async def call(ep: AsicEndpoint, timeout_s: float, command: str,
               parameter: str | None = None) -> dict[str, Any]:
    """One request; a cgminer error reply raises RpcRefused."""
    reply = parse_reply(await rpc(ep.host, ep.port, command, parameter, timeout_s))
    status = (reply.get("STATUS") or [{}])[0]
    if isinstance(status, dict) and status.get("STATUS") in ("E", "F"):
        raise RpcRefused(command, int(status.get("Code", 0)), str(status.get("Msg", "")))
    return reply


async def session(ep: AsicEndpoint, timeout_s: float) -> str:
    """Open a LuxOS session, or adopt the one already open (one per miner)."""
    try:
        sid = str((await call(ep, timeout_s, "logon"))["SESSION"][0]["SessionID"])
    except RpcRefused as exc:
        if exc.code != ACCESS_DENIED:
            raise
        sid = str((await call(ep, timeout_s, "session"))["SESSION"][0]["SessionID"])
    SESSIONS[ep.host] = sid
    return sid


async def privileged(ep: AsicEndpoint, timeout_s: float, command: str,
                     *args: str) -> dict[str, Any]:
    """A write command inside the miner's session (a stale one is replaced once)."""
    sid = SESSIONS.get(ep.host) or await session(ep, timeout_s)
    try:
        return await call(ep, timeout_s, command, ",".join((sid, *args)))
    except RpcRefused as exc:
        if exc.code != INVALID_SESSION:
            raise
        sid = await session(ep, timeout_s)
        return await call(ep, timeout_s, command, ",".join((sid, *args)))


async def sleep(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    r = await privileged(ep, timeout_s, "curtail", "sleep")
    return "applied", str(r["STATUS"][0].get("Msg", "Curtail sleep"))


async def wake(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    r = await privileged(ep, timeout_s, "curtail", "wakeup")
    return "applied", str(r["STATUS"][0].get("Msg", "Curtail wakeup"))


async def power_target(ep: AsicEndpoint, cmd: SetAsicPowerTarget, timeout_s: float) -> Outcome:
    profiles = (await call(ep, timeout_s, "profiles")).get("PROFILES", [])
    fitting = [p for p in profiles if float(p.get("Watts", 0)) <= cmd.power_target_w]
    if not fitting:
        lowest = min((float(p.get("Watts", 0)) for p in profiles), default=0.0)
        return "rejected", (f"no profile at or under {cmd.power_target_w:g} W "
                            f"(lowest {lowest:g} W)")
    best = max(fitting, key=lambda p: float(p.get("Watts", 0)))
    await privileged(ep, timeout_s, "profileset", str(best["Profile Name"]))
    return "applied", f"profile {best['Profile Name']} ({float(best['Watts']):g} W)"


async def switch_pool(ep: AsicEndpoint, cmd: SwitchAsicPool, timeout_s: float) -> Outcome:
    """``pools``, ``addpool`` when needed, ``switchpool n`` (cgminer's pool commands)."""
    pools = (await call(ep, timeout_s, "pools")).get("POOLS", [])
    index = next((int(p["POOL"]) for p in pools if p.get("URL") == cmd.pool_url), None)
    if index is None:
        active = next((p for p in pools if p.get("Stratum Active")), pools[0] if pools else {})
        user = cmd.worker or str(active.get("User", "")) or cmd.device_id
        await call(ep, timeout_s, "addpool", f"{cmd.pool_url},{user},{cmd.password}")
        pools = (await call(ep, timeout_s, "pools")).get("POOLS", [])
        index = next((int(p["POOL"]) for p in pools if p.get("URL") == cmd.pool_url), None)
        if index is None:
            return "failed", f"pool {cmd.pool_url} added but not listed"
    await call(ep, timeout_s, "switchpool", str(index))
    return "applied", f"switched to pool {index} {cmd.pool_url}"


DIALECT = Dialect(
    name="luxos", requests=("summary+pools+stats+power+config+version",), where=LUXOS,
    actions={"SleepAsic": sleep, "WakeAsic": wake, "SetAsicPowerTarget": power_target,
             "SwitchAsicPool": switch_pool},
    prepare=lambda ep, timeout_s: session(ep, timeout_s))
