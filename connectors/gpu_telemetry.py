"""GPU telemetry through the NVML-shaped backend -> ``gpu.telemetry``.

On a rig host the backend is NVML (pynvml); against the simulated farm it is the rig's
simulated NVML, reached over HTTP (``HttpNvmlBackend``) since the simulation runs in another
process.  Both implement ``connectors.gpu_backend.GpuBackend``.
"""

from __future__ import annotations

import asyncio
from dataclasses import fields
from typing import Any

import httpx

from connectors.base import Emitter, ReplyError, every, load_json
from connectors.gpu_backend import GpuBackend, GpuBackendError, GpuReading
from schemas.events import GpuTelemetryObserved

SOURCE = "connector:gpu"


class HttpNvmlBackend:
    """``GpuBackend`` over the simulated rig's ``/nvml`` HTTP interface."""

    def __init__(self, url: str, timeout_s: float = 3.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout_s)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._http.request(method, f"{self.url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise GpuBackendError(f"{self.url}: {exc!r}") from exc
        if r.status_code != 200:
            raise GpuBackendError(f"{self.url}{path}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            return load_json(r.content)
        except ReplyError as exc:
            raise GpuBackendError(f"{self.url}{path}: {exc}") from exc

    def count(self) -> int:
        return len(self._call("GET", "/devices"))

    def read(self, index: int) -> GpuReading:
        data = self._call("GET", f"/devices/{index}")
        if not isinstance(data, dict):
            raise GpuBackendError(f"{self.url}/devices/{index}: not an object")
        # what the simulated NVML does not report keeps its default (a missing required
        # value is a TypeError: a bad reading)
        return GpuReading(**{f.name: data[f.name] for f in fields(GpuReading) if f.name in data})

    def set_power_limit(self, index: int, watts: float) -> None:
        self._call("POST", f"/devices/{index}/power-limit", {"watts": watts})

    def set_clock_offsets(self, index: int, core_mhz: float, mem_mhz: float) -> None:
        self._call("POST", f"/devices/{index}/clock-offsets",
                   {"core_mhz": core_mhz, "mem_mhz": mem_mhz})

    def close(self) -> None:
        self._http.close()


def telemetry(r: GpuReading, *, rig_id: str, site: str, ts: Any) -> GpuTelemetryObserved:
    """The event of one reading (NVML knows no hashrate: that comes from the miner)."""
    return GpuTelemetryObserved(
        site=site, device_id=f"{rig_id}-gpu{r.index}", ts=ts, source=SOURCE, rig_id=rig_id,
        gpu_index=r.index, card=r.name, power_w=max(0.0, r.power_w),
        power_limit_w=max(0.0, r.power_limit_w), temp_c=r.temp_c,
        core_clock_mhz=max(0.0, r.core_clock_mhz), mem_clock_mhz=max(0.0, r.mem_clock_mhz),
        fan_pct=min(100.0, max(0.0, r.fan_pct)),
        utilization_pct=min(100.0, max(0.0, r.utilization_pct)), mem_temp_c=r.mem_temp_c,
        power_limit_min_w=max(0.0, r.power_limit_min_w),
        power_limit_max_w=max(0.0, r.power_limit_max_w),
        power_limit_default_w=max(0.0, r.power_limit_default_w),
        mem_used_mib=r.mem_used_mib, mem_total_mib=r.mem_total_mib,
        throttle_reasons=list(r.throttle_reasons), ecc_uncorrected=r.ecc_uncorrected,
        xid_errors=list(r.xid_errors))


class GpuTelemetry:
    """Read every GPU of every rig's backend every ``period_s`` (blocking calls in threads).

    NVML trouble never stops the connector: a rig whose NVML cannot start (no driver) and a
    GPU that fails its read (fell off the bus, refused) are dead-lettered with the reason
    as ``nvml://RIG[/gpuN]`` (which raises a critical ``gpu_fault`` alert), and every
    other GPU is still read; the next sweep tries again."""

    def __init__(self, backends: dict[str, GpuBackend], emitter: Emitter, *,
                 period_s: float = 5.0):
        self.backends, self.emitter, self.period_s = backends, emitter, period_s

    def _read_rig(self, rig_id: str, backend: GpuBackend,
                  ) -> tuple[list[GpuTelemetryObserved], list[tuple[str, str, str]]]:
        ts = self.emitter.clock()
        events, faults = [], []
        try:
            n = backend.count()
        except GpuBackendError as exc:
            return [], [(f"nvml://{rig_id}", rig_id, f"{exc.kind}: {exc}")]
        for i in range(n):
            device = f"{rig_id}-gpu{i}"
            try:
                events.append(telemetry(backend.read(i), rig_id=rig_id, site=self.emitter.site,
                                        ts=ts))
            except GpuBackendError as exc:
                faults.append((f"nvml://{rig_id}/gpu{i}", device, f"{exc.kind}: {exc}"))
            except (KeyError, TypeError, ValueError) as exc:  # a reading that is not one
                faults.append((f"nvml://{rig_id}/gpu{i}", device,
                               f"bad reading: {type(exc).__name__}: {exc}"))
        return events, faults

    async def sweep(self) -> None:
        async def one(rig_id: str, b: GpuBackend) -> list[GpuTelemetryObserved]:
            events, faults = await asyncio.to_thread(self._read_rig, rig_id, b)
            for where, device, reason in faults:
                self.emitter.error(f"{device}: {reason}")
                await self.emitter.dead(where, None, reason[:2000], key=device)
            return events

        results = await asyncio.gather(*(one(r, b) for r, b in self.backends.items()))
        await self.emitter.emit([e for r in results for e in r])

    async def run(self, stop: asyncio.Event) -> None:
        async def tick() -> None:
            await self.sweep()
        await every(self.period_s, stop, tick)
