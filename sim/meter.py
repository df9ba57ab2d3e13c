"""The site's grid meter: a Modbus TCP server modelled on a SEL-735-class revenue meter.

It serves one of the register maps of ``schemas.site.REGISTER_MAPS`` (holding registers,
function code 3; the same values mirrored as input registers, function code 4):

``ieee754-float`` (the default): each value an IEEE-754 float32 in two registers, high
word first (big-endian words, the SEL default):

  address  name                   unit
  0-1      frequency              Hz
  2-3      voltage, L-L average   V
  4-5      active power, total    kW    (positive = import from the grid)
  6-7      reactive power, total  kvar
  8-9      power factor           -
  10-11    current, average       A
  12-13    active energy import   kWh
  14-15    nominal frequency      Hz    (50 or 60)

``sel-735``: the SEL-735's own map: IA 350, VAB 364, W3 370, Q3 374 as 32-bit integers
(most significant word first) in hundredths, FREQ 900 in hundredths of a hertz.  The
registers between read 0, as the meter's reserved addresses do.

Reading past the map gets Modbus exception 2 (illegal data address); an unsupported
function gets exception 1 (illegal function), as from the real meter.  Frequency wanders like
a real grid (Ornstein-Uhlenbeck noise, ~10 mHz) around a set point that scenarios move.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from schemas.site import REGISTER_MAPS, REGISTER_TYPES, RegisterField, RegisterMap

#: The default (ieee754-float) map's addresses.
REGISTERS = {name: f.address for name, f in REGISTER_MAPS["ieee754-float"].fields.items()}


def encode_float(value: float) -> list[int]:
    """float32 -> two registers, high word first."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def decode_float(regs: list[int]) -> float:
    """Two registers, high word first -> float."""
    return float(struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0])


def encode(value: float, f: RegisterField, word_order: str = "big") -> list[int]:
    """A quantity as the registers of its field: unscaled, rounded for an integer type and
    held within the type's range, as a meter's firmware does."""
    n, fmt = REGISTER_TYPES[f.type]
    raw: float | int = value / f.scale
    if f.type != "float32":
        bits = 16 * n
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if f.type.startswith("int") \
            else (0, (1 << bits) - 1)
        raw = max(lo, min(hi, round(raw)))
    words = list(struct.unpack(f">{n}H", struct.pack(fmt, raw)))
    return words[::-1] if word_order == "little" else words


@dataclass
class GridModel:
    """Grid frequency and voltage at the point of connection."""

    nominal_hz: float = 50.0
    voltage_nominal_v: float = 400.0
    seed: int = 0
    noise_hz: float = 0.01
    reversion_s: float = 5.0
    setpoint_hz: float | None = None  # scenarios move it; None = nominal
    ramp_hz_per_s: float = 0.1  # how fast the grid moves towards the set point
    last_t: float = 0.0
    frequency_hz: float = 0.0
    energy_kwh: float = 0.0
    mean_hz: float = 0.0  # where the grid is heading towards the set point

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.frequency_hz = self.mean_hz = self.nominal_hz

    def advance(self, t: float, load_kw: float) -> None:
        dt = t - self.last_t
        if dt <= 0:
            return
        target = self.setpoint_hz if self.setpoint_hz is not None else self.nominal_hz
        # The mean moves towards the set point at a finite rate; OU noise rides on it.
        dev = self.frequency_hz - self.mean_hz
        step = self.ramp_hz_per_s * dt
        self.mean_hz += max(-step, min(step, target - self.mean_hz))
        decay = math.exp(-dt / self.reversion_s)
        dev = dev * decay + self.noise_hz * math.sqrt(1 - decay * decay) * self.rng.gauss(0, 1)
        self.frequency_hz = self.mean_hz + dev
        self.energy_kwh += max(0.0, load_kw) * dt / 3600
        self.last_t = t

    def values(self, load_kw: float) -> dict[str, float]:
        pf = 0.98
        v = self.voltage_nominal_v * (1 + 0.005 * self.rng.gauss(0, 1))
        kvar = load_kw * math.tan(math.acos(pf))
        amps = load_kw * 1000 / (math.sqrt(3) * v * pf) if v > 0 else 0.0
        return {"frequency_hz": self.frequency_hz, "voltage_v": v, "active_power_kw": load_kw,
                "reactive_power_kvar": kvar, "power_factor": pf, "current_a": amps,
                "energy_import_kwh": self.energy_kwh, "nominal_hz": self.nominal_hz}


class MeterServer:
    """Serve a register map on host:port; registers are filled from the grid model on
    every read (pymodbus device action), so a poll always sees the present value."""

    def __init__(self, grid: GridModel, host: str = "127.0.0.1", port: int = 0,
                 load_kw: Callable[[], float] = lambda: 0.0,
                 clock: Callable[[], float] = lambda: 0.0,
                 register_map: str = "ieee754-float"):
        self.grid = grid
        self.host, self.port = host, port
        self.load_kw = load_kw
        self.clock = clock
        self.map_name = register_map
        self.rmap: RegisterMap = REGISTER_MAPS[register_map]
        self.size = max(f.address + f.words for f in self.rmap.fields.values())
        self.regs: list[int] = [0] * self.size
        self.reads = 0
        blocks = [SimData(0, values=[0] * self.size, datatype=DataType.REGISTERS)]
        # No coils or inputs at the map's addresses: reading them there is an illegal address.
        none = [SimData(self.size + 1000, values=[False], datatype=DataType.BITS)]
        ir = [SimData(0, values=[0] * self.size, datatype=DataType.REGISTERS)]
        self.device = SimDevice(id=0, simdata=(none, list(none), blocks, ir),
                                action=self._action)
        self.server: ModbusTcpServer | None = None

    def refresh(self, t: float, load_kw: float) -> None:
        """Advance the grid to ``t`` and recompute the registers."""
        self.grid.advance(t, load_kw)
        regs: list[int] = [0] * self.size
        values = self.grid.values(load_kw)
        for name, f in self.rmap.fields.items():
            regs[f.address:f.address + f.words] = encode(values[name], f, self.rmap.word_order)
        self.regs = regs

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: Any) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # the meter's measurement registers are read-only
        self.reads += 1
        self.refresh(self.clock(), self.load_kw())
        for i in range(len(current_registers)):
            a = start_address + i
            if 0 <= a < self.size:
                current_registers[i] = self.regs[a]
        return None

    async def start(self) -> None:
        if not self.port:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        self.server = ModbusTcpServer(self.device, address=(self.host, self.port))
        self._task = asyncio.create_task(self.server.serve_forever())
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection(self.host, self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()  # type: ignore[no-untyped-call]
            self.server = None
