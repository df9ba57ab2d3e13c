"""Back-testing the control rules: fold stored history through the energy agent, the scheduler
and the profit agent with other settings, and compare with what really happened.

The inputs are the site's recorded readings (grid meter, feeds, ASIC and GPU telemetry), the
operator's caps and the prices; the recorded headroom metrics, commands and acks are not
inputs: the back-test decides for itself.  Its commands are taken as applied at once (the
actuator's ack at the command's time), and the ASICs' telemetry is bent to its decisions:
an ASIC the back-test has asleep reports its standby draw and no hashrate; one it has
running while the real one slept reports its last reading from before that sleep.  So the
back-test's load, supply decisions and money follow its own plan.

"What really happened" is the same profit fold over the recorded telemetry, and the
recorded commands with their acks.  With the live settings and the same stored events the
back-test takes the live run's decisions (``tests/e2e/test_price_spike.py`` checks it).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from agents import energy, profit, scheduler
from schemas.commands import CommandAcknowledged, SleepAsic, WakeAsic
from schemas.envelope import Event
from schemas.events import AsicTelemetryObserved
from schemas.metrics import EnergyHeadroomComputed, ProfitComputed
from schemas.settings import Settings
from streams.codec import decode
from streams.history import HistoryStore
from streams.progress import Progress
from streams.replay import count_log, read_log

#: What the back-test folds: the site's readings, the operator's caps and the prices.
INPUT_TOPICS = ("grid.readings", "power.readings", "asic.telemetry", "gpu.telemetry",
                "commands.site", "prices")
#: Prices are published ahead of their intervals: they are read from this long before.
PRICE_LOOKBACK = timedelta(days=2)
STANDBY_W = 10.0  # what a sleeping miner draws when it never said


class SettingError(ValueError):
    """A ``--set`` that names no setting or gives it a value it refuses."""


def overrides(pairs: Iterable[str], base: Settings) -> tuple[Settings, dict[str, Any]]:
    """``KEY=VALUE`` pairs applied to ``base``: a key is a setting's name, its
    ``HASHPLANE_`` variable, or a unique prefix of a name (``price_margin``)."""
    fields = list(Settings.model_fields)
    raw: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SettingError(f"--set {pair!r}: want KEY=VALUE, e.g. price_margin_per_mwh=20")
        name = key.strip().lower().removeprefix("hashplane_")
        if name not in fields:
            matches = [f for f in fields if f.startswith(name)]
            if len(matches) != 1:
                hint = f"; did you mean {', '.join(matches[:5])}?" if matches else ""
                raise SettingError(f"--set {key}: no such setting{hint} "
                                   "(hashplane config lists them)")
            name = matches[0]
        value = value.strip()
        try:
            raw[name] = json.loads(value) if value[:1] in ("[", "{") else value  # lists, maps
        except ValueError as exc:
            raise SettingError(f"--set {name}={value!r}: not JSON: {exc}") from None
    try:
        merged = Settings.model_validate({**base.model_dump(), **raw})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise SettingError(f"--set {where}={raw.get(where, '')!r}: {first['msg']}") from None
    return merged, {k: getattr(merged, k) for k in raw}


@dataclass
class Outcome:
    """What a run did over the range: its commands and its money."""

    sleeps: int = 0
    price_sleeps: int = 0  # sleeps whose reason is the price
    wakes: int = 0
    asleep_s: float = 0.0  # ASIC-seconds asleep
    money: profit.Money = field(default_factory=profit.Money)
    currency: str = ""
    curtailed: set[str] = field(default_factory=set)  # devices put to sleep

    def add_windows(self, windows: Iterable[ProfitComputed]) -> None:
        for w in windows:
            if w.scope == "site":
                self.money = self.money + profit.Money(w.energy_kwh, w.revenue, w.power_cost)
                self.currency = self.currency or w.currency


@dataclass
class Report:
    since: datetime
    until: datetime
    events: int
    changed: dict[str, Any]
    actual: Outcome
    backtest: Outcome
    commands: list[SleepAsic | WakeAsic] = field(default_factory=list)

    def lines(self) -> list[str]:
        a, b = self.actual, self.backtest
        cur = a.currency or b.currency
        changed = ", ".join(f"{k}={v}" for k, v in self.changed.items()) or "the live settings"
        rows = [
            ("sleep commands", a.sleeps, b.sleeps, "d"),
            ("  of them on price", a.price_sleeps, b.price_sleeps, "d"),
            ("wake commands", a.wakes, b.wakes, "d"),
            ("ASIC-hours asleep", a.asleep_s / 3600, b.asleep_s / 3600, ".2f"),
            ("energy, MWh", a.money.energy_kwh / 1000, b.money.energy_kwh / 1000, ".4f"),
            (f"revenue, {cur}", a.money.revenue, b.money.revenue, ".4f"),
            (f"power cost, {cur}", a.money.power_cost, b.money.power_cost, ".4f"),
            (f"profit, {cur}", a.money.profit, b.money.profit, ".4f"),
        ]
        out = [f"backtest {self.since.isoformat()} .. {self.until.isoformat()}: "
               f"{self.events} events, with {changed}",
               f"{'':22}{'actual':>14}{'backtest':>14}{'difference':>14}"]
        for name, x, y, fmt in rows:
            out.append(f"{name:22}{x:>14{fmt}}{y:>14{fmt}}{y - x:>+14{fmt}}")
        more, fewer = b.curtailed - a.curtailed, a.curtailed - b.curtailed
        if more:
            out.append(f"would also have slept: {', '.join(sorted(more)[:20])}"
                       + (f" (+{len(more) - 20})" if len(more) > 20 else ""))
        if fewer:
            out.append(f"would have kept running: {', '.join(sorted(fewer)[:20])}"
                       + (f" (+{len(fewer) - 20})" if len(fewer) > 20 else ""))
        return out


class _Asleep:
    """Each ASIC's sleep time over the range, from a stream of its states."""

    def __init__(self) -> None:
        self.since: dict[str, float] = {}
        self.total = 0.0

    def see(self, device: str, asleep: bool, t: float) -> None:
        if asleep:
            self.since.setdefault(device, t)
        elif device in self.since:
            self.total += t - self.since.pop(device)

    def end(self, t: float) -> float:
        for device in list(self.since):
            self.see(device, False, t)
        return self.total


def run(store: HistoryStore, live: Settings, settings: Settings, since: datetime,
        until: datetime, changed: Mapping[str, Any] | None = None,
        progress: Progress | None = None) -> Report:
    """Fold [since, until) with ``settings``; compare with what happened under ``live``."""
    ep, sp, pp = energy.params(settings), scheduler.params(settings), profit.params(settings)
    actual_pp = profit.params(live)
    es, ss = energy.EnergyState(), scheduler.SchedulerState()
    ps, actual_ps = profit.ProfitState(), profit.ProfitState()
    actual, bt = Outcome(), Outcome()
    actual_asleep, bt_asleep = _Asleep(), _Asleep()
    asleep: dict[str, bool] = {}  # the back-test's plan per ASIC
    running: dict[str, AsicTelemetryObserved] = {}  # each ASIC's last reading hashing
    commands: list[SleepAsic | WakeAsic] = []
    site = live.site
    n = 0

    def decide(outputs: Iterable[Event]) -> None:
        for o in outputs:
            if not isinstance(o, EnergyHeadroomComputed):
                continue
            for c in scheduler.step(ss, o, sp)[1]:
                commands.append(c)
                sleep = isinstance(c, SleepAsic)
                bt.sleeps += sleep
                bt.wakes += not sleep
                bt.price_sleeps += sleep and c.reason.startswith("price ")
                if sleep:
                    bt.curtailed.add(c.device_id)
                asleep[c.device_id] = sleep
                bt_asleep.see(c.device_id, sleep, c.ts.timestamp())
                scheduler.step(ss, CommandAcknowledged(
                    site=c.site, device_id=c.device_id, ts=c.ts, source="backtest",
                    command_id=c.command_id, command_kind=c.kind, status="applied",
                    detail="back-test", latency_ms=0.0, actuator="backtest"), sp)

    def bent(e: AsicTelemetryObserved) -> AsicTelemetryObserved:
        """The reading as the back-test's plan would have made it."""
        if e.state == "running" and e.hashrate_ths > 0:
            running[e.device_id] = e
        # until the back-test commands it, an ASIC stays as the range found it
        plan = asleep.setdefault(e.device_id, e.state == "sleeping")
        if plan and e.state != "sleeping":
            return e.model_copy(update={"state": "sleeping", "hashrate_ths": 0.0,
                                        "power_w": STANDBY_W})
        if not plan and e.state == "sleeping" and (last := running.get(e.device_id)):
            return last.model_copy(update={"ts": e.ts, "event_id": e.event_id})
        return e

    def feed(e: Event) -> None:
        if isinstance(e, profit.SPEC.inputs):
            actual.add_windows(profit.profit_step(actual_ps, e, actual_pp)[1])  # type: ignore[arg-type]
        if isinstance(e, AsicTelemetryObserved):
            t = e.ts.timestamp()
            actual_asleep.see(e.device_id, e.state == "sleeping", t)
            e = bent(e)
            bt_asleep.see(e.device_id, e.state == "sleeping", t)
            scheduler.step(ss, e, sp)
        if isinstance(e, profit.SPEC.inputs):
            bt.add_windows(profit.profit_step(ps, e, pp)[1])  # type: ignore[arg-type]
        if isinstance(e, energy.SPEC.inputs):
            decide(energy.step(es, e, ep)[1])  # type: ignore[arg-type]

    was = gc.isenabled()
    gc.disable()
    try:
        for topic, _, payload in read_log(store, since - PRICE_LOOKBACK, since, ("prices",),
                                          chunk=PRICE_LOOKBACK):
            feed(decode(topic, payload))
        if progress is not None:
            progress.set(0, total=count_log(store, since, until, INPUT_TOPICS))
        for topic, _, payload in read_log(store, since, until, INPUT_TOPICS):
            n += 1
            feed(decode(topic, payload))
            if progress is not None and not n & 4095:
                progress.set(n)
        # what really happened: the recorded commands and their acks
        for topic, _, payload in read_log(store, since, until, ("commands.asic",)):
            c = decode(topic, payload)
            if isinstance(c, SleepAsic):
                actual.sleeps += 1
                actual.price_sleeps += c.reason.startswith("price ")
                actual.curtailed.add(c.device_id)
            elif isinstance(c, WakeAsic):
                actual.wakes += 1
    finally:
        if was:
            gc.enable()
    end = until.timestamp()
    actual.asleep_s, bt.asleep_s = actual_asleep.end(end), bt_asleep.end(end)
    actual.add_windows(profit.flush(actual_ps, site, actual_pp))
    bt.add_windows(profit.flush(ps, site, pp))
    if progress is not None:
        progress.set(n)
    return Report(since, until, n, dict(changed or {}), actual, bt, commands)
