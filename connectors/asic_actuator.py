"""The ASIC actuator: ``commands.asic`` -> the miner's CGMiner RPC (LuxOS dialect) -> one ack.

One canonical command, the dialect at the edge (STYLE.md 8): each command kind maps to a
short RPC sequence.  LuxOS's write commands need a session: ``logon`` opens one (a miner
has one session at a time; when another is open, ``session`` names it and it is adopted),
the command carries the session id.  The actuator keeps each miner's session for the next
command (a grid programme's curtailment is one request per miner) and opens a new one when
the miner says it is no longer valid.

* ``SleepAsic`` / ``WakeAsic``: ``curtail <sid>,sleep|wakeup``.
* ``SetAsicPowerTarget``: the highest-wattage profile at or under the target (``profiles``
  lists them with their watts), ``profileset <sid>,<name>``; a target outside the configured
  safety band is refused before the miner is touched.
* ``SwitchAsicPool``: ``pools``; ``addpool url,user,pass`` when the URL is not configured
  (the user is the command's worker, else the active pool's user); ``switchpool n``.

Outcomes: ``applied``; ``rejected`` for what the miner or the safety limits refuse (the
cgminer error text is the detail), for a device that is in maintenance, or one this
actuator does not know; ``failed`` for transport errors and timeouts.  Decoding, dedup by
``command_id``, expiry, bounded concurrency and the one ack per command are the
``CommandConsumer``'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from connectors.cgminer import AsicEndpoint, CgminerDecodeError, parse_reply, rpc
from schemas.commands import AckStatus, SetAsicPowerTarget, SleepAsic, SwitchAsicPool, WakeAsic
from schemas.envelope import Command

SOURCE = "actuator:asic"
ACCESS_DENIED = 45
INVALID_SESSION = 110


class RpcRefused(Exception):
    """The miner answered with a cgminer error (``STATUS: E``)."""

    def __init__(self, command: str, code: int, msg: str) -> None:
        super().__init__(f"{command}: {msg} (code {code})")
        self.code = code


@dataclass(frozen=True, slots=True)
class SafetyLimits:
    """What the actuator refuses whoever asks."""

    min_power_w: float = 500.0
    max_power_w: float = 6000.0
    maintenance: frozenset[str] = frozenset()  # devices no command may touch


class LuxosMiner:
    """The RPC conversation with one miner.  ``sessions`` (host -> session id) is shared
    by the actuator, so a session opened for one command serves the next ones: a
    curtailment is then one request per miner, not three."""

    def __init__(self, ep: AsicEndpoint, timeout_s: float,
                 sessions: dict[str, str] | None = None) -> None:
        self.ep, self.timeout_s = ep, timeout_s
        self.sessions = sessions if sessions is not None else {}

    async def call(self, command: str, parameter: str | None = None) -> dict[str, Any]:
        """One request; a cgminer error reply raises RpcRefused."""
        reply = parse_reply(await rpc(self.ep.host, self.ep.port, command, parameter,
                                      self.timeout_s))
        status = (reply.get("STATUS") or [{}])[0]
        if status.get("STATUS") in ("E", "F"):
            raise RpcRefused(command, int(status.get("Code", 0)), str(status.get("Msg", "")))
        return reply

    async def session(self) -> str:
        """Open a LuxOS session, or adopt the one already open (one per miner)."""
        try:
            sid = str((await self.call("logon"))["SESSION"][0]["SessionID"])
        except RpcRefused as exc:
            if exc.code != ACCESS_DENIED:
                raise
            sid = str((await self.call("session"))["SESSION"][0]["SessionID"])
        self.sessions[self.ep.host] = sid
        return sid

    async def privileged(self, command: str, *args: str) -> dict[str, Any]:
        """A write command inside the miner's session (a stale one is replaced once)."""
        sid = self.sessions.get(self.ep.host) or await self.session()
        try:
            return await self.call(command, ",".join((sid, *args)))
        except RpcRefused as exc:
            if exc.code != INVALID_SESSION:
                raise
            sid = await self.session()
            return await self.call(command, ",".join((sid, *args)))


Outcome = tuple[AckStatus, str]


class AsicActuator:
    """Apply ASIC commands to the miners of ``endpoints`` (device id -> RPC address)."""

    def __init__(self, endpoints: list[AsicEndpoint], *, timeout_s: float = 3.0,
                 limits: SafetyLimits = SafetyLimits()) -> None:
        self.endpoints = {e.device_id: e for e in endpoints}
        self.timeout_s, self.limits = timeout_s, limits
        self.sessions: dict[str, str] = {}
        self.dialect: dict[type[Command], Callable[[LuxosMiner, Any], Awaitable[Outcome]]] = {
            SleepAsic: self._sleep, WakeAsic: self._wake,
            SetAsicPowerTarget: self._power_target, SwitchAsicPool: self._switch_pool}

    @property
    def targets(self) -> set[str]:
        return set(self.endpoints)

    async def __call__(self, cmd: Command) -> Outcome:
        """Handle one command (the CommandConsumer's handler)."""
        ep = self.endpoints.get(cmd.device_id)
        if ep is None:
            return "rejected", f"unknown device {cmd.device_id!r}"
        if cmd.device_id in self.limits.maintenance:
            return "rejected", f"{cmd.device_id} is in maintenance: commands are refused"
        action = self.dialect.get(type(cmd))
        if action is None:
            return "rejected", f"{cmd.kind} is not an ASIC command"
        try:
            return await action(LuxosMiner(ep, self.timeout_s, self.sessions), cmd)
        except RpcRefused as exc:
            return "rejected", f"miner refused {exc}"
        except (OSError, TimeoutError, CgminerDecodeError) as exc:
            return "failed", f"{type(exc).__name__}: {exc or 'no answer'} ({ep.host}:{ep.port})"

    async def _sleep(self, m: LuxosMiner, cmd: SleepAsic) -> Outcome:
        r = await m.privileged("curtail", "sleep")
        return "applied", str(r["STATUS"][0].get("Msg", "Curtail sleep"))

    async def _wake(self, m: LuxosMiner, cmd: WakeAsic) -> Outcome:
        r = await m.privileged("curtail", "wakeup")
        return "applied", str(r["STATUS"][0].get("Msg", "Curtail wakeup"))

    async def _power_target(self, m: LuxosMiner, cmd: SetAsicPowerTarget) -> Outcome:
        lim = self.limits
        if not lim.min_power_w <= cmd.power_target_w <= lim.max_power_w:
            return "rejected", (f"power target {cmd.power_target_w:g} W outside the safety band "
                                f"{lim.min_power_w:g}-{lim.max_power_w:g} W")
        profiles = (await m.call("profiles")).get("PROFILES", [])
        fitting = [p for p in profiles if float(p.get("Watts", 0)) <= cmd.power_target_w]
        if not fitting:
            lowest = min((float(p.get("Watts", 0)) for p in profiles), default=0.0)
            return "rejected", (f"no profile at or under {cmd.power_target_w:g} W "
                                f"(lowest {lowest:g} W)")
        best = max(fitting, key=lambda p: float(p.get("Watts", 0)))
        await m.privileged("profileset", str(best["Profile Name"]))
        return "applied", f"profile {best['Profile Name']} ({float(best['Watts']):g} W)"

    async def _switch_pool(self, m: LuxosMiner, cmd: SwitchAsicPool) -> Outcome:
        pools = (await m.call("pools")).get("POOLS", [])
        index = next((int(p["POOL"]) for p in pools if p.get("URL") == cmd.pool_url), None)
        if index is None:
            active = next((p for p in pools if p.get("Stratum Active")), pools[0] if pools else {})
            user = cmd.worker or str(active.get("User", "")) or cmd.device_id
            await m.call("addpool", f"{cmd.pool_url},{user},{cmd.password}")
            pools = (await m.call("pools")).get("POOLS", [])
            index = next((int(p["POOL"]) for p in pools if p.get("URL") == cmd.pool_url), None)
            if index is None:
                return "failed", f"pool {cmd.pool_url} added but not listed"
        await m.call("switchpool", str(index))
        return "applied", f"switched to pool {index} {cmd.pool_url}"
