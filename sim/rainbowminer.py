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

Config (RainbowMiner's JSON files, re-read when their modification time changes):
  ocprofiles.config.txt  {"<profile>": {"PowerLimit": % of default (0 = default),
                          "MemoryClockBoost": MHz or "*", "CoreClockBoost": MHz or "*", ...}}
  miners.config.txt      {"TRex-<DeviceModel>|TRex-GPU#03": [{"MainAlgorithm": "Etchash",
                          "OCprofile": "<profile>", "Params": "-i 22", ...}]}
  devices.config.txt     {"GPU#03": {"DefaultOCprofile": "<profile>", ...}}
As in RainbowMiner, a changed OC profile takes effect when the miner restarts (a changed
miners.config.txt entry restarts it) or on an OC reset (``/applyoc``).  A miner whose reject
ratio runs away is restarted by the watchdog and says so in the log.
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
    _mtimes: dict[str, int] = field(default_factory=dict)
    _pending: dict[int, GpuSettings] = field(default_factory=dict)
    _params: dict[str, str] = field(default_factory=dict)
    _pending_names: dict[int, str] = field(default_factory=dict)
    _now: datetime | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / "Config"

    @property
    def log_path(self) -> Path:
        return self.root / "Logs" / "RainbowMiner.txt"

    def init_files(self) -> None:
        """Write RainbowMiner's default config files (no OC) and start the log."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        defaults = {
            "ocprofiles.config.txt": {"Profile1": {
                "PowerLimit": 0, "ThermalLimit": 0, "PriorizeThermalLimit": "0",
                "MemoryClockBoost": "*", "CoreClockBoost": "*", "LockVoltagePoint": "*",
                "LockMemoryClock": "*", "LockCoreClock": "*", "PostCmd": "", "PreCmd": ""}},
            "miners.config.txt": {f"{MINER}-{m}": [{
                "MainAlgorithm": ALGORITHM, "SecondaryAlgorithm": "", "Params": "",
                "MSIAprofile": "", "OCprofile": "", "Difficulty": "", "Penalty": "",
                "Disable": "0", "Intensity": ""}] for m in sorted({g.card.model_key
                                                                   for g in self.gpus})},
            "devices.config.txt": {device_name(g.index): {
                "Algorithm": "", "ExcludeAlgorithm": "", "MinerName": "",
                "ExcludeMinerName": "", "DisableDualMining": "", "DefaultOCprofile": "",
                "PowerAdjust": "100", "Worker": ""} for g in self.gpus},
        }
        for name, content in defaults.items():
            path = self.config_dir / name
            if not path.exists():
                path.write_text(json.dumps(content, indent=2))
        self.poll_config(0.0, force=True)

    # -- config -------------------------------------------------------------------------

    def _read(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.config_dir / name).read_text() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError) as exc:
            # RainbowMiner keeps its last good config when a file does not parse.
            self.log("WARN", f"Config file {name} could not be read: {exc}")
            raise

    def poll_config(self, t: float, force: bool = False) -> bool:
        """Re-read the config files if one changed; restart or mark OC pending."""
        mtimes = {}
        for name in ("ocprofiles.config.txt", "miners.config.txt", "devices.config.txt"):
            p = self.config_dir / name
            mtimes[name] = p.stat().st_mtime_ns if p.exists() else 0
        if not force and mtimes == self._mtimes:
            return False
        try:
            profiles = self._read("ocprofiles.config.txt")
            miners = self._read("miners.config.txt")
            devices = self._read("devices.config.txt")
        except (OSError, json.JSONDecodeError):
            self._mtimes = mtimes
            return False
        changed_miners = mtimes.get("miners.config.txt") != self._mtimes.get(
            "miners.config.txt")
        self._mtimes = mtimes
        params = {}
        for g in self.gpus:
            entry = _miner_entry(miners, g)
            prof_name = (entry.get("OCprofile") or "") or str(
                devices.get(device_name(g.index), {}).get("DefaultOCprofile", "") or "")
            prof = _profile(profiles, prof_name, g.card.model_key)
            self._pending[g.index] = _settings(g, prof, entry)
            self.applied_profile.setdefault(g.index, "")
            params[device_name(g.index)] = f"{prof_name}|{entry.get('Params', '')}"
            self._pending_names[g.index] = prof_name
        if force or (changed_miners and params != self._params):
            self._params = params
            self.restart_miner(t, reason="configuration changed" if not force else "start")
        self._params = params
        return True

    def apply_oc(self, t: float) -> None:
        """OC reset: apply pending settings to every card now."""
        for g in self.gpus:
            g.advance(t)
            if g.index in self._pending:
                g.apply(self._pending[g.index])
                self.applied_profile[g.index] = self._pending_names.get(g.index, "")
        self.log("INFO", "OC profiles applied")

    def restart_miner(self, t: float, reason: str) -> None:
        """Restart the miner: counters reset, pending OC applied."""
        self.restarts += 1
        self.started_at = t
        for g in self.gpus:
            g.advance(t)
            g.reset_counters()
        self.apply_oc(t)
        self.log("INFO", f"Start miner {MINER}-{self.model_key()} ({ALGORITHM}) on "
                         f"{','.join(device_name(g.index) for g in self.gpus)}: {reason}")

    def model_key(self) -> str:
        return "-".join(sorted({g.card.model_key for g in self.gpus}))

    # -- time -----------------------------------------------------------------------------

    def tick(self, t: float, now: datetime) -> None:
        """Advance physics, re-read config, run the reject watchdog."""
        self._now = now
        self.poll_config(t)
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


def _miner_entry(miners: dict[str, Any], g: SimGpu) -> dict[str, Any]:
    for key in (f"{MINER}-{device_name(g.index)}", f"{MINER}-{g.card.model_key}", MINER):
        entries = miners.get(key)
        if isinstance(entries, list):
            for e in entries:
                if isinstance(e, dict) and e.get("MainAlgorithm", ALGORITHM) in (ALGORITHM, "*"):
                    return e
    return {}


def _profile(profiles: dict[str, Any], name: str, model_key: str) -> dict[str, Any]:
    if not name:
        return {}
    for key in (f"{name}-{model_key}", name):
        p = profiles.get(key)
        if isinstance(p, dict):
            return p
    return {}


def _num(value: Any) -> float | None:
    if value in (None, "", "*"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _settings(g: SimGpu, prof: dict[str, Any], entry: dict[str, Any]) -> GpuSettings:
    pl_pct = _num(prof.get("PowerLimit"))
    pl = g.card.pl_default_w * pl_pct / 100 if pl_pct else g.card.pl_default_w
    mem = _num(prof.get("MemoryClockBoost"))
    core = _num(prof.get("CoreClockBoost"))
    intensity = 22
    m = re.search(r"(?:-i|--intensity)\s+(\d+)", str(entry.get("Params", "")))
    if m:
        intensity = int(m.group(1))
    elif _num(entry.get("Intensity")):
        intensity = int(float(entry["Intensity"]))
    return GpuSettings(power_limit_w=pl, core_offset_mhz=core or 0.0,
                       mem_offset_mhz=mem or 0.0, intensity=intensity)


def make_rig(index: int, root: Path, cards: list[str], seed: int = 0) -> SimRig:
    """Rig ``index`` with one GPU per entry of ``cards`` (keys of ``CARDS``)."""
    gpus = [SimGpu(i, CARDS[c], seed=seed * 1000 + index) for i, c in enumerate(cards)]
    return SimRig(rig_id=f"rig{index + 1:02d}", gpus=gpus, root=root)
