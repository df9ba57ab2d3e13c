"""GPU physics for memory-bound mining (Etchash/Ethash family) and AI load.

Model (sources in brackets):
* Ethash reads 64 DAG pages of 128 B per hash, so hashrate ~ effective memory bandwidth /
  8 KiB [Ethash spec, ethereum.org]; real miners reach ~85-92 % of that [T-Rex/lolMiner
  benchmarks: RTX 3090 ~120 MH/s, RTX 4090 ~130 MH/s, A100 40GB ~170 MH/s].
* Memory overclock raises bandwidth in proportion to the memory clock up to the card's stable
  offset; past it, GDDR6X/HBM error correction and bit errors make the miner submit invalid
  shares: rejects and hardware errors climb steeply and effective hashrate falls
  [community OC guides: GDDR6X stable +1000..+1500 MHz, HBM2 +0..+100 MHz].
* The memory-bound kernel needs a fixed power at a given clock; below it the card throttles
  clocks and hashrate falls, above it extra power limit buys nothing: hashrate vs power limit
  saturates [nvidia-smi -pl sweeps: 3090 loses <5 % hashrate from 350 W to 290 W].
* Core clock matters little (+/-3 %) but costs power.
* Temperature follows power with thermal lag: T -> T_amb + R_th * P with tau ~ 30 s; above
  the throttle temperature clocks (and hashrate) are cut [NVIDIA thermal slowdown].
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sim.sampling import poisson

HASH_BYTES = 64 * 128  # Ethash: 64 accesses x 128 B per hash
THERMAL_TAU_S = 30.0


@dataclass(frozen=True)
class Card:
    """Public figures of one card model."""

    name: str
    model_key: str  # RainbowMiner's DeviceModel (no spaces)
    mem_clock_mhz: float  # stock memory clock as NVML reports it
    bandwidth_gbs: float  # stock memory bandwidth
    stable_mem_offset_mhz: float  # typical; each card draws its own around it
    pl_default_w: float
    pl_min_w: float
    pl_max_w: float
    core_clock_mhz: float
    idle_w: float
    mining_w: float  # power the memory-bound kernel needs at stock clocks
    r_th: float  # degC per W at full fan
    throttle_c: float
    efficiency: float = 0.90


CARDS: dict[str, Card] = {
    "RTX 3090": Card("NVIDIA GeForce RTX 3090", "RTX3090", 9751, 936, 1100, 350, 100, 400,
                     1695, 30, 300, 0.15, 83),
    "RTX 4090": Card("NVIDIA GeForce RTX 4090", "RTX4090", 10501, 1008, 1400, 450, 150, 600,
                     2520, 25, 290, 0.12, 84),
    "A100": Card("NVIDIA A100-PCIE-40GB", "A100PCIE40GB", 1215, 1555, 60, 250, 150, 250,
                 1410, 35, 210, 0.19, 85, efficiency=0.88),
    "H100": Card("NVIDIA H100 PCIe", "H100PCIe", 1593, 2039, 80, 350, 200, 350, 1755, 45,
                 290, 0.15, 87, efficiency=0.88),
}


@dataclass
class GpuSettings:
    """What the miner/driver applies: NVML power limit and clock offsets, miner intensity."""

    power_limit_w: float
    core_offset_mhz: float = 0.0
    mem_offset_mhz: float = 0.0
    intensity: int = 22


@dataclass
class SimGpu:
    """One simulated GPU; methods take simulated time ``t`` (s)."""

    index: int
    card: Card
    seed: int = 0
    ambient_c: float = 28.0
    mining: bool = True
    settings: GpuSettings | None = None
    last_t: float = 0.0
    temp_c: float = 0.0
    accepted: int = 0
    rejected: int = 0
    stale: int = 0
    hw_errors: int = 0
    share_rate_per_mh: float = 0.004  # shares/s per MH/s at the pool's difficulty
    stable_offset: float = 0.0
    reject_bias: float = 0.0  # scenario: extra reject probability

    def __post_init__(self) -> None:
        rng = random.Random(self.seed * 104729 + self.index)
        # Silicon lottery: each card's own stable offset, +/-12 % around the typical one.
        self.stable_offset = self.card.stable_mem_offset_mhz * rng.uniform(0.88, 1.12)
        self._rng = rng
        if self.settings is None:
            self.settings = GpuSettings(power_limit_w=self.card.pl_default_w)
        self.temp_c = self.ambient_c + self.card.r_th * self.power_w()

    # -- physics (pure functions of settings) ------------------------------------------

    @property
    def s(self) -> GpuSettings:
        assert self.settings is not None
        return self.settings

    def mem_clock_mhz(self) -> float:
        return self.card.mem_clock_mhz + self.s.mem_offset_mhz

    def core_clock_mhz(self) -> float:
        return self.card.core_clock_mhz + self.s.core_offset_mhz

    def power_needed_w(self) -> float:
        """Power the kernel wants at these clocks."""
        c = self.card
        mem_extra = 0.02 * max(0.0, self.s.mem_offset_mhz) * c.mining_w / 1000
        core_extra = 0.15 * self.s.core_offset_mhz
        return max(c.idle_w, c.mining_w + mem_extra + core_extra)

    def power_w(self) -> float:
        if not self.mining:
            return self.card.idle_w
        return min(self.s.power_limit_w, self.power_needed_w())

    def raw_hashrate_mhs(self) -> float:
        """Hashrate before throttling and errors."""
        c = self.card
        offset = min(self.s.mem_offset_mhz, self.stable_offset + 0.5 * max(
            0.0, self.s.mem_offset_mhz - self.stable_offset))
        bw = c.bandwidth_gbs * (c.mem_clock_mhz + offset) / c.mem_clock_mhz
        core = 1.0 + 0.03 * math.tanh(self.s.core_offset_mhz / 200.0)
        intensity = 1.0 - 0.02 * max(0, 22 - self.s.intensity) / 4
        return c.efficiency * bw * 1e9 / HASH_BYTES / 1e6 * core * intensity

    def power_factor(self) -> float:
        """Fraction of hashrate the power limit allows (saturates at 1)."""
        need = self.power_needed_w() - self.card.idle_w
        have = self.s.power_limit_w - self.card.idle_w
        if need <= 0:
            return 1.0
        return float(max(0.0, min(1.0, have / need)) ** 0.6)

    def thermal_factor(self) -> float:
        over = self.temp_c - self.card.throttle_c
        return 1.0 if over <= 0 else max(0.3, 1.0 - 0.04 * over)

    def reject_probability(self) -> float:
        """Shares refused: near zero while stable, steep past the stable memory offset."""
        excess = max(0.0, self.s.mem_offset_mhz - self.stable_offset)
        width = 0.12 * self.card.stable_mem_offset_mhz + 10.0
        return min(0.9, 0.003 + 0.05 * (excess / width) ** 2 + self.reject_bias)

    def hashrate_mhs(self) -> float:
        """Reported (live) hashrate."""
        if not self.mining:
            return 0.0
        return self.raw_hashrate_mhs() * self.power_factor() * self.thermal_factor()

    def effective_hashrate_mhs(self) -> float:
        """Hashrate that earns: the reported one minus what the pool rejects."""
        return self.hashrate_mhs() * (1.0 - self.reject_probability())

    def steady_temp_c(self) -> float:
        return self.ambient_c + self.card.r_th * self.power_w()

    def fan_pct(self) -> float:
        return max(30.0, min(100.0, 30.0 + 3.5 * (self.temp_c - 50.0)))

    # -- time ---------------------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Integrate temperature and share counters to ``t``."""
        dt = t - self.last_t
        if dt <= 0:
            return
        target = self.steady_temp_c()
        self.temp_c = target + (self.temp_c - target) * math.exp(-dt / THERMAL_TAU_S)
        if self.mining:
            n = poisson(self._rng, self.hashrate_mhs() * self.share_rate_per_mh * dt)
            p = self.reject_probability()
            rej = sum(1 for _ in range(n) if self._rng.random() < p)
            stl = sum(1 for _ in range(n - rej) if self._rng.random() < 0.002)
            self.accepted += n - rej - stl
            self.rejected += rej
            self.stale += stl
            excess = max(0.0, self.s.mem_offset_mhz - self.stable_offset)
            if excess > 0:
                self.hw_errors += poisson(self._rng, dt * excess / 50.0)
        self.last_t = t

    def apply(self, settings: GpuSettings) -> None:
        """Driver applies new settings (clamped to the card's limits)."""
        c = self.card
        self.settings = GpuSettings(
            power_limit_w=min(c.pl_max_w, max(c.pl_min_w, settings.power_limit_w)),
            core_offset_mhz=max(-500.0, min(500.0, settings.core_offset_mhz)),
            mem_offset_mhz=max(-1000.0, min(3000.0, settings.mem_offset_mhz)),
            intensity=max(8, min(25, settings.intensity)))

    def reset_counters(self) -> None:
        self.accepted = self.rejected = self.stale = self.hw_errors = 0
