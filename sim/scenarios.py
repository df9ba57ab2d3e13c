"""Scenarios on the simulation clock: each is a list of timed steps acting on the farm."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sim.asic import SimAsic
from sim.feeds import Feed
from sim.market import PowerMarket
from sim.meter import GridModel
from sim.rainbowminer import SimRig


class Site(Protocol):
    """What a scenario may act on: the farm's physics and its uplink, nothing of how the
    farm serves its devices (sim/farm.py implements it)."""

    grid: GridModel
    feeds: list[Feed]
    feed_capacity0: dict[str, float]  # each feed's nameplate capacity at the start
    rigs: list[SimRig]
    asics: list[SimAsic]
    market: PowerMarket

    def t(self) -> float:
        """Simulated seconds."""
        ...

    async def set_uplink(self, up: bool) -> None:
        """Cut or restore the internet."""
        ...


Action = Callable[[Site], Awaitable[None] | None]


@dataclass(frozen=True)
class Step:
    at_s: float  # simulated seconds after the scenario starts
    what: str
    action: Action


def _grid(hz: float | None, ramp: float = 0.5) -> Action:
    def act(f: Site) -> None:
        f.grid.ramp_hz_per_s = ramp
        f.grid.setpoint_hz = None if hz is None else hz * f.grid.nominal_hz / 50.0
    return act


def _feed(index: int, factor: float) -> Action:
    def act(f: Site) -> None:
        feed = f.feeds[index]
        feed.capacity_kw = f.feed_capacity0[feed.feed_id] * factor
    return act


def _uplink(up: bool) -> Action:
    async def act(f: Site) -> None:
        await f.set_uplink(up)
    return act


def _ambient(rig: int, delta_c: float) -> Action:
    def act(f: Site) -> None:
        for g in f.rigs[rig % len(f.rigs)].gpus:
            g.ambient_c = 28.0 + delta_c
    return act


def _overclock(rig: int, gpu: int, past_stable: float | None) -> Action:
    def act(f: Site) -> None:
        from sim.gpu import GpuSettings

        g = f.rigs[rig % len(f.rigs)].gpus[gpu]
        s = g.s
        mem = 0.0 if past_stable is None else g.stable_offset * (1 + past_stable)
        g.apply(GpuSettings(s.power_limit_w, s.core_offset_mhz, mem, s.intensity))
    return act


def _price(per_mwh: float | None) -> Action:
    def act(f: Site) -> None:
        f.market.spike(per_mwh)
    return act


def _crash(first: int, n: int, back: bool) -> Action:
    def act(f: Site) -> None:
        t = f.t()
        for a in f.asics[first:first + n]:
            if back:
                a.restart(t)
            else:
                a.set_offline(t)
    return act


SCENARIOS: dict[str, list[Step]] = {
    "grid-dip": [Step(10, "frequency falls to 49.4 Hz", _grid(49.4)),
                 Step(40, "frequency recovers", _grid(None, ramp=0.2))],
    "supply-drop": [Step(10, "feed 1 loses 40 %", _feed(0, 0.6)),
                    Step(130, "feed 1 restored", _feed(0, 1.0))],
    "uplink-outage": [Step(10, "uplink cut (internet and upstream pool)", _uplink(False)),
                      Step(310, "uplink restored", _uplink(True))],
    "gpu-overheat": [Step(10, "rig01 cooling fails (+25 °C ambient)", _ambient(0, 25.0)),
                     Step(190, "rig01 cooling restored", _ambient(0, 0.0))],
    "reject-spike": [Step(10, "rig02 GPU#03 memory pushed 40 % past its stable offset",
                          _overclock(1, 3, 0.4)),
                     Step(190, "rig02 GPU#03 memory offset reset", _overclock(1, 3, None))],
    # 95/MWh at a hashprice of 0.05/TH/s/day: breakeven 23.1 J/TH, so the S19j Pro (29.5)
    # and the WhatsMiner M30S++ (31.0) lose money and sleep; the S19 XP, S21, S21 Pro run
    "price-spike": [Step(10, "real-time power price spikes to 95/MWh", _price(95.0)),
                    Step(130, "real-time price back to the day-ahead 45/MWh", _price(None))],
    # every kind of trouble in sequence, for bench/control_quality.py: both frequency bands,
    # a supply loss, a price spike, an uplink outage, a miner crash
    "trouble": [Step(10, "frequency falls to 49.7 Hz (the first band)", _grid(49.7)),
                Step(40, "frequency falls to 49.4 Hz (the second band)", _grid(49.4)),
                Step(70, "frequency recovers", _grid(None, ramp=0.2)),
                Step(150, "feed 1 loses 40 %", _feed(0, 0.6)),
                Step(250, "feed 1 restored", _feed(0, 1.0)),
                Step(320, "real-time power price spikes to 95/MWh", _price(95.0)),
                Step(440, "real-time price back to the day-ahead 45/MWh", _price(None)),
                Step(500, "uplink cut (internet and upstream pool)", _uplink(False)),
                Step(620, "uplink restored", _uplink(True)),
                Step(680, "ASICs 1-5 crash", _crash(0, 5, back=False)),
                Step(740, "ASICs 1-5 restart (counters reset)", _crash(0, 5, back=True))],
    "asic-crash": [Step(10, "ASICs 1-5 crash", _crash(0, 5, back=False)),
                   Step(70, "ASICs 1-5 restart (counters reset)", _crash(0, 5, back=True))],
}


def describe() -> dict[str, list[dict[str, Any]]]:
    """Scenario names and their steps (for --help and the endpoints file)."""
    return {name: [{"at_s": s.at_s, "what": s.what} for s in steps]
            for name, steps in SCENARIOS.items()}
