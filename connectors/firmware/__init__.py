"""ASIC firmware dialects: where each value lives and how each command is sent.

One canonical command, dialects at the edge (STYLE.md 7-8).  A dialect is data plus a few
small functions: which RPC requests make one telemetry read, a ``Locations`` table of where
each value lives in the reply (connectors/cgminer.py), an optional extra read, and one
coroutine per command it can carry out.  A command a firmware cannot do has no entry and
the actuator answers a typed ``rejected`` ack naming the firmware.

* luxos: read ``summary+pools+stats+power+config+version``; sleep/wake ``curtail``,
  power target ``profileset`` (both in a session); pools ``addpool``/``switchpool``.
* braiins: read ``summary+pools+temps+fans+tunerstatus`` (the model from the inventory);
  sleep/wake ``pause``/``resume``; pools ``addpool``/``switchpool``; no power target on
  the RPC (Braiins' gRPC API).
* antminer (stock): read ``summary+pools+stats+version`` (+ the web conf when it hashes
  nothing); sleep/wake and pools through the web UI's ``set_miner_conf`` (digest auth);
  no power targets in stock firmware.
* whatsminer: read ``summary+pools+devs`` and ``status`` (which does not combine);
  ``power_off``/``power_on``, ``adjust_power_limit``, ``update_pools`` (token + AES).
* vnish: read ``summary+pools+stats+version`` and the web ``summary`` (power, state);
  ``mining/stop|start``, power presets and pools through ``/api/v1`` (token).

Why our own clients and not pyasic (README, "Firmware dialects"): one request per miner
per sweep where pyasic makes six to eight, no per-call HTTP client or identification
round, and a typed outcome per command instead of pyasic's ``True``/``False`` -- at
10,000 miners the sweep and a grid dip's fan-out are what matter.  pyasic stays the
independent client the simulator is tested against.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.cgminer import LUXOS, AsicEndpoint, Locations, parse_reply, parse_reply_async, rpc
from schemas.commands import AckStatus

Outcome = tuple[AckStatus, str]
#: ``(endpoint, command, timeout_s) -> outcome``
Action = Callable[[AsicEndpoint, Any, float], Awaitable[Outcome]]
#: An extra read that completes the reply (e.g. Antminer's web conf when it hashes nothing)
Extra = Callable[[AsicEndpoint, dict[str, Any], float], Awaitable[None]]


class Refused(Exception):
    """The miner refused a command (its own words are the message)."""


class AuthFailed(Refused):
    """The miner refused our login: wrong credentials in the inventory."""


@dataclass(frozen=True)
class Dialect:
    """One firmware's telemetry table and command set."""

    name: str
    requests: tuple[str, ...]
    where: Locations
    extra: Extra | None = None
    actions: dict[str, Action] = field(default_factory=dict)  # command kind -> action
    #: command kind -> why this firmware cannot do it (the rejection's reason)
    unsupported: dict[str, str] = field(default_factory=dict)
    #: a login done ahead of the first command (a token, a session), so that a grid dip
    #: does not pay for it
    prepare: Callable[[AsicEndpoint, float], Awaitable[Any]] | None = None

    async def read(self, ep: AsicEndpoint, timeout_s: float,
                   max_bytes: int) -> tuple[bytes, dict[str, Any]]:
        """One telemetry read: the raw bytes (for a dead letter) and the merged reply."""
        if len(self.requests) == 1:
            raw = await rpc(ep.host, ep.port, self.requests[0], timeout_s=timeout_s,
                            max_bytes=max_bytes)
            return raw, (await parse_reply_async(raw) if raw else {})
        raws = [await rpc(ep.host, ep.port, c, timeout_s=timeout_s, max_bytes=max_bytes)
                for c in self.requests]
        if not all(raws):
            return b"", {}
        reply: dict[str, Any] = {}
        for c, r in zip(self.requests, raws, strict=True):
            part = await parse_reply_async(r)
            reply.update(part if "+" in c else {c: [part]})
        return b"\n".join(raws), reply


def registry() -> dict[str, Dialect]:
    """Every dialect by name (built once; the modules import this package's types)."""
    from connectors.firmware import antminer, braiins, luxos, vnish, whatsminer

    return {d.name: d for d in (luxos.DIALECT, braiins.DIALECT, antminer.DIALECT,
                                whatsminer.DIALECT, vnish.DIALECT)}


_REGISTRY: dict[str, Dialect] = {}


def dialect(name: str) -> Dialect:
    """The dialect called ``name`` (KeyError for one we do not speak)."""
    if not _REGISTRY:
        _REGISTRY.update(registry())
    return _REGISTRY[name]


def classify(text: str) -> str | None:
    """The firmware a ``version`` reply (or its error) names, the way field tools tell them
    apart; None when it names none we know."""
    up = text.upper()
    for marker, name in (("LUXMINER", "luxos"), ("BOSMINER", "braiins"), ("BOSER", "braiins"),
                         ("BTMINER", "whatsminer"), ("BITMICRO", "whatsminer"),
                         ("VNISH", "vnish"), ("BMMINER", "antminer"), ("ANTMINER", "antminer")):
        if marker in up:
            return name
    return None


async def identify(host: str, port: int = 4028, timeout_s: float = 2.0) -> tuple[str, str]:
    """``(firmware, model)`` of the miner at host:port from its ``version`` (and, for the
    firmwares whose version has no model, ``devdetails``); ValueError if unknown."""
    raw = await rpc(host, port, "version", timeout_s=timeout_s)
    text = raw.decode("utf-8", "replace")
    fw = classify(text)
    if fw is None:
        raise ValueError(f"unknown firmware: {text[:120]!r}")
    model = ""
    try:
        reply = parse_reply(raw)
        model = str(((reply.get("VERSION") or [{}])[0]).get("Type") or "")
        if not model:
            det = parse_reply(await rpc(host, port, "devdetails", timeout_s=timeout_s))
            model = str(((det.get("DEVDETAILS") or [{}])[0]).get("Model") or "")
            model = model.removeprefix("Bitmain ").replace("_", " ")
            if fw == "whatsminer" and model:
                model = f"WhatsMiner {model}"
    except (ValueError, OSError, TimeoutError):
        pass
    return fw, model


__all__ = ["LUXOS", "Action", "AuthFailed", "Dialect", "Outcome", "Refused", "classify",
           "dialect", "identify"]
