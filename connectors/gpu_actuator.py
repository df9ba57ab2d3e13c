"""The GPU actuator: ``commands.gpu`` -> RainbowMiner's config files and NVML -> one ack.

``ApplyGpuProfile`` becomes, for one GPU (``GPU#03`` in RainbowMiner's words):

* an OC profile in ``ocprofiles.config.txt`` (``PowerLimit`` as % of the card's default
  limit, which is how RainbowMiner reads it; ``CoreClockBoost``, ``MemoryClockBoost`` in MHz)
  named by the command or ``hashplane-GPU03``;
* that profile as the GPU's ``DefaultOCprofile`` in ``devices.config.txt``;
* an intensity, when given, as ``-i N`` in the GPU's own ``miners.config.txt`` entry
  (``<Miner>-GPU#03``, created from the model's entry), which makes RainbowMiner restart the
  miner, as it does for any miner-parameter change;
* RainbowMiner's OC reset (``/applyoc``) so the profile applies now, and the power limit
  set through NVML as well where the driver permits it (a refusal is reported, not fatal:
  RainbowMiner applies the profile's limit itself).

Every file is changed atomically (a temporary file in the same directory, fsync, rename), its
other keys kept as they were, and always written as valid JSON; a file that is not a JSON
object is not overwritten (the ack is ``rejected`` and says why).  Values are clamped to the
card's NVML limits and the configured offset and intensity bands; the ack says when.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from connectors.gpu_backend import GpuBackend, GpuBackendError, GpuReading
from schemas.commands import AckStatus, ApplyGpuProfile
from schemas.envelope import Command

SOURCE = "actuator:gpu"
Outcome = tuple[AckStatus, str]


class ConfigFileError(ValueError):
    """A RainbowMiner config file that is not a JSON object."""


def device_name(index: int) -> str:
    """RainbowMiner's name of GPU ``index``."""
    return f"GPU#{index:02d}"


def update_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to a JSON-object file atomically; other keys are kept."""
    try:
        data = json.loads(path.read_text() or "{}") if path.exists() else {}
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path.name} is not valid JSON ({exc}); not overwritten") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path.name} is a JSON {type(data).__name__}, not an object; "
                              "not overwritten")
    change(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class GpuLimits:
    """Bands outside which no command is applied as asked (the ack says it was clamped)."""

    core_offset_mhz: tuple[float, float] = (-300.0, 300.0)
    mem_offset_mhz: tuple[float, float] = (-1000.0, 2500.0)
    intensity: tuple[int, int] = (8, 25)


@dataclass
class Rig:
    """Where a rig's RainbowMiner and NVML are."""

    rig_id: str
    config_dir: Path
    api_url: str
    nvml: GpuBackend


def clamp(value: float, lo: float, hi: float, what: str, notes: list[str]) -> float:
    """``value`` within [lo, hi]; a note when it had to move."""
    out = min(hi, max(lo, value))
    if out != value:
        notes.append(f"{what} {value:g} clamped to {out:g}")
    return out


class GpuActuator:
    """Apply GPU commands to the rigs of ``rigs`` (rig id -> where it is)."""

    def __init__(self, rigs: list[Rig], *, limits: GpuLimits = GpuLimits(),
                 timeout_s: float = 5.0) -> None:
        self.rigs = {r.rig_id: r for r in rigs}
        self.limits, self.timeout_s = limits, timeout_s

    async def __call__(self, cmd: Command) -> Outcome:
        """Handle one command (the CommandConsumer's handler)."""
        if not isinstance(cmd, ApplyGpuProfile):
            return "rejected", f"{cmd.kind} is not a GPU command"
        rig = self.rigs.get(cmd.rig_id)
        if rig is None:
            return "rejected", f"unknown rig {cmd.rig_id!r}"
        try:
            reading = await asyncio.to_thread(rig.nvml.read, cmd.gpu_index)
        except GpuBackendError as exc:
            return "rejected", f"{cmd.rig_id} GPU {cmd.gpu_index}: {exc}"
        try:
            return await self._apply(rig, cmd, reading)
        except ConfigFileError as exc:
            return "rejected", str(exc)
        except (OSError, httpx.HTTPError) as exc:
            return "failed", f"{type(exc).__name__}: {exc}"

    async def _apply(self, rig: Rig, cmd: ApplyGpuProfile, r: GpuReading) -> Outcome:
        lim = self.limits
        notes: list[str] = []
        name = device_name(cmd.gpu_index)
        profile = cmd.profile or f"hashplane-{name.replace('#', '')}"
        pl = None if cmd.power_limit_w is None else clamp(
            cmd.power_limit_w, r.power_limit_min_w, r.power_limit_max_w, "power limit W", notes)
        core = None if cmd.core_offset_mhz is None else clamp(
            cmd.core_offset_mhz, *lim.core_offset_mhz, "core offset MHz", notes)
        mem = None if cmd.mem_offset_mhz is None else clamp(
            cmd.mem_offset_mhz, *lim.mem_offset_mhz, "memory offset MHz", notes)

        def oc(d: dict[str, Any]) -> None:
            p = dict(d.get(profile) or {})
            if pl is not None:
                p["PowerLimit"] = round(100.0 * pl / r.power_limit_default_w)
            if core is not None:
                p["CoreClockBoost"] = int(core)
            if mem is not None:
                p["MemoryClockBoost"] = int(mem)
            d[profile] = {"PowerLimit": 0, "CoreClockBoost": "*", "MemoryClockBoost": "*", **p}

        def device(d: dict[str, Any]) -> None:
            d[name] = {**(d.get(name) or {}), "DefaultOCprofile": profile}

        cfg = rig.config_dir
        await asyncio.to_thread(update_json, cfg / "ocprofiles.config.txt", oc)
        await asyncio.to_thread(update_json, cfg / "devices.config.txt", device)
        if cmd.intensity is not None:
            i = int(clamp(cmd.intensity, *lim.intensity, "intensity", notes))
            await asyncio.to_thread(update_json, cfg / "miners.config.txt",
                                    lambda d: _intensity(d, name, i))
            notes.append(f"intensity {i} (the miner restarts)")
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            (await http.get(f"{rig.api_url.rstrip('/')}/applyoc")).raise_for_status()
        if pl is not None:
            try:
                await asyncio.to_thread(rig.nvml.set_power_limit, cmd.gpu_index, pl)
            except GpuBackendError as exc:
                notes.append(f"NVML refused the power limit ({exc}); RainbowMiner applies it")
        done = ", ".join(f"{k} {v:g}" for k, v in (("power limit W", pl), ("core MHz", core),
                                                     ("memory MHz", mem)) if v is not None)
        return "applied", f"profile {profile} on {cmd.rig_id} {name}: {done or 'no change'}" + (
            f"; {'; '.join(notes)}" if notes else "")


def _intensity(miners: dict[str, Any], name: str, intensity: int) -> None:
    """Set ``-i N`` in the GPU's own miner entry, creating it from the model's entry."""
    own = next((k for k in miners if k.endswith(f"-{name}")), None)
    if own is None:
        base = next((k for k, v in miners.items() if isinstance(v, list) and v), None)
        miner = base.split("-", 1)[0] if base else "TRex"
        own = f"{miner}-{name}"
        miners[own] = [dict(e) for e in miners.get(base, [{}])] if base else [{}]
    entries = miners[own] if isinstance(miners[own], list) and miners[own] else [{}]
    for e in entries:
        params = re.sub(r"(?:^|\s)(?:-i|--intensity)\s+\d+", "", str(e.get("Params", ""))).strip()
        e["Params"] = f"{params} -i {intensity}".strip()
    miners[own] = entries
