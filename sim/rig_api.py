"""HTTP API of a simulated rig: RainbowMiner's endpoints plus the rig's simulated NVML."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from sim.nvml import NvmlError, SimNvml
from sim.rainbowminer import RBM_VERSION, SimRig


class PowerLimit(BaseModel):
    watts: float


class ClockOffsets(BaseModel):
    core_mhz: float
    mem_mhz: float


def rig_app(rig: SimRig, clock: Callable[[], float], nvml: SimNvml) -> FastAPI:
    """The rig's API app."""
    app = FastAPI(title=f"RainbowMiner {rig.rig_id} (simulated)", version=RBM_VERSION)

    def now() -> float:
        t = clock()
        for g in rig.gpus:
            g.advance(t)
        return t

    @app.get("/version")
    def version() -> dict[str, Any]:
        return {"Version": RBM_VERSION, "VersionSort": RBM_VERSION, "Rig": rig.rig_id}

    @app.get("/activeminers")
    def activeminers() -> list[dict[str, Any]]:
        return rig.active_miners(now())

    @app.get("/devices")
    def devices() -> list[dict[str, Any]]:
        now()
        return rig.devices()

    @app.get("/minerstats")
    def minerstats() -> list[dict[str, Any]]:
        return rig.miner_stats(now())

    @app.get("/applyoc", response_class=PlainTextResponse)
    def applyoc() -> str:
        rig.poll_config(clock())
        if not rig.oc_reset_on():  # RainbowMiner acts on it only with an OC reset interval
            return "Please wait, OC will be applied asap"
        rig.apply_oc(clock())
        return "Please wait, OC will be applied asap"

    @app.get("/nvml/devices")
    def nvml_devices() -> list[dict[str, Any]]:
        return [nvml.read(i) for i in range(nvml.count())]

    @app.get("/nvml/devices/{index}")
    def nvml_device(index: int) -> dict[str, Any]:
        try:
            return nvml.read(index)
        except NvmlError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.post("/nvml/devices/{index}/power-limit")
    def nvml_power_limit(index: int, body: PowerLimit) -> dict[str, Any]:
        if not 0 <= index < nvml.count():
            raise HTTPException(404, f"GPU {index}: no such device")
        try:
            nvml.set_power_limit(index, body.watts)
        except NvmlError as exc:
            raise HTTPException(422, str(exc)) from exc
        return nvml.read(index)

    @app.post("/nvml/devices/{index}/clock-offsets")
    def nvml_clock_offsets(index: int, body: ClockOffsets) -> dict[str, Any]:
        if not 0 <= index < nvml.count():
            raise HTTPException(404, f"GPU {index}: no such device")
        try:
            nvml.set_clock_offsets(index, body.core_mhz, body.mem_mhz)
        except NvmlError as exc:
            raise HTTPException(422, str(exc)) from exc
        return nvml.read(index)

    return app
