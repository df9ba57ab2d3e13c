"""The ASIC actuator: ``commands.asic`` -> the miner's firmware dialect -> one ack.

One canonical command, the dialect at the edge (STYLE.md 8): connectors/firmware/ has, per
firmware, one coroutine per command it can carry out (LuxOS ``curtail`` in a session,
Braiins ``pause``/``resume``, Antminer stock's web ``set_miner_conf``, Whatsminer's
encrypted ``power_off``/``power_on``...).  A command a firmware cannot do is a ``rejected``
ack that names the firmware and why (Antminer stock has no power targets).

Outcomes: ``applied``; ``rejected`` for what the miner or the safety limits refuse (the
firmware's error text is the detail), for refused credentials, for a device that is in
maintenance, or one this actuator does not know; ``failed`` for transport errors and
timeouts.  Decoding, dedup by ``command_id``, expiry, bounded concurrency and the one ack
per command are the ``CommandConsumer``'s.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from connectors.cgminer import AsicEndpoint, CgminerDecodeError
from connectors.firmware import AuthFailed, Outcome, Refused, dialect, identify
from connectors.firmware import luxos as _luxos
from schemas.commands import SetAsicPowerTarget
from schemas.envelope import Command
from schemas.site import DIALECTS

SOURCE = "actuator:asic"
RpcRefused = _luxos.RpcRefused


@dataclass(frozen=True, slots=True)
class SafetyLimits:
    """What the actuator refuses whoever asks."""

    min_power_w: float = 500.0
    max_power_w: float = 6000.0
    maintenance: frozenset[str] = frozenset()  # devices no command may touch





class AsicActuator:
    """Apply ASIC commands to the miners of ``endpoints`` (device id -> where and what)."""

    def __init__(self, endpoints: list[AsicEndpoint], *, timeout_s: float = 3.0,
                 limits: SafetyLimits = SafetyLimits()) -> None:
        self.endpoints = {e.device_id: e for e in endpoints}
        self.timeout_s, self.limits = timeout_s, limits
        self.sessions = _luxos.SESSIONS  # LuxOS session ids by host (kept between commands)
        self.identified: dict[str, str] = {}  # device -> firmware found for "auto"

    @property
    def targets(self) -> set[str]:
        return set(self.endpoints)

    async def prepare(self, concurrency: int = 64) -> int:
        """Log in to every miner whose firmware needs it (tokens, sessions) before the first
        command, so that a grid dip pays for none; failures are left to the command."""
        sem = asyncio.Semaphore(concurrency)

        async def one(ep: AsicEndpoint) -> bool:
            if ep.dialect == "auto" or ep.device_id in self.limits.maintenance:
                return False
            login = dialect(ep.dialect).prepare if ep.dialect in DIALECTS else None
            if login is None:
                return False
            async with sem:
                try:
                    await login(ep, self.timeout_s)
                    return True
                except (Refused, OSError, TimeoutError, ValueError):
                    return False

        return sum(await asyncio.gather(*(one(ep) for ep in self.endpoints.values())))

    async def __call__(self, cmd: Command) -> Outcome:
        """Handle one command (the CommandConsumer's handler)."""
        ep = self.endpoints.get(cmd.device_id)
        if ep is None:
            return "rejected", f"unknown device {cmd.device_id!r}"
        if cmd.device_id in self.limits.maintenance:
            return "rejected", f"{cmd.device_id} is in maintenance: commands are refused"
        if isinstance(cmd, SetAsicPowerTarget):
            lim = self.limits
            if not lim.min_power_w <= cmd.power_target_w <= lim.max_power_w:
                return "rejected", (f"power target {cmd.power_target_w:g} W outside the "
                                    f"safety band {lim.min_power_w:g}-{lim.max_power_w:g} W")
        try:
            firmware = ep.dialect
            if firmware == "auto":
                firmware = self.identified.get(ep.device_id) or (
                    await identify(ep.host, ep.port, self.timeout_s))[0]
                self.identified[ep.device_id] = firmware
            try:
                d = dialect(firmware)
            except KeyError:
                return "rejected", f"firmware {firmware!r} is not spoken by hashplane yet"
            action = d.actions.get(cmd.kind)
            if action is None:
                why = d.unsupported.get(cmd.kind) or f"{cmd.kind} is not an ASIC command"
                return "rejected", f"{firmware}: {why}"
            return await action(ep, cmd, self.timeout_s)
        except AuthFailed as exc:
            return "rejected", f"authentication failed: {exc}"
        except Refused as exc:
            return "rejected", f"miner refused {exc}"
        except ValueError as exc:  # auto: could not identify the firmware
            return "failed", f"{exc} ({ep.host}:{ep.port})"
        except (OSError, TimeoutError, CgminerDecodeError) as exc:  # httplite: OSError too
            return "failed", f"{type(exc).__name__}: {exc or 'no answer'} ({ep.host}:{ep.port})"
