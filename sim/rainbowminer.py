"""A GPU rig as RainbowMiner presents it: HTTP API and a ``Config/`` directory.

API (RainbowMiner's field names; speeds in H/s as RainbowMiner stores them):
  GET /activeminers   running miners: Name, BaseName, DeviceName[], DeviceModel, Algorithm[],
                      Speed[], Speed_Live[], PowerDraw, Status, Stratum[{Accepted, Rejected,
                      Stale}], RejectedShareRatio[], OCprofile
  GET /devices        devices: Name (GPU#00), Index, Type, Vendor, Model, Model_Name,
                      Data{Temperature, PowerDraw, PowerLimit, Clock, ClockMem, FanSpeed, ...}
  GET /minerstats     per device: miner, Speed, Speed_Live, PowerDraw, Stratum, RejectedShareRatio
  GET /applyoc        re-apply OC now (RainbowMiner's OC reset)
  GET /version
  /nvml/...           the simulated NVML of this host (see sim.nvml)

Config (RainbowMiner's JSON files under Config/, re-read when they change, read the way
RainbowMiner's own code reads them: Modules/Core.psm1 and Modules/MinerAPIs.psm1):
  config.txt             "EnableOCProfiles": "1" (taken when a miner starts),
                         "OCResetInterval": seconds (0: /applyoc does nothing)
  ocprofiles.config.txt  {"<Name>[-<Model>|-GPU#nn]": {"PowerLimit": % (0: leave),
                          "CoreClockBoost": MHz or "*", "MemoryClockBoost": MHz or "*", ...}}
  devices.config.txt     {"<Model>": {"DefaultOCprofile": "<Name>", ...}}  (e.g. "RTX3090")
  miners.config.txt      {"<Miner>-<Model>": [{"MainAlgorithm", "Params": "-i 22",
                          "OCprofile": "<Name>", ...}]}
  algorithms.config.txt  {"<Algorithm>": {"OCprofile": "<Name>", ...}}
A miner takes its profile name per device model when it starts (miners.config.txt over
algorithms.config.txt over devices.config.txt); each card then gets ``<Name>-GPU#nn``, else
``<Name>-<Model>``, else ``<Name>``.  Profile values apply at a miner start, an OC reset and
on /applyoc (only with an OC reset interval); a changed command line (Params) restarts the
miner.  Keys RainbowMiner does not read (a ``GPU#03`` device entry, a ``TRex-GPU#03`` miner)
are ignored here too.  A miner whose reject ratio runs away is restarted by the watchdog and
says so in the log.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sim.gpu import CARDS, GpuSettings, SimGpu

log = logging.getLogger(__name__)

MINER = "TRex"
MINER_VERSION = "0.26.8"
ALGORITHM = "Etchash"
RBM_VERSION = "4.9.2.6"
REJECT_RESTART_RATIO = 0.10  # RainbowMiner's watchdog restarts above this reject ratio
REJECT_MIN_SHARES = 20


CONFIG_FILES = ("config.txt", "ocprofiles.config.txt", "miners.config.txt",
                "devices.config.txt", "algorithms.config.txt")


def device_name(index: int) -> str:
    return f"GPU#{index:02d}"


@dataclass
class SimRig:
    """One rig: GPUs, the miner running on them, its config directory and log."""

    rig_id: str
    gpus: list[SimGpu]
    root: Path
    pool: str = "stratum+tcp://etc.pool.local:1010"
    api_url: str = ""
    started_at: float = 0.0
    restarts: int = 0
    applied_profile: dict[int, str] = field(default_factory=dict)
    cfg: dict[str, dict[str, Any]] = field(default_factory=dict)
    oc_enabled: bool = False  # EnableOCProfiles when the miner started
    running_profiles: dict[str, str] = field(default_factory=dict)  # model -> profile name
    _mtimes: dict[str, int] = field(default_factory=dict)
    _params: dict[str, str] = field(default_factory=dict)
    _last_oc: float = 0.0
    _now: datetime | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / "Config"

    @property
    def log_path(self) -> Path:
        return self.root / "Logs" / "RainbowMiner.txt"

    def init_files(self) -> None:
        """Write RainbowMiner's config files as a rig set up for OC profiles has them
        (EnableOCProfiles on, an OC reset interval so that /applyoc acts) and start the
        log."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        models = sorted({g.card.model_key for g in self.gpus})
        noop = {"PowerLimit": 0, "ThermalLimit": 0, "PriorizeThermalLimit": "0",
                "MemoryClockBoost": "*", "CoreClockBoost": "*", "LockVoltagePoint": "*",
                "LockMemoryClock": "*", "LockCoreClock": "*", "PreCmd": "",
                "PreCmdArguments": "", "PostCmd": "", "PostCmdArguments": ""}
        defaults = {
            "config.txt": {"EnableOCProfiles": "1", "OCResetInterval": "3600",
                           "MSIAprofile": "0", "EnableOCVoltage": "0"},
            "ocprofiles.config.txt": {f"Profile1-{m}": dict(noop) for m in models},
            "miners.config.txt": {f"{MINER}-{m}": [{
                "MainAlgorithm": ALGORITHM, "SecondaryAlgorithm": "", "Params": "",
                "MSIAprofile": "", "OCprofile": "", "Difficulty": "", "Penalty": "",
                "Disable": "0", "Intensity": ""}] for m in models},
            "devices.config.txt": {m: {
                "Algorithm": "", "ExcludeAlgorithm": "", "MinerName": "",
                "ExcludeMinerName": "", "DisableDualMining": "", "DefaultOCprofile": "",
                "PowerAdjust": "100", "Worker": "", "EnableLHR": ""} for m in models},
        }
        for name, content in defaults.items():
            path = self.config_dir / name
            if not path.exists():
                path.write_text(json.dumps(content, indent=2))
        self.poll_config(0.0, force=True)

    # -- config: what RainbowMiner reads, and when (Modules/Core.psm1, MinerAPIs.psm1) ----

    def _read(self, name: str) -> dict[str, Any]:
        path = self.config_dir / name
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError) as exc:
            # RainbowMiner keeps its last good config when a file does not parse.
            self.log("WARN", f"Config file {name} could not be read: {exc}")
            raise

    def poll_config(self, t: float, force: bool = False) -> bool:
        """Re-read the config files that changed (RainbowMiner does at each round).  A
        changed miner command line (its miners.config.txt Params) restarts the miner;
        profile names and EnableOCProfiles are taken when a miner starts; profile values
        when OC is applied (at a start, an OC reset, or /applyoc with an OC reset interval)."""
        mtimes = {}
        for name in CONFIG_FILES:
            p = self.config_dir / name
            mtimes[name] = p.stat().st_mtime_ns if p.exists() else 0
        if not force and mtimes == self._mtimes:
            return False
        try:
            self.cfg = {name: self._read(name) for name in CONFIG_FILES}
        except (OSError, json.JSONDecodeError):
            self._mtimes = mtimes
            return False
        self._mtimes = mtimes
        params = {m: str(_miner_entry(self.cfg["miners.config.txt"], m).get("Params", ""))
                  for m in self.models()}
        if force or params != self._params:
            self._params = params
            self.restart_miner(t, reason="configuration changed" if not force else "start")
        return True

    def models(self) -> list[str]:
        return sorted({g.card.model_key for g in self.gpus})

    def _profile_names(self) -> dict[str, str]:
        """The OC profile of each device model for a miner starting now: its miners.config
        entry, else the algorithm's, else the device's DefaultOCprofile, else the first
        profile's name (RainbowMiner warns and uses it)."""
        profiles = self.cfg["ocprofiles.config.txt"]
        first = next((re.sub(r"-.+$", "", k) for k in profiles), "")
        algo = self.cfg["algorithms.config.txt"].get(ALGORITHM)
        out = {}
        for m in self.models():
            dev = self.cfg["devices.config.txt"].get(m)
            out[m] = (str(_miner_entry(self.cfg["miners.config.txt"], m).get("OCprofile") or "")
                      or (str(algo.get("OCprofile") or "") if isinstance(algo, dict) else "")
                      or (str(dev.get("DefaultOCprofile") or "") if isinstance(dev, dict)
                          else "") or first)
        return out

    def apply_oc(self, t: float) -> None:
        """Set the running miner's OC profiles on its cards (SetOCprofile): per card the
        profile ``<name>-<GPU#nn>`` if there is one, else ``<name>-<model>``, else
        ``<name>``; nothing when the miner started with OC profiles off."""
        if not self.oc_enabled:
            return
        profiles = self.cfg["ocprofiles.config.txt"]
        for g in self.gpus:
            g.advance(t)
            name = self.running_profiles.get(g.card.model_key, "")
            if not name:
                continue
            prof: dict[str, Any] = next((profiles[k] for k in (f"{name}-{device_name(g.index)}",
                                               f"{name}-{g.card.model_key}", name)
                         if isinstance(profiles.get(k), dict)), {})
            g.apply(_settings(g, prof, _miner_entry(self.cfg["miners.config.txt"],
                                                    g.card.model_key)))
            self.applied_profile[g.index] = name
        self.log("INFO", "OC profiles applied")

    def oc_reset_on(self) -> bool:
        return (_num(self.cfg["config.txt"].get("OCResetInterval")) or 0) > 0

    def restart_miner(self, t: float, reason: str) -> None:
        """Restart the miner: counters reset, its OC profile names and EnableOCProfiles
        taken now, OC applied."""
        self.restarts += 1
        self.started_at = t
        for g in self.gpus:
            g.advance(t)
            g.reset_counters()
        self.oc_enabled = _yes(self.cfg["config.txt"].get("EnableOCProfiles"))
        self.running_profiles = self._profile_names()
        self._last_oc = t
        for g in self.gpus:  # a start takes the miner's parameters (intensity) in any case
            g.apply(_settings(g, {}, _miner_entry(self.cfg["miners.config.txt"],
                                                  g.card.model_key)))
        self.apply_oc(t)
        self.log("INFO", f"Start miner {MINER}-{self.model_key()} ({ALGORITHM}) on "
                         f"{','.join(device_name(g.index) for g in self.gpus)}: {reason}")

    def model_key(self) -> str:
        return "-".join(sorted({g.card.model_key for g in self.gpus}))

    # -- time -----------------------------------------------------------------------------

    def tick(self, t: float, now: datetime) -> None:
        """Advance physics, re-read config, reset OC when its interval is due, run the
        reject watchdog."""
        self._now = now
        self.poll_config(t)
        every = _num(self.cfg.get("config.txt", {}).get("OCResetInterval")) or 0
        if every > 0 and t - self._last_oc >= every:
            self._last_oc = t
            self.apply_oc(t)
        for g in self.gpus:
            g.advance(t)
        for g in self.gpus:
            total = g.accepted + g.rejected + g.stale
            if total >= REJECT_MIN_SHARES and g.rejected / total > REJECT_RESTART_RATIO:
                self.log("WARN", f"Miner {MINER}-{g.card.model_key} has too many rejected "
                                 f"shares on {device_name(g.index)} "
                                 f"({100 * g.rejected / total:.1f}%), restarting")
                self.restart_miner(t, reason="too many rejected shares")
                break

    def log(self, level: str, message: str) -> None:
        ts = self._now
        stamp = ts.strftime("%Y-%m-%d %H:%M:%S") if ts else "1970-01-01 00:00:00"
        try:
            with self.log_path.open("a") as f:
                f.write(f"[{stamp}] {level}: {message}\n")
        except OSError:
            log.warning("cannot write rig log %s", self.log_path)

    # -- API views ----------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        out = []
        for g in self.gpus:
            out.append({
                "Name": device_name(g.index), "Index": g.index, "Type_Index": g.index,
                "Type_Vendor_Index": g.index, "Type": "Gpu", "Vendor": "NVIDIA",
                "Model": g.card.model_key, "Model_Name": g.card.name,
                "Data": device_data(g)})
        return out

    def _stratum(self, g: SimGpu) -> dict[str, int]:
        return {"Accepted": g.accepted, "Rejected": g.rejected, "Stale": g.stale}

    def active_miners(self, t: float) -> list[dict[str, Any]]:
        gs = [g for g in self.gpus if g.mining]
        if not gs:
            return []
        return [{
            "Name": f"{MINER}-{self.model_key()}", "BaseName": MINER, "Version": MINER_VERSION,
            "DeviceName": [device_name(g.index) for g in gs], "DeviceModel": self.model_key(),
            "Algorithm": [ALGORITHM], "BaseAlgorithm": [ALGORITHM], "Currency": ["ETC"],
            "Pool": [self.pool], "Status": "Running", "Port": 4068,
            "Speed": [round(sum(g.raw_hashrate_mhs() for g in gs) * 1e6)],
            "Speed_Live": [round(sum(g.hashrate_mhs() for g in gs) * 1e6)],
            "PowerDraw": round(sum(g.power_w() for g in gs), 1),
            "Stratum": [{"Accepted": sum(g.accepted for g in gs),
                         "Rejected": sum(g.rejected for g in gs),
                         "Stale": sum(g.stale for g in gs)}],
            "RejectedShareRatio": [_ratio(sum(g.rejected for g in gs),
                                          sum(g.accepted + g.rejected + g.stale for g in gs))],
            "OCprofile": sorted({self.applied_profile.get(g.index, "") for g in gs}),
            "Uptime": round(t - self.started_at),
        }]

    def miner_stats(self, t: float) -> list[dict[str, Any]]:
        out = []
        for g in self.gpus:
            out.append({
                "Name": f"{MINER}-{self.model_key()}", "Device": device_name(g.index),
                "Algorithm": ALGORITHM, "Speed": round(g.raw_hashrate_mhs() * 1e6),
                "Speed_Live": round(g.hashrate_mhs() * 1e6), "PowerDraw": round(g.power_w(), 1),
                "Stratum": self._stratum(g),
                "RejectedShareRatio": _ratio(g.rejected, g.accepted + g.rejected + g.stale),
                "HardwareErrors": g.hw_errors,
                "OCprofile": self.applied_profile.get(g.index, ""), "Data": device_data(g)})
        return out


def device_data(g: SimGpu) -> dict[str, Any]:
    """RainbowMiner's Data block of a device."""
    return {
        "Temperature": round(g.temp_c, 1), "PowerDraw": round(g.power_w(), 1),
        "PowerLimit": round(g.s.power_limit_w, 1),
        "PowerLimitPercent": round(100 * g.s.power_limit_w / g.card.pl_default_w),
        "PowerMaxLimit": g.card.pl_max_w, "PowerDefaultLimit": g.card.pl_default_w,
        "Clock": round(g.core_clock_mhz()), "ClockMem": round(g.mem_clock_mhz()),
        "FanSpeed": round(g.fan_pct()), "Utilization": 100 if g.mining else 0,
    }


def _ratio(rejected: int, total: int) -> float:
    return round(rejected / total, 4) if total else 0.0


def _miner_entry(miners: dict[str, Any], model: str) -> dict[str, Any]:
    """The miners.config.txt entry RainbowMiner uses for this miner on a device model
    (``<Miner>-<Model>``, the algorithm's row or ``*``)."""
    entries = miners.get(f"{MINER}-{model}")
    if isinstance(entries, list):
        for e in entries:
            if isinstance(e, dict) and e.get("MainAlgorithm", ALGORITHM) in (ALGORITHM, "*"):
                return e
    return {}


def _yes(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def _num(value: Any) -> float | None:
    if value in (None, "", "*"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _clock(value: Any) -> float | None:
    """A clock boost as RainbowMiner reads it: digits and minus kept, "*" (or empty): leave."""
    text = re.sub(r"[^0-9\-]+", "", str(value if value is not None else ""))
    return float(text) if re.fullmatch(r"-*[0-9]+", text) else None


def _settings(g: SimGpu, prof: dict[str, Any], entry: dict[str, Any]) -> GpuSettings:
    """The card's settings under a profile: PowerLimit % of the default limit when > 0
    (clamped 20-200 %, as RainbowMiner does), boosts when they are numbers; what the
    profile leaves alone keeps its present value."""
    pl_pct = _num(prof.get("PowerLimit"))
    pl = (g.card.pl_default_w * max(20.0, min(200.0, pl_pct)) / 100 if pl_pct and pl_pct > 0
          else g.s.power_limit_w)
    mem = _clock(prof.get("MemoryClockBoost"))
    core = _clock(prof.get("CoreClockBoost"))
    intensity = 22
    m = re.search(r"(?:-i|--intensity)\s+(\d+)", str(entry.get("Params", "")))
    if m:
        intensity = int(m.group(1))
    elif _num(entry.get("Intensity")):
        intensity = int(float(entry["Intensity"]))
    return GpuSettings(power_limit_w=pl,
                       core_offset_mhz=g.s.core_offset_mhz if core is None else core,
                       mem_offset_mhz=g.s.mem_offset_mhz if mem is None else mem,
                       intensity=intensity)


def make_rig(index: int, root: Path, cards: list[str], seed: int = 0) -> SimRig:
    """Rig ``index`` with one GPU per entry of ``cards`` (keys of ``CARDS``)."""
    gpus = [SimGpu(i, CARDS[c], seed=seed * 1000 + index) for i, c in enumerate(cards)]
    return SimRig(rig_id=f"rig{index + 1:02d}", gpus=gpus, root=root)
