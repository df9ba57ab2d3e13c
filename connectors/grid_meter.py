"""Grid meter over Modbus TCP (pymodbus client) -> ``grid.readings``.

The register map is data (the inventory's ``meter.register_map``, schemas/site.py): each
quantity at an address, as a float32 pair or a 16/32-bit integer with a scale, word order
configurable (SEL meters default to high word first).  ``parse_registers`` is pure and
refuses values a meter cannot mean (NaN, infinities, a frequency outside 40-70 Hz).
"""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from connectors.base import ConnectorError, Emitter, every, with_backoff
from schemas.events import GridMeasured

SOURCE = "connector:grid-meter"


#: register type -> (registers it spans, struct format of its big-endian bytes)
TYPES = {"float32": (2, ">f"), "int32": (2, ">i"), "uint32": (2, ">I"), "int16": (1, ">h"),
         "uint16": (1, ">H")}


@dataclass(frozen=True)
class RegisterMap:
    """Where a meter keeps each quantity: address, and (``types``/``scales``) its type and
    scale when not a plain float32."""

    addresses: dict[str, int] = field(default_factory=lambda: {
        "frequency_hz": 0, "voltage_v": 2, "active_power_kw": 4, "reactive_power_kvar": 6,
        "nominal_hz": 14})
    high_word_first: bool = True
    function: str = "holding"  # or "input"
    types: dict[str, str] = field(default_factory=dict)  # name -> TYPES key (float32)
    scales: dict[str, float] = field(default_factory=dict)  # name -> multiplier (1)

    @classmethod
    def of(cls, spec: Any) -> RegisterMap:
        """From the inventory's map (schemas.site.RegisterMap)."""
        return cls(addresses={k: f.address for k, f in spec.fields.items()},
                   high_word_first=spec.word_order == "big", function=spec.function,
                   types={k: f.type for k, f in spec.fields.items()},
                   scales={k: f.scale for k, f in spec.fields.items()})

    def words(self, name: str) -> int:
        return TYPES[self.types.get(name, "float32")][0]

    @property
    def span(self) -> tuple[int, int]:
        lo = min(self.addresses.values())
        return lo, max(a + self.words(k) for k, a in self.addresses.items()) - lo


class MeterDecodeError(ValueError):
    """Registers that do not make a plausible reading."""


def parse_registers(regs: list[int], rmap: RegisterMap, start: int = 0) -> dict[str, float]:
    """Quantities from a block of registers read from ``start``; MeterDecodeError if not
    plausible."""
    out: dict[str, float] = {}
    for name, addr in rmap.addresses.items():
        n, fmt = TYPES[rmap.types.get(name, "float32")]
        i = addr - start
        if i < 0 or i + n > len(regs):
            raise MeterDecodeError(f"{name}: register {addr} not in the block read")
        words = regs[i:i + n] if rmap.high_word_first or n == 1 else regs[i:i + n][::-1]
        if any(not 0 <= r <= 0xFFFF for r in words):
            raise MeterDecodeError(f"{name}: register value out of range {words}")
        value = struct.unpack(fmt, struct.pack(f">{n}H", *words))[0]
        if math.isnan(value) or math.isinf(value):
            raise MeterDecodeError(f"{name}: not a number ({value})")
        out[name] = float(value) * rmap.scales.get(name, 1.0)
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
        self.rmap = rmap or RegisterMap()
        self.exceptions = 0

    async def poll(self, client: AsyncModbusTcpClient) -> None:
        start, count = self.rmap.span
        read = (client.read_holding_registers if self.rmap.function == "holding"
                else client.read_input_registers)
        try:
            rr = await asyncio.wait_for(read(start, count=count, device_id=self.unit),
                                        self.timeout_s)
        except (ModbusException, TimeoutError) as exc:
            raise ConnectorError(f"meter {self.host}:{self.port}: {exc}") from exc
        ts = self.emitter.clock()
        if rr.isError():
            self.exceptions += 1
            code = getattr(rr, "exception_code", "?")
            self.emitter.error(f"meter answered Modbus exception {code}")
            return
        try:
            values = parse_registers(list(rr.registers), self.rmap, start)
            event = reading(values, meter_id=self.meter_id, site=self.emitter.site, ts=ts)
        except (MeterDecodeError, ValueError, struct.error) as exc:
            raw = struct.pack(f">{len(rr.registers)}H", *(r & 0xFFFF for r in rr.registers))
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
