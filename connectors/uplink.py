"""Uplink probe: an HTTP check against a connectivity endpoint -> ``uplink.status``."""

from __future__ import annotations

import asyncio
import time

import httpx

from connectors.base import Emitter, every
from schemas.events import UplinkStatusObserved

SOURCE = "connector:uplink"


class UplinkProbe:
    """GET ``url`` every ``period_s``; up means a 2xx answer within ``timeout_s``."""

    def __init__(self, url: str, emitter: Emitter, *, period_s: float = 5.0,
                 timeout_s: float = 3.0, device_id: str = "uplink"):
        self.url, self.emitter, self.device_id = url, emitter, device_id
        self.period_s, self.timeout_s = period_s, timeout_s

    async def probe(self, client: httpx.AsyncClient) -> UplinkStatusObserved:
        t0 = time.perf_counter()
        up, detail, latency = False, "", None
        try:
            r = await client.get(self.url, timeout=self.timeout_s)
            latency = 1000 * (time.perf_counter() - t0)
            up = 200 <= r.status_code < 300
            detail = "" if up else f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}"[:1000] or type(exc).__name__
        return UplinkStatusObserved(site=self.emitter.site, device_id=self.device_id,
                                    ts=self.emitter.clock(), source=SOURCE, target=self.url,
                                    up=up, latency_ms=latency if up else None, detail=detail)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient() as client:
            async def tick() -> None:
                await self.emitter.emit([await self.probe(client)])
            await every(self.period_s, stop, tick)
