"""ASIC miner physics: hashrate, power, temperatures, shares and counters over time.

Numbers from public spec sheets (Bitmain product pages, 2021-2024):
  Antminer S19j Pro  104 TH/s  3068 W  (29.5 J/TH), 3 boards x 126 chips, 4 fans
  Antminer S19 XP    140 TH/s  3010 W  (21.5 J/TH), 3 boards x 110 chips, 4 fans
  Antminer S21       200 TH/s  3500 W  (17.5 J/TH), 3 boards x 108 chips, 4 fans
  Antminer S21 Pro   234 TH/s  3510 W  (15.0 J/TH), 3 boards x 65 chips, 4 fans
  WhatsMiner M30S++  112 TH/s  3472 W  (31.0 J/TH), 3 boards x 111 chips, 2 fans (MicroBT)
Power profiles follow the usual frequency/voltage scaling of autotuning firmware
(LuxOS, Braiins): power ~ f * V^2 with V falling with f, so hashrate ~ power^0.6 about the
stock point: 70 % power still gives ~81 % hashrate.  A sleeping miner keeps its control
board and fans at idle (~12 W); waking ramps the boards up over ``WAKE_S`` seconds.

All methods take the simulated time ``t`` (seconds) as input and integrate lazily, so ten
thousand miners cost nothing until somebody reads them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from sim.sampling import binomial, poisson

RATE_DIFFICULTY = 65536.0
TWO_32 = 2**32
WAKE_S = 30.0  # full hashrate this long after wake-up (boards re-initialise, then ramp)
THERMAL_TAU_S = 60.0  # chip temperature time constant
SLEEP_W = 12.0


@dataclass(frozen=True)
class AsicModel:
    """Spec of one ASIC model."""

    type: str  # as the firmware reports it ("Antminer S19j Pro")
    nominal_ths: float
    nominal_w: float
    boards: int = 3
    chips_per_board: int = 126
    fans: int = 4
    freq_mhz: int = 525

    def profiles(self) -> list[Profile]:
        """Power steps around stock, named like LuxOS profiles (frequency in MHz)."""
        out = []
        for step in range(-6, 3):
            ratio = 1.0 + 0.075 * step
            watts = round(self.nominal_w * ratio)
            ths = self.nominal_ths * ratio**0.6
            freq = round(self.freq_mhz * ratio**0.6 / 5) * 5
            volt = round(13.8 * ratio**0.2, 2)
            name = "default" if step == 0 else f"{freq}MHz"
            out.append(Profile(name, freq, volt, watts, round(ths, 2), step))
        return out


@dataclass(frozen=True)
class Profile:
    """A frequency/voltage preset and what it draws and hashes."""

    name: str
    frequency_mhz: int
    voltage_v: float
    watts: int
    ths: float
    step: int


MODELS: dict[str, AsicModel] = {
    "S19j Pro": AsicModel("Antminer S19j Pro", 104.0, 3068.0, chips_per_board=126,
                          freq_mhz=525),
    "S19 XP": AsicModel("Antminer S19 XP", 140.0, 3010.0, chips_per_board=110, freq_mhz=500),
    "S21": AsicModel("Antminer S21", 200.0, 3500.0, chips_per_board=108, freq_mhz=490),
    "S21 Pro": AsicModel("Antminer S21 Pro", 234.0, 3510.0, chips_per_board=65,
                         freq_mhz=460),
    "M30S++": AsicModel("WhatsMiner M30S++ VE40", 112.0, 3472.0, chips_per_board=111,
                        fans=2, freq_mhz=600),
}


@dataclass
class PoolSlot:
    """One pool configured on the miner (cgminer's pool list)."""

    url: str
    user: str
    password: str = "x"
    enabled: bool = True
    alive: bool = True
    accepted: int = 0
    rejected: int = 0
    stale: int = 0
    diff_accepted: float = 0.0
    diff_rejected: float = 0.0
    diff_stale: float = 0.0
    last_share_time: float = 0.0
    difficulty: float = 65536.0


@dataclass
class SimAsic:
    """One simulated miner; ``t`` is simulated seconds."""

    index: int
    host: str
    model: AsicModel
    pools: list[PoolSlot]
    seed: int = 0
    ambient_c: float = 25.0
    reject_p: float = 0.002  # rare unless a scenario says otherwise
    stale_p: float = 0.001
    hw_error_rate: float = 0.00002  # per share
    firmware: str = "luxos"  # luxos | braiins | antminer | whatsminer | vnish (its API)
    state: str = "running"  # running | sleeping | waking | offline
    profile: str = "default"
    atm_enabled: bool = False
    active_pool: int = 0
    started_at: float = 0.0
    state_since: float = 0.0
    last_t: float = 0.0
    temp_c: float = 0.0
    accepted: int = 0
    rejected: int = 0
    stale: int = 0
    hw_errors: int = 0
    diff_accepted: float = 0.0
    diff_rejected: float = 0.0
    diff_stale: float = 0.0
    total_mh: float = 0.0
    restarts: int = 0
    live_pool: int | None = None  # index of the pool a real Stratum session is open to
    pending: list[str] = field(default_factory=list)  # shares waiting for that session
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _h5s: float = 0.0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed * 7919 + self.index)
        self.temp_c = self.target_temp()
        self._h5s = self.target_ths()
        self.active_pool = self._pick_pool()

    # -- physics ----------------------------------------------------------------------

    @property
    def profiles(self) -> dict[str, Profile]:
        return profiles_of(self.model)

    def current_profile(self) -> Profile:
        return self.profiles[self.profile]

    def ramp(self, t: float) -> float:
        """Fraction of full output: 0 asleep, rising linearly while waking."""
        if self.state in ("sleeping", "offline"):
            return 0.0
        if self.state == "waking":
            return min(1.0, max(0.0, (t - self.state_since) / WAKE_S))
        return 1.0

    def target_ths(self, t: float | None = None) -> float:
        return self.current_profile().ths * (1.0 if t is None else self.ramp(t))

    def power_w(self, t: float) -> float:
        r = self.ramp(t)
        if r == 0.0:
            return 0.0 if self.state == "offline" else SLEEP_W
        return SLEEP_W + (self.current_profile().watts - SLEEP_W) * r

    def target_temp(self, t: float | None = None) -> float:
        """Steady-state chip temperature for the present draw (fans hold ~70 °C at stock)."""
        p = self.current_profile().watts if t is None else self.power_w(t)
        return self.ambient_c + 45.0 * p / self.model.nominal_w

    def advance(self, t: float) -> None:
        """Integrate shares, counters and temperature from the last call to ``t``."""
        dt = t - self.last_t
        if dt <= 0:
            return
        if self.state == "waking" and t - self.state_since >= WAKE_S:
            self.state = "running"
        ths = self.target_ths(t)
        self._h5s = ths * (1.0 + self._rng.gauss(0.0, 0.01)) if ths > 0 else 0.0
        self.total_mh += ths * 1e6 * dt
        target = self.target_temp(t)
        self.temp_c = target + (self.temp_c - target) * math.exp(-dt / THERMAL_TAU_S)
        pool = self.pools[self.active_pool] if self.pools else None
        if ths > 0 and pool is not None and pool.alive and pool.enabled:
            # A pool set to an easy target (the demo's local pool: sim/work.py) is not
            # flooded: shares come at the rate of difficulty RATE_DIFFICULTY or harder.
            expected = ths * 1e12 * dt / (max(pool.difficulty, RATE_DIFFICULTY) * TWO_32)
            n = poisson(self._rng, expected)
            rej = binomial(self._rng, n, self.reject_p)
            stl = binomial(self._rng, n - rej, self.stale_p)
            acc = n - rej - stl
            if self.live_pool == self.active_pool:
                # A real pool decides: queue the shares for the Stratum session to submit.
                self.pending += ["good"] * acc + ["low"] * rej + ["stale"] * stl
                self.pending = self.pending[-1000:]
                self.hw_errors += binomial(self._rng, max(n, 1) * 50, self.hw_error_rate)
                self.last_t = t
                return
            d = pool.difficulty
            self.accepted += acc
            self.rejected += rej
            self.stale += stl
            self.diff_accepted += acc * d
            self.diff_rejected += rej * d
            self.diff_stale += stl * d
            pool.accepted += acc
            pool.rejected += rej
            pool.stale += stl
            pool.diff_accepted += acc * d
            pool.diff_rejected += rej * d
            pool.diff_stale += stl * d
            if n:
                pool.last_share_time = t
            self.hw_errors += binomial(self._rng, max(n, 1) * 50, self.hw_error_rate)
        self.last_t = t

    # -- control ----------------------------------------------------------------------

    def _pick_pool(self) -> int:
        for i, p in enumerate(self.pools):
            if p.enabled and p.alive:
                return i
        return self.active_pool if self.pools else 0

    def sleep(self, t: float) -> None:
        self.advance(t)
        if self.state in ("running", "waking"):
            self.state, self.state_since = "sleeping", t

    def wake(self, t: float) -> None:
        self.advance(t)
        if self.state == "sleeping":
            self.state, self.state_since = "waking", t

    def restart(self, t: float) -> None:
        """Miner process restart (crash): counters reset, boards re-initialise."""
        self.advance(t)
        self.accepted = self.rejected = self.stale = self.hw_errors = 0
        self.diff_accepted = self.diff_rejected = self.diff_stale = self.total_mh = 0.0
        for p in self.pools:
            p.accepted = p.rejected = p.stale = 0
            p.diff_accepted = p.diff_rejected = p.diff_stale = 0.0
        self.started_at = t
        self.restarts += 1
        if self.state != "sleeping":
            self.state, self.state_since = "waking", t

    def set_offline(self, t: float) -> None:
        """Crashed and not answering."""
        self.advance(t)
        self.state, self.state_since = "offline", t

    def set_profile(self, name: str, t: float) -> None:
        if name not in self.profiles:
            raise KeyError(name)
        self.advance(t)
        self.profile = name

    def switch_pool(self, index: int, t: float) -> None:
        self.advance(t)
        pool = self.pools[index]
        pool.enabled = True
        self.pools.insert(0, self.pools.pop(index))  # cgminer: switchpool makes it priority 0
        self.active_pool = self._pick_pool()

    def record(self, pool_index: int, outcome: str, difficulty: float, t: float) -> None:
        """A share's answer from a real pool: accepted, rejected or stale."""
        if not 0 <= pool_index < len(self.pools):
            return
        p = self.pools[pool_index]
        if outcome == "accepted":
            self.accepted += 1
            p.accepted += 1
            self.diff_accepted += difficulty
            p.diff_accepted += difficulty
        elif outcome == "stale":
            self.stale += 1
            p.stale += 1
            self.diff_stale += difficulty
            p.diff_stale += difficulty
        else:
            self.rejected += 1
            p.rejected += 1
            self.diff_rejected += difficulty
            p.diff_rejected += difficulty
        p.last_share_time = t

    def add_pool(self, url: str, user: str, password: str, alive: bool) -> int:
        self.pools.append(PoolSlot(url, user, password, alive=alive))
        return len(self.pools) - 1

    def enable_pool(self, index: int, enabled: bool, t: float) -> None:
        self.advance(t)
        self.pools[index].enabled = enabled
        self.active_pool = self._pick_pool()

    def remove_pool(self, index: int, t: float) -> None:
        self.advance(t)
        self.pools.pop(index)
        self.active_pool = self._pick_pool()

    def set_pool_alive(self, url_prefix: str, alive: bool, t: float) -> None:
        """The network path to pools whose URL starts with ``url_prefix`` went up or down."""
        self.advance(t)
        for p in self.pools:
            if p.url.startswith(url_prefix):
                p.alive = alive
        self.active_pool = self._pick_pool()

    # -- readings ---------------------------------------------------------------------

    def hashrate_5s_ths(self) -> float:
        return max(0.0, self._h5s)

    def elapsed(self, t: float) -> int:
        return int(max(0.0, t - self.started_at))

    def hashrate_avg_ths(self, t: float) -> float:
        el = t - self.started_at
        return self.total_mh / 1e6 / el if el > 0 else 0.0

    def fan_rpm(self, t: float) -> list[int]:
        if self.state == "offline":
            return [0] * self.model.fans
        duty = min(1.0, max(0.3, (self.temp_c - 40.0) / 40.0))
        return [int(6000 * duty + self._rng.uniform(-60, 60)) for _ in range(self.model.fans)]


_PROFILES: dict[AsicModel, dict[str, Profile]] = {}


def profiles_of(model: AsicModel) -> dict[str, Profile]:
    """A model's profiles by name (computed once per model)."""
    if model not in _PROFILES:
        _PROFILES[model] = {p.name: p for p in model.profiles()}
    return _PROFILES[model]
