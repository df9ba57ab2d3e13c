"""The GPU actuator: ``commands.gpu`` -> RainbowMiner's config files and NVML -> one ack.

``ApplyGpuProfile`` becomes, for one GPU (``GPU#03`` in RainbowMiner's words), what
RainbowMiner's README documents and its code reads (Modules/Core.psm1, MinerAPIs.psm1):

* ``config.txt``: ``EnableOCProfiles`` on (RainbowMiner's OC "option 2"; a running miner
  takes it at its next start, the ack says so) and an ``OCResetInterval`` (RainbowMiner acts
  on ``/applyoc`` only with one; 3600 s is set when it is 0);
* ``ocprofiles.config.txt``: the card's own entry ``<Name>-GPU#03`` under every profile name
  that can be in force for its device model (the running miner's, the model's
  ``DefaultOCprofile`` or RainbowMiner's fallback to the first profile, the names in
  miners.config.txt and algorithms.config.txt), each starting from what that name gives the
  card now: ``PowerLimit`` as % of the card's default limit (RainbowMiner's 20-200 %),
  ``CoreClockBoost`` and ``MemoryClockBoost`` in MHz.  Whichever profile RainbowMiner picks,
  this card gets these values and the other cards of the model keep theirs;
* ``devices.config.txt`` (keyed by device model, e.g. ``RTX3090``): ``DefaultOCprofile`` is
  set only when no profile exists at all (to ``hashplane``; used from the miner's next start);
* an intensity, when given, as ``-i N`` in ``miners.config.txt``'s ``<Miner>-<Model>``
  entry: RainbowMiner's miner parameters are per device model, so it applies to every card of
  that model on the rig, and the changed command line restarts the miner (the ack says so);
* RainbowMiner's OC reset (``/applyoc``) so the profile applies to the running miner now, and
  the power limit through NVML as well where the driver permits it (a refusal is reported,
  not fatal: RainbowMiner applies the profile's limit itself).

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
        data = read_json(path)
    except ConfigFileError as exc:
        raise ConfigFileError(f"{exc}; not overwritten") from None
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

    async def _rig_view(self, rig: Rig, name: str) -> tuple[str, str, set[str]]:
        """From RainbowMiner's API: the GPU's device model (its devices.config.txt key), the
        miner running on it and the OC profile names that miner runs with."""
        base = rig.api_url.rstrip("/")
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            devices = (await http.get(f"{base}/devices")).raise_for_status().json()
            active = (await http.get(f"{base}/activeminers")).raise_for_status().json()
        model = next((str(d.get("Model") or "") for d in devices if isinstance(d, dict)
                      and d.get("Name") == name), "") if isinstance(devices, list) else ""
        miner, running = "", set()
        for m in active if isinstance(active, list) else []:
            if not isinstance(m, dict) or name not in (m.get("DeviceName") or []):
                continue
            miner = str(m.get("BaseName") or "")
            oc = m.get("OCprofile")
            if isinstance(oc, dict):  # RainbowMiner: device model -> profile name
                running |= {str(v) for k, v in oc.items() if v and k == model}
            elif isinstance(oc, list):
                running |= {str(v) for v in oc if v}
            elif oc:
                running.add(str(oc))
        return model, miner, running

    async def _apply(self, rig: Rig, cmd: ApplyGpuProfile, r: GpuReading) -> Outcome:
        lim = self.limits
        notes: list[str] = []
        name = device_name(cmd.gpu_index)
        model, miner, running = await self._rig_view(rig, name)
        if not model:
            return "rejected", f"RainbowMiner on {cmd.rig_id} lists no {name}"
        pl = None if cmd.power_limit_w is None else clamp(
            cmd.power_limit_w, r.power_limit_min_w, r.power_limit_max_w, "power limit W", notes)
        core = None if cmd.core_offset_mhz is None else clamp(
            cmd.core_offset_mhz, *lim.core_offset_mhz, "core offset MHz", notes)
        mem = None if cmd.mem_offset_mhz is None else clamp(
            cmd.mem_offset_mhz, *lim.mem_offset_mhz, "memory offset MHz", notes)
        cfg = rig.config_dir
        if not (cfg / "config.txt").exists():
            raise ConfigFileError(f"no config.txt in {cfg}: is it RainbowMiner's Config "
                                  "directory?")

        def config(d: dict[str, Any]) -> None:
            # OC profiles are RainbowMiner's "option 2"; a running miner takes the switch
            # when it starts, and /applyoc acts only with an OC reset interval
            if str(d.get("EnableOCProfiles", "0")).strip().lower() not in ("1", "true"):
                d["EnableOCProfiles"] = "1"
                notes.append("EnableOCProfiles was off: turned on in config.txt (RainbowMiner "
                             "applies profiles from the miner's next start)")
            try:
                interval = float(d.get("OCResetInterval") or 0)
            except (TypeError, ValueError):
                interval = 0.0
            if interval <= 0:
                d["OCResetInterval"] = str(OC_RESET_INTERVAL_S)
                notes.append(f"OCResetInterval was 0: set to {OC_RESET_INTERVAL_S} s so that "
                             "/applyoc applies profiles to the running miner")

        await asyncio.to_thread(update_json, cfg / "config.txt", config)
        names = set(running)
        profiles = await asyncio.to_thread(read_json, cfg / "ocprofiles.config.txt")
        miners = await asyncio.to_thread(read_json, cfg / "miners.config.txt")
        algorithms = await asyncio.to_thread(read_json, cfg / "algorithms.config.txt")

        def device(d: dict[str, Any]) -> None:
            got = d.get(model)
            entry: dict[str, Any] = got if isinstance(got, dict) else {}
            default = str(entry.get("DefaultOCprofile") or "") or next(
                (re.sub(r"-.+$", "", k) for k in profiles), "")
            if not default:  # no profile at all: hashplane's own becomes the default
                default = DEFAULT_PROFILE
                d[model] = {**entry, "DefaultOCprofile": default}
                notes.append(f"devices.config.txt {model} DefaultOCprofile set to {default} "
                             "(used from the miner's next start)")
            names.add(default)

        await asyncio.to_thread(update_json, cfg / "devices.config.txt", device)
        names |= {str(e.get("OCprofile")) for k, v in miners.items() if k.endswith(f"-{model}")
                  and isinstance(v, list) for e in v if isinstance(e, dict) and e.get("OCprofile")}
        names |= {str(v.get("OCprofile")) for v in algorithms.values()
                  if isinstance(v, dict) and v.get("OCprofile")}
        if cmd.profile:
            names.add(cmd.profile)
        pct = None if pl is None else round(100.0 * pl / r.power_limit_default_w)
        if pct is not None and not 20 <= pct <= 200:  # RainbowMiner's own bounds
            notes.append(f"PowerLimit {pct} % clamped to RainbowMiner's 20-200 %")
            pct = min(200, max(20, pct))

        def oc(d: dict[str, Any]) -> None:
            # the GPU's own entry under every profile name that can be in force for its
            # model, starting from what that name gives it now: whichever profile
            # RainbowMiner picks, this card gets these values and the others keep theirs
            for p in sorted(names):
                own = f"{p}-{name}"
                base: dict[str, Any] = next((d[k] for k in (own, f"{p}-{model}", p)
                             if isinstance(d.get(k), dict)), {})
                entry = {**NOOP_PROFILE, **base}
                if pct is not None:
                    entry["PowerLimit"] = pct
                if core is not None:
                    entry["CoreClockBoost"] = str(int(core))
                if mem is not None:
                    entry["MemoryClockBoost"] = str(int(mem))
                d[own] = entry

        await asyncio.to_thread(update_json, cfg / "ocprofiles.config.txt", oc)
        if cmd.intensity is not None:
            i = int(clamp(cmd.intensity, *lim.intensity, "intensity", notes))
            key = await asyncio.to_thread(update_json_value, cfg / "miners.config.txt",
                                          lambda d: _intensity(d, miner, model, i))
            notes.append(f"intensity {i} in {key}: every {model} on the rig (RainbowMiner's "
                         "miner parameters are per device model), the miner restarts")
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            (await http.get(f"{rig.api_url.rstrip('/')}/applyoc")).raise_for_status()
        if pl is not None:
            try:
                await asyncio.to_thread(rig.nvml.set_power_limit, cmd.gpu_index, pl)
            except GpuBackendError as exc:
                notes.append(f"NVML refused the power limit ({exc}); RainbowMiner applies it")
        done = ", ".join(f"{k} {v:g}" for k, v in (("power limit W", pl), ("core MHz", core),
                                                     ("memory MHz", mem)) if v is not None)
        return "applied", (f"{', '.join(f'{p}-{name}' for p in sorted(names))} on "
                           f"{cmd.rig_id} ({model}): {done or 'no change'}") + (
            f"; {'; '.join(notes)}" if notes else "")


DEFAULT_PROFILE = "hashplane"
OC_RESET_INTERVAL_S = 3600
#: a profile that changes nothing (RainbowMiner: 0 % / "*" leave a value alone)
NOOP_PROFILE: dict[str, Any] = {
    "PowerLimit": 0, "ThermalLimit": 0, "PriorizeThermalLimit": "0", "MemoryClockBoost": "*",
    "CoreClockBoost": "*", "LockVoltagePoint": "*", "LockMemoryClock": "*",
    "LockCoreClock": "*", "PreCmd": "", "PreCmdArguments": "", "PostCmd": "",
    "PostCmdArguments": ""}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON-object config file ({} when absent); ConfigFileError when it is not one."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path.name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path.name} is a JSON {type(data).__name__}, not an object")
    return data


def update_json_value(path: Path, change: Callable[[dict[str, Any]], Any]) -> Any:
    """``update_json`` that returns what ``change`` returned."""
    out: list[Any] = []
    update_json(path, lambda d: out.append(change(d)))
    return out[0]


def _intensity(miners: dict[str, Any], miner: str, model: str, intensity: int) -> str:
    """Set ``-i N`` in the miner's entry for the device model (``<Miner>-<Model>``, as
    RainbowMiner keys miners.config.txt), creating it when there is none; its key."""
    key = f"{miner}-{model}" if miner else next(
        (k for k in miners if k.endswith(f"-{model}")), f"TRex-{model}")
    got = miners.get(key)
    entries: list[Any] = got if isinstance(got, list) and got else [
        {"MainAlgorithm": "*", "SecondaryAlgorithm": "", "Params": "", "MSIAprofile": "",
         "OCprofile": "", "Difficulty": ""}]
    for e in entries:
        if isinstance(e, dict):
            params = re.sub(r"(?:^|\s)(?:-i|--intensity)\s+\d+", "",
                            str(e.get("Params", ""))).strip()
            e["Params"] = f"{params} -i {intensity}".strip()
    miners[key] = entries
    return key
