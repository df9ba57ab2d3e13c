"""The simulated NVML of one rig, as the rig's HTTP agent serves it (sim/rig_api.py).

A reading is the JSON object of ``GET /nvml/devices/{i}``: NVML's values in the units the
agent reports (°C, W, MHz, %); the errors carry NVML's return-code names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.gpu import GpuSettings
from sim.rainbowminer import SimRig


class NvmlError(Exception):
    """An NVML call refused (its message names the NVML return code)."""


class SimNvml:
    """NVML-shaped access to a simulated rig (readings, power limit, clock offsets)."""

    def __init__(self, rig: SimRig, clock: Callable[[], float]):
        self.rig = rig
        self.clock = clock

    def _gpu(self, index: int):  # type: ignore[no-untyped-def]
        if not 0 <= index < len(self.rig.gpus):
            raise NvmlError(f"GPU {index}: NVML_ERROR_INVALID_ARGUMENT (no such device)")
        g = self.rig.gpus[index]
        g.advance(self.clock())
        return g

    def count(self) -> int:
        return len(self.rig.gpus)

    def read(self, index: int) -> dict[str, Any]:
        g = self._gpu(index)
        return {
            "index": index, "name": g.card.name, "uuid": f"GPU-sim-{self.rig.rig_id}-{index:02d}",
            "temp_c": round(g.temp_c, 1), "power_w": round(g.power_w(), 1),
            "power_limit_w": g.s.power_limit_w, "power_limit_min_w": g.card.pl_min_w,
            "power_limit_max_w": g.card.pl_max_w,
            "power_limit_default_w": g.card.pl_default_w,
            "core_clock_mhz": round(g.core_clock_mhz()),
            "mem_clock_mhz": round(g.mem_clock_mhz()), "fan_pct": round(g.fan_pct()),
            "utilization_pct": 100.0 if g.mining else 0.0}

    def set_power_limit(self, index: int, watts: float) -> None:
        g = self._gpu(index)
        if not g.card.pl_min_w <= watts <= g.card.pl_max_w:
            raise NvmlError(
                f"GPU {index}: NVML_ERROR_INVALID_ARGUMENT: {watts} W outside "
                f"[{g.card.pl_min_w}, {g.card.pl_max_w}] W")
        s = g.s
        g.apply(GpuSettings(watts, s.core_offset_mhz, s.mem_offset_mhz, s.intensity))

    def set_clock_offsets(self, index: int, core_mhz: float, mem_mhz: float) -> None:
        g = self._gpu(index)
        if not (-500 <= core_mhz <= 500 and -1000 <= mem_mhz <= 3000):
            raise NvmlError(f"GPU {index}: NVML_ERROR_INVALID_ARGUMENT: offsets "
                                  f"core {core_mhz} mem {mem_mhz} MHz out of range")
        s = g.s
        g.apply(GpuSettings(s.power_limit_w, core_mhz, mem_mhz, s.intensity))
