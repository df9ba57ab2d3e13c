"""The GPU control/telemetry interface hashplane's GPU code calls (NVML-shaped).

``NvmlBackend`` is the NVIDIA driver's NVML, through the ``pynvml`` module of NVIDIA's
``nvidia-ml-py``, on the rig itself (``hashplane connect gpu`` on the rig host, the
inventory's ``nvml = "local"``).  The simulated rigs answer the same protocol over HTTP
(``connectors.gpu_telemetry.HttpNvmlBackend``), so telemetry and the GPU actuator run
unchanged against both.

Errors are translated here, at the boundary, into ``GpuBackendError`` with a ``kind`` the
rest of hashplane acts on: ``no_driver`` (no library, or the driver is not loaded),
``no_permission`` (setting limits needs root or the admin's permission), ``gpu_lost`` (the
card fell off the bus: Xid 79 territory, a reboot or a reseat), ``not_supported``, ``error``.
Limits are clamped to what NVML reports for that card, never to a table of ours.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

ErrorKind = Literal["no_driver", "no_permission", "gpu_lost", "not_supported", "error"]


class GpuBackendError(RuntimeError):
    """NVML (or its simulation) refused or failed a call."""

    def __init__(self, message: str, kind: ErrorKind = "error") -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True)
class GpuReading:
    """One NVML reading of one GPU, in the units hashplane uses.  Values a card does not
    report (memory temperature on GDDR cards, fans on passive ones, ECC off) are None."""

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
    mem_temp_c: float | None = None
    sm_clock_mhz: float | None = None
    max_core_clock_mhz: float | None = None
    max_mem_clock_mhz: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    ecc_uncorrected: int | None = None  # volatile (since the driver loaded)
    xid_errors: tuple[int, ...] = ()  # Xid critical errors since the previous reading


class GpuBackend(Protocol):
    """What hashplane needs from NVML."""

    def count(self) -> int:
        """Number of GPUs."""

    def read(self, index: int) -> GpuReading:
        """Current reading of GPU ``index``."""

    def set_power_limit(self, index: int, watts: float) -> float | None:
        """Set the power limit (NVML: clamped to the card's range; the limit in force after,
        where the backend reports it)."""

    def set_clock_offsets(self, index: int, core_mhz: float, mem_mhz: float) -> None:
        """Set graphics and memory clock offsets (MHz)."""


#: NVML's clocks-event (throttle) reason bits, by the names nvidia-smi prints
THROTTLE_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clocks_setting",
}


def throttle_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASONS.items() if mask & bit)


_init_lock = threading.Lock()


class NvmlBackend:
    """The real NVML through ``pynvml`` (nvidia-ml-py).

    ``library``: the path of ``libnvidia-ml.so.1`` when it is not on the loader's path (a
    driver installed under /usr/local, WSL's /usr/lib/wsl/lib); None: the loader finds it.
    """

    def __init__(self, library: str | None = None) -> None:
        import pynvml

        self._nv: Any = pynvml
        try:
            with _init_lock:
                if library and pynvml.nvmlLib is None:
                    from ctypes import CDLL

                    pynvml.nvmlLib = CDLL(library)
                pynvml.nvmlInit()
        except OSError as exc:  # the library path given does not load
            raise GpuBackendError(f"NVML library {library}: {exc}", "no_driver") from exc
        except pynvml.NVMLError as exc:
            raise self._translate(exc, "NVML unavailable") from exc
        self._xids: dict[int, list[int]] = {}
        self._events: Any = None
        try:  # Xid critical errors arrive as events; a driver without them: no Xids
            self._events = pynvml.nvmlEventSetCreate()
            for i in range(self.count()):
                pynvml.nvmlDeviceRegisterEvents(self._h(i), pynvml.nvmlEventTypeXidCriticalError,
                                                self._events)
        except (pynvml.NVMLError, GpuBackendError):
            pass

    def _drain_xids(self) -> None:
        """Collect the Xid events that arrived since the last call (never waits)."""
        nv = self._nv
        if self._events is None:
            return
        for _ in range(1000):
            try:
                e = nv.nvmlEventSetWait_v2(self._events, 0)
            except nv.NVMLError:  # NVML_ERROR_TIMEOUT: none left
                return
            if e.eventType & nv.nvmlEventTypeXidCriticalError:
                try:
                    index = int(nv.nvmlDeviceGetIndex(e.device))
                except nv.NVMLError:
                    continue
                self._xids.setdefault(index, []).append(int(e.eventData))

    def _translate(self, exc: Any, what: str) -> GpuBackendError:
        nv = self._nv
        code = getattr(exc, "value", None)
        kinds: dict[int, ErrorKind] = {
            nv.NVML_ERROR_LIBRARY_NOT_FOUND: "no_driver",
            nv.NVML_ERROR_DRIVER_NOT_LOADED: "no_driver",
            nv.NVML_ERROR_NO_PERMISSION: "no_permission",
            nv.NVML_ERROR_GPU_IS_LOST: "gpu_lost",
            nv.NVML_ERROR_NOT_SUPPORTED: "not_supported",
        }
        kind: ErrorKind = kinds.get(code, "error") if isinstance(code, int) else "error"
        why = {"gpu_lost": "the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST): it needs a "
                           "reset or a reboot",
               "no_permission": "NVML refused: setting limits needs root (or the admin "
                                "permission nvidia-smi -acp UNRESTRICTED gives)",
               "no_driver": "the NVIDIA driver is not loaded or libnvidia-ml.so.1 is "
                            "missing"}.get(kind, "")
        return GpuBackendError(f"{what}: {exc}" + (f"; {why}" if why else ""), kind)

    def _h(self, index: int) -> Any:
        try:
            return self._nv.nvmlDeviceGetHandleByIndex(index)
        except self._nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}") from exc

    def _optional(self, fn: Any, *args: Any) -> Any:
        """A value the card may not have (None when NVML says not supported)."""
        try:
            return fn(*args)
        except self._nv.NVMLError as exc:
            if getattr(exc, "value", None) in (self._nv.NVML_ERROR_NOT_SUPPORTED,
                                               self._nv.NVML_ERROR_INVALID_ARGUMENT):
                return None
            raise

    def count(self) -> int:
        try:
            return int(self._nv.nvmlDeviceGetCount())
        except self._nv.NVMLError as exc:
            raise self._translate(exc, "GPU count") from exc

    def limits(self, index: int) -> tuple[float, float]:
        """The card's power-limit range, W, as NVML reports it."""
        nv, h = self._nv, self._h(index)
        try:
            lo, hi = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
        except nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}: power limits") from exc
        return lo / 1000.0, hi / 1000.0

    def read(self, index: int) -> GpuReading:
        self._drain_xids()
        xids = tuple(self._xids.pop(index, ()))
        nv, h = self._nv, self._h(index)
        opt = self._optional
        try:
            lo, hi = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
            mem_temp = opt(self._mem_temp, h)
            memory = opt(nv.nvmlDeviceGetMemoryInfo, h)
            util = opt(nv.nvmlDeviceGetUtilizationRates, h)
            reasons = opt(nv.nvmlDeviceGetCurrentClocksEventReasons, h)
            ecc = opt(nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                      nv.NVML_VOLATILE_ECC)
            fan = opt(nv.nvmlDeviceGetFanSpeed, h)
            sm = opt(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
            max_core = opt(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_GRAPHICS)
            max_mem = opt(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM)
            return GpuReading(
                index=index, name=str(nv.nvmlDeviceGetName(h)), uuid=str(nv.nvmlDeviceGetUUID(h)),
                temp_c=float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                power_w=nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                power_limit_w=nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
                power_limit_min_w=lo / 1000.0, power_limit_max_w=hi / 1000.0,
                power_limit_default_w=nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0,
                core_clock_mhz=float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_GRAPHICS)),
                mem_clock_mhz=float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
                fan_pct=float(fan or 0), utilization_pct=float(util.gpu if util else 0),
                mem_temp_c=mem_temp, sm_clock_mhz=None if sm is None else float(sm),
                max_core_clock_mhz=None if max_core is None else float(max_core),
                max_mem_clock_mhz=None if max_mem is None else float(max_mem),
                mem_used_mib=None if memory is None else memory.used / 2**20,
                mem_total_mib=None if memory is None else memory.total / 2**20,
                throttle_reasons=throttle_names(int(reasons or 0)),
                ecc_uncorrected=None if ecc is None else int(ecc), xid_errors=xids)
        except nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}") from exc

    def _mem_temp(self, h: Any) -> float | None:
        """HBM cards report their memory temperature as a field value (82)."""
        nv = self._nv
        v = nv.nvmlDeviceGetFieldValues(h, [nv.NVML_FI_DEV_MEMORY_TEMP])[0]
        if v.nvmlReturn != nv.NVML_SUCCESS:
            return None
        return float(v.value.uiVal)

    def set_power_limit(self, index: int, watts: float) -> float:
        """Set the limit, clamped to the card's range; the limit NVML then reports."""
        lo, hi = self.limits(index)
        target = min(hi, max(lo, watts))
        nv, h = self._nv, self._h(index)
        try:
            nv.nvmlDeviceSetPowerManagementLimit(h, round(target * 1000))
            return float(nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0)
        except nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}: set power limit {target:g} W") from exc

    def set_locked_clocks(self, index: int, min_mhz: float, max_mhz: float) -> tuple[int, int]:
        """Lock the graphics clock to a range, clamped to the card's maximum; what was set."""
        nv, h = self._nv, self._h(index)
        try:
            top = int(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_GRAPHICS))
            lo, hi = sorted((int(min(top, max(0, min_mhz))), int(min(top, max(0, max_mhz)))))
            nv.nvmlDeviceSetGpuLockedClocks(h, lo, hi)
            return lo, hi
        except nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}: lock clocks") from exc

    def set_application_clocks(self, index: int, mem_mhz: float, graphics_mhz: float,
                               ) -> tuple[int, int]:
        """Application clocks (memory, graphics), each clamped to the card's maximum; what
        was set.  Not every card permits them: ``not_supported`` then."""
        nv, h = self._nv, self._h(index)
        try:
            top_mem = int(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM))
            top_gr = int(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_GRAPHICS))
            mem, gr = int(min(top_mem, max(0, mem_mhz))), int(min(top_gr, max(0, graphics_mhz)))
            nv.nvmlDeviceSetApplicationsClocks(h, mem, gr)
            return mem, gr
        except nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}: application clocks") from exc

    def reset_locked_clocks(self, index: int) -> None:
        nv, h = self._nv, self._h(index)
        try:
            nv.nvmlDeviceResetGpuLockedClocks(h)
        except nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}: reset clocks") from exc

    def set_clock_offsets(self, index: int, core_mhz: float, mem_mhz: float) -> None:
        nv, h = self._nv, self._h(index)
        try:
            nv.nvmlDeviceSetGpcClkVfOffset(h, int(core_mhz))
            nv.nvmlDeviceSetMemClkVfOffset(h, int(mem_mhz))
        except nv.NVMLError as exc:
            raise self._translate(exc, f"GPU {index}: set clock offsets") from exc

    def close(self) -> None:
        try:
            if self._events is not None:
                self._nv.nvmlEventSetFree(self._events)
            self._nv.nvmlShutdown()
        except self._nv.NVMLError:
            pass


class LocalNvml:
    """NVML on this host, started on first use and again after a failure (the driver may
    load after hashplane starts, or be reloaded): until it starts, every call raises the
    ``no_driver`` error instead of the connector stopping."""

    def __init__(self, library: str | None = None) -> None:
        self.library = library
        self._nvml: NvmlBackend | None = None

    def _backend(self) -> NvmlBackend:
        if self._nvml is None:
            self._nvml = NvmlBackend(self.library)
        return self._nvml

    def count(self) -> int:
        return self._backend().count()

    def read(self, index: int) -> GpuReading:
        return self._backend().read(index)

    def set_power_limit(self, index: int, watts: float) -> float:
        return self._backend().set_power_limit(index, watts)

    def set_clock_offsets(self, index: int, core_mhz: float, mem_mhz: float) -> None:
        self._backend().set_clock_offsets(index, core_mhz, mem_mhz)

    def set_locked_clocks(self, index: int, min_mhz: float, max_mhz: float) -> tuple[int, int]:
        return self._backend().set_locked_clocks(index, min_mhz, max_mhz)

    def set_application_clocks(self, index: int, mem_mhz: float, graphics_mhz: float,
                               ) -> tuple[int, int]:
        return self._backend().set_application_clocks(index, mem_mhz, graphics_mhz)

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
