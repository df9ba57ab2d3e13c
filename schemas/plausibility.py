"""Plausible ranges of physical readings, as data: what a value must be for hashplane to act
on it.

A schema says what a value *can* be (a frequency is a positive number); this table says
what a real site *can read* (a 50 Hz grid is never at 1 Hz; no ASIC draws a terawatt).  A
reading outside its range is a device fault, not a decision: connectors dead-letter it
instead of publishing it, the history sink dead-letters it instead of storing it, and the
agents never fold it (``implausible`` is the one check all three run).  Ranges are wide on
purpose: they catch nonsense, not a bad day (a frequency event reaching 47 Hz is real and
must shed the fleet).  Time: a timestamp more than the clock-skew allowance ahead of the
receiver's clock is refused.  (Old timestamps are not: replaying history is legitimate, and
the history sink and the agents must judge a record alike for ``rebuild`` to equal the live
state; connectors stamp readings with their own clock, so theirs are never old.)

Sources of the bounds: grid frequency stays within a few Hz of nominal on every
interconnected grid (ENTSO-E load shedding starts at 49.0 Hz and generators trip near
47.5 Hz; NERC's under-frequency relays act near 58-59 Hz), so +-10 Hz of nominal is beyond
any real reading; the largest air and hydro ASICs draw under 12 kW (Antminer S21 XP Hyd
5.3 kW, Whatsminer M66S++ Hyd 11 kW); the largest GPUs under 1.5 kW (B200 1 kW); a feed into
a container farm is a few MW (100 MW bounds any single site); timestamps a connector stamps
are its own clock's (a skew allowance), never next year, never older than the topic keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.envelope import Event


@dataclass(frozen=True, slots=True)
class Plausible:
    """The range of one field of one event kind (``around_nominal``: relative to the
    event's ``nominal_hz``)."""

    kind: str
    field: str
    lo: float
    hi: float
    unit: str
    around_nominal: bool = False


RANGES: tuple[Plausible, ...] = (
    Plausible("GridMeasured", "frequency_hz", -10.0, 10.0, "Hz from nominal",
              around_nominal=True),
    Plausible("GridMeasured", "nominal_hz", 45.0, 65.0, "Hz"),
    Plausible("GridMeasured", "voltage_v", 0.0, 800_000.0, "V"),
    Plausible("GridMeasured", "active_power_kw", -1_000_000.0, 1_000_000.0, "kW"),
    Plausible("FeedPowerMeasured", "power_kw", 0.0, 100_000.0, "kW"),
    Plausible("FeedPowerMeasured", "capacity_kw", 0.001, 100_000.0, "kW"),
    Plausible("FeedPowerMeasured", "voltage_v", 0.0, 800_000.0, "V"),
    Plausible("FeedPowerMeasured", "current_a", 0.0, 200_000.0, "A"),
    Plausible("AsicTelemetryObserved", "power_w", 0.0, 15_000.0, "W"),
    Plausible("AsicTelemetryObserved", "hashrate_ths", 0.0, 5_000.0, "TH/s"),
    Plausible("AsicTelemetryObserved", "temp_chip_c", -40.0, 150.0, "°C"),
    Plausible("GpuTelemetryObserved", "power_w", 0.0, 2_000.0, "W"),
    Plausible("GpuTelemetryObserved", "temp_c", -40.0, 130.0, "°C"),
)

#: A source's clock may run this far ahead of ours.
CLOCK_SKEW = timedelta(minutes=5)

_BY_KIND: dict[str, tuple[Plausible, ...]] = {}
for _r in RANGES:
    _BY_KIND[_r.kind] = (*_BY_KIND.get(_r.kind, ()), _r)


def implausible(event: Event, now: datetime | None = None) -> str | None:
    """Why ``event`` cannot be a real reading, or None.  ``now`` (the receiver's clock at
    arrival) enables the time check: not after ``now`` + the skew allowance."""
    for r in _BY_KIND.get(event.kind, ()):
        v = getattr(event, r.field, None)
        if v is None:
            continue
        value = float(v)
        if not math.isfinite(value):
            return f"{r.field} {value} is not finite"
        base = float(getattr(event, "nominal_hz", 0.0) or 0.0) if r.around_nominal else 0.0
        if not base + r.lo <= value <= base + r.hi:
            return (f"{r.field} {value:g} outside the plausible range {base + r.lo:g}.."
                    f"{base + r.hi:g} {r.unit.replace(' from nominal', '')}")
    if now is not None and event.ts > now + CLOCK_SKEW:
        return f"timestamp {event.ts.isoformat()} is in the future (now {now.isoformat()})"
    return None
