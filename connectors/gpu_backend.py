"""The GPU control/telemetry interface hashplane's GPU code calls (NVML-shaped).

``NvmlBackend`` talks to the NVIDIA driver through pynvml where a GPU is present; the
simulated farm implements the same protocol (``sim.nvml.SimNvml``), so telemetry and the GPU
actuator run unchanged against both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class GpuBackendError(RuntimeError):
    """NVML (or its simulation) refused or failed a call."""


@dataclass(frozen=True)
class GpuReading:
    """One NVML reading of one GPU, in the units hashplane uses."""

    index: int
    name: str
    uuid: str
    temp_c: float
    power_w: float
    power_limit_w: float
    power_limit_min_w: float
    power_limit_max_w: float
    power_limit_default_w: float  # what RainbowMiner's PowerLimit % is relative to
    core_clock_mhz: float
    mem_clock_mhz: float
    fan_pct: float
    utilization_pct: float


class GpuBackend(Protocol):
    """What hashplane needs from NVML."""

    def count(self) -> int:
        """Number of GPUs."""

    def read(self, index: int) -> GpuReading:
        """Current reading of GPU ``index``."""

    def set_power_limit(self, index: int, watts: float) -> None:
        """Set the power limit; raises GpuBackendError outside the card's range."""

    def set_clock_offsets(self, index: int, core_mhz: float, mem_mhz: float) -> None:
        """Set graphics and memory clock offsets (MHz)."""


class NvmlBackend:
    """The real NVML through pynvml (needs the NVIDIA driver; absent on these machines)."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError or a missing library
            raise GpuBackendError(f"NVML unavailable: {exc}") from exc
        self._nv: Any = pynvml

    def _h(self, index: int) -> Any:
        try:
            return self._nv.nvmlDeviceGetHandleByIndex(index)
        except self._nv.NVMLError as exc:
            raise GpuBackendError(f"GPU {index}: {exc}") from exc

    def count(self) -> int:
        return int(self._nv.nvmlDeviceGetCount())

    def read(self, index: int) -> GpuReading:
        nv, h = self._nv, self._h(index)
        try:
            lo, hi = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
            return GpuReading(
                index=index, name=str(nv.nvmlDeviceGetName(h)), uuid=str(nv.nvmlDeviceGetUUID(h)),
                temp_c=float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                power_w=nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                power_limit_w=nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
                power_limit_min_w=lo / 1000.0, power_limit_max_w=hi / 1000.0,
                power_limit_default_w=nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0,
                core_clock_mhz=float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_GRAPHICS)),
                mem_clock_mhz=float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
                fan_pct=float(_or_zero(nv.nvmlDeviceGetFanSpeed, h)),
                utilization_pct=float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
        except nv.NVMLError as exc:
            raise GpuBackendError(f"GPU {index}: {exc}") from exc

    def set_power_limit(self, index: int, watts: float) -> None:
        try:
            self._nv.nvmlDeviceSetPowerManagementLimit(self._h(index), int(watts * 1000))
        except self._nv.NVMLError as exc:
            raise GpuBackendError(f"GPU {index}: set power limit {watts} W: {exc}") from exc

    def set_clock_offsets(self, index: int, core_mhz: float, mem_mhz: float) -> None:
        nv, h = self._nv, self._h(index)
        try:
            nv.nvmlDeviceSetGpcClkVfOffset(h, int(core_mhz))
            nv.nvmlDeviceSetMemClkVfOffset(h, int(mem_mhz))
        except nv.NVMLError as exc:
            raise GpuBackendError(f"GPU {index}: set clock offsets: {exc}") from exc


def _or_zero(fn: Any, h: Any) -> Any:
    try:
        return fn(h)
    except Exception:  # noqa: BLE001 - fanless data-centre cards answer NOT_SUPPORTED
        return 0
