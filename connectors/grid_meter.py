"""Grid meter over Modbus TCP (pymodbus client) -> ``grid.readings``.

The register map is data (the inventory's ``meter.register_map``, schemas/site.py): each
quantity at an address, as a float32 pair or a 16/32-bit integer with a scale, word order
configurable (SEL meters default to high word first).  A map whose fields lie far apart
(the SEL-735 keeps power at 370 and frequency at 900) is read in as few requests as fit the
meter's per-read limit (``read_plan``).  ``parse_registers`` is pure and refuses values a
meter cannot mean (NaN, infinities, a frequency outside 40-70 Hz).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Mapping, Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from connectors.base import ConnectorError, Emitter, every, with_backoff
from schemas.events import GridMeasured
from schemas.site import REGISTER_MAPS, REGISTER_TYPES, RegisterMap

SOURCE = "connector:grid-meter"

#: The map a meter gets when the inventory names none.
DEFAULT_MAP = REGISTER_MAPS["ieee754-float"]


class MeterDecodeError(ValueError):
    """Registers that do not make a plausible reading."""


def read_plan(rmap: RegisterMap) -> list[tuple[int, int]]:
    """The reads (start, count) that cover every field of the map: neighbouring fields
    share a read while it stays within ``rmap.max_read`` registers."""
    spans = sorted((f.address, f.address + f.words) for f in rmap.fields.values())
    plan: list[list[int]] = []
    for lo, hi in spans:
        if plan and hi - plan[-1][0] <= rmap.max_read:
            plan[-1][1] = max(plan[-1][1], hi)
        else:
            plan.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in plan]


def parse_registers(regs: Sequence[int] | Mapping[int, int], rmap: RegisterMap,
                    start: int = 0) -> dict[str, float]:
    """Quantities from the registers read: one block read from ``start``, or a mapping of
    address -> register (several reads); MeterDecodeError if not plausible."""
    at: Mapping[int, int] = regs if isinstance(regs, Mapping) else {
        start + i: r for i, r in enumerate(regs)}
    out: dict[str, float] = {}
    for name, field in rmap.fields.items():
        n, fmt = REGISTER_TYPES[field.type]
        words = [at.get(a) for a in range(field.address, field.address + n)]
        if any(w is None for w in words):
            raise MeterDecodeError(f"{name}: register {field.address} not in the block read")
        ws = [w for w in words if w is not None]
        if rmap.word_order == "little":
            ws.reverse()
        if any(not 0 <= r <= 0xFFFF for r in ws):
            raise MeterDecodeError(f"{name}: register value out of range {ws}")
        value = struct.unpack(fmt, struct.pack(f">{n}H", *ws))[0]
        if math.isnan(value) or math.isinf(value):
            raise MeterDecodeError(f"{name}: not a number ({value})")
        out[name] = float(value) * field.scale
    f = out.get("frequency_hz", 0.0)
    if not 40.0 <= f <= 70.0:
        raise MeterDecodeError(f"frequency {f:.3f} Hz is not a grid frequency")
    if out.get("voltage_v", 0.0) < 0:
        raise MeterDecodeError(f"negative voltage {out['voltage_v']}")
    nominal = out.get("nominal_hz", 0.0)
    if nominal not in (50.0, 60.0):
        out["nominal_hz"] = 60.0 if f > 55.0 else 50.0
    return out


def reading(values: dict[str, float], *, meter_id: str, site: str, ts: object) -> GridMeasured:
    return GridMeasured(site=site, device_id=meter_id, ts=ts, source=SOURCE,  # type: ignore[arg-type]
                        frequency_hz=values["frequency_hz"], voltage_v=values["voltage_v"],
                        active_power_kw=values["active_power_kw"],
                        reactive_power_kvar=values.get("reactive_power_kvar", 0.0),
                        nominal_hz=values["nominal_hz"])


class GridMeter:
    """Poll one meter every ``period_s`` (default 200 ms)."""

    def __init__(self, host: str, port: int, emitter: Emitter, *, meter_id: str = "grid-meter",
                 unit: int = 1, period_s: float = 0.2, timeout_s: float = 1.0,
                 rmap: RegisterMap | None = None):
        self.host, self.port, self.unit = host, port, unit
        self.emitter, self.meter_id = emitter, meter_id
        self.period_s, self.timeout_s = period_s, timeout_s
        self.rmap = rmap or DEFAULT_MAP
        self.exceptions = 0

    async def poll(self, client: AsyncModbusTcpClient) -> None:
        read = (client.read_holding_registers if self.rmap.function == "holding"
                else client.read_input_registers)
        regs: dict[int, int] = {}
        for start, count in read_plan(self.rmap):
            try:
                rr = await asyncio.wait_for(read(start, count=count, device_id=self.unit),
                                            self.timeout_s)
            except (ModbusException, TimeoutError) as exc:
                raise ConnectorError(f"meter {self.host}:{self.port}: {exc}") from exc
            if rr.isError():
                self.exceptions += 1
                code = getattr(rr, "exception_code", "?")
                self.emitter.error(f"meter answered Modbus exception {code} reading "
                                   f"{count} registers from {start}")
                return
            regs.update((start + i, r) for i, r in enumerate(rr.registers))
        ts = self.emitter.clock()
        try:
            values = parse_registers(regs, self.rmap)
            event = reading(values, meter_id=self.meter_id, site=self.emitter.site, ts=ts)
        except (MeterDecodeError, ValueError, struct.error) as exc:
            raw = struct.pack(f">{len(regs)}H", *(r & 0xFFFF for _, r in sorted(regs.items())))
            await self.emitter.dead(f"modbus://{self.host}:{self.port}", raw,
                                    f"{exc}"[:2000], key=self.meter_id)
            return
        await self.emitter.emit([event])

    async def run(self, stop: asyncio.Event) -> None:
        async def session() -> None:
            client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s,
                                          retries=0)
            if not await client.connect():
                raise ConnectorError(f"cannot connect to meter {self.host}:{self.port}")
            try:
                async def tick() -> None:
                    if not client.connected:
                        raise ConnectorError("meter connection lost")
                    await self.poll(client)
                await every(self.period_s, stop, tick)
            finally:
                client.close()

        await with_backoff(f"grid meter {self.host}:{self.port}", session, stop, self.emitter)
