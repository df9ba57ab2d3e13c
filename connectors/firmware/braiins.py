"""Braiins OS / OS+ (BOSminer): the CGMiner RPC with its own reads, ``pause`` / ``resume``.

Where the values live (Braiins' API documentation; the same fields pyasic's BOSMiner backend
reads): hashrate in ``summary``; temperatures per hashboard in ``temps`` (``Chip``,
``Board``); fans in ``fans`` (``RPM``); power in ``tunerstatus``
(``ApproximateMinerPowerConsumption``); the model in ``devdetails`` (``Bitmain Antminer
S19j Pro``), read once by identification or discovery and kept in the inventory, not every
sweep.  It does not say whether it is paused: no hashrate at idle draw is a sleep.
Power targets are set through Braiins' gRPC API, which hashplane does not speak yet: the
command is rejected with that reason.
"""

from __future__ import annotations

from typing import Any

from connectors.cgminer import AsicEndpoint, Locations, _num, _section, watts_at
from connectors.firmware import Dialect, Outcome
from connectors.firmware.luxos import call, switch_pool


def _temps(reply: dict[str, Any], key: str) -> list[float]:
    return [t for t in (_num(r.get(key)) for r in _section(reply, "temps", "TEMPS")) if t]


def _power(reply: dict[str, Any]) -> float | None:
    rows = _section(reply, "tunerstatus", "TUNERSTATUS")
    return watts_at(rows[0], "ApproximateMinerPowerConsumption") if rows else None


def _model(reply: dict[str, Any]) -> str:
    rows = _section(reply, "devdetails", "DEVDETAILS")
    return str(rows[0].get("Model", "")).removeprefix("Bitmain ") if rows else ""


WHERE = Locations(
    power_w=_power,
    chip_c=lambda r: _temps(r, "Chip"),
    board_c=lambda r: _temps(r, "Board"),
    fans=lambda r: [int(v) for v in (_num(f.get("RPM")) for f in _section(r, "fans", "FANS"))
                    if v is not None],
    sleeping=lambda r: None,
    model=_model)


async def sleep(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    r = await call(ep, timeout_s, "pause")
    return "applied", str(r["STATUS"][0].get("Msg", "Paused"))


async def wake(ep: AsicEndpoint, cmd: Any, timeout_s: float) -> Outcome:
    r = await call(ep, timeout_s, "resume")
    return "applied", str(r["STATUS"][0].get("Msg", "Resumed"))


DIALECT = Dialect(
    name="braiins",
    requests=("summary+pools+temps+fans+tunerstatus",), where=WHERE,
    actions={"SleepAsic": sleep, "WakeAsic": wake, "SwitchAsicPool": switch_pool},
    unsupported={"SetAsicPowerTarget": "Braiins OS sets power targets through its gRPC API "
                 "(not spoken by hashplane yet), not the RPC"})
