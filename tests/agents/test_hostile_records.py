"""Schema-valid nonsense and NaN on the agents' topics: dead-lettered with the reason, never
folded, never a command (the energy and scheduler agents under Faust's test_context)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from agents import energy as energy_agent
from agents import scheduler as scheduler_agent
from schemas.commands import SleepAsic, WakeAsic
from schemas.events import RecordDeadLettered
from schemas.metrics import EnergyHeadroomComputed
from streams.app import TOPIC_HEADER
from streams.codec import encode
from tests.agents.test_site_agents import at, feed, grid, make, settings, tele

__all__ = ["settings"]


def raw(event: object, **override: object) -> bytes:
    """An event's JSON with fields replaced by anything, NaN included (as a producer that
    does not use our codec could send)."""
    d = orjson.loads(encode(event))  # type: ignore[arg-type]
    d.update(override)
    return orjson.dumps(d).replace(b'"__nan__"', b"NaN")


async def put_raw(agent: object, records: list[tuple[str, bytes]]) -> None:
    async with agent.test_context() as a:  # type: ignore[attr-defined]
        for topic, value in records:
            await a.put(value, key=b"k", headers={TOPIC_HEADER: topic.encode()})


async def test_nonsense_readings_are_dead_lettered_and_never_decide(settings) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"supply_feeds": ["f1"]})
    future = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    base = [("asic.telemetry", encode(tele(0, "a0"))), ("power.readings", encode(feed(0, 20))),
            ("grid.readings", encode(grid(0.5, 50.0)))]
    hostile = [
        ("grid.readings", raw(grid(1, 50.0), frequency_hz=1.0)),  # a 1 Hz grid
        ("grid.readings", raw(grid(1.1, 50.0), frequency_hz="__nan__")),
        ("asic.telemetry", raw(tele(1.2, "ghost"), power_w=1e12)),  # a terawatt miner
        ("asic.telemetry", raw(tele(1.3, "a1"), ts=future)),  # next year
        ("power.readings", raw(feed(1.4, 20), capacity_kw=0.0)),
        ("power.readings", raw(feed(1.5, 20), capacity_kw=1e12)),
        ("power.readings", raw(feed(1.6, 20), power_kw="__nan__")),
    ]
    agent, published = make(s, energy_agent.SPEC)
    await put_raw(agent, base + hostile + [("grid.readings", encode(grid(2, 50.0)))])
    letters = [e for e in published if isinstance(e, RecordDeadLettered)]
    metrics = [e for e in published if isinstance(e, EnergyHeadroomComputed)]
    assert len(letters) == len(hostile)
    reasons = " | ".join(x.reason for x in letters)
    for words in ("frequency_hz 1", "power_w 1e+12", "in the future", "capacity_kw 0",
                  "capacity_kw 1e+12"):
        assert words in reasons, words
    # NaN: not JSON (a bare NaN token) and refused by every schema besides
    assert reasons.count("not JSON") + reasons.count("invalid") == 2
    # only the sane readings were folded: supply 20 kW, load 3 kW, normal band
    assert metrics and all(m.supply_kw == 20 and m.load_kw == 3.0 and m.band == "normal"
                           and m.ts <= at(2) for m in metrics)


async def test_a_one_hertz_reading_sheds_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"supply_feeds": ["f1"]})
    energy, metrics = make(s, energy_agent.SPEC)
    await put_raw(energy, [("asic.telemetry", encode(tele(0, "a0"))),
                           ("power.readings", encode(feed(0, 20))),
                           ("grid.readings", encode(grid(0.5, 50.0))),
                           ("grid.readings", raw(grid(1, 50.0), frequency_hz=1.0))])
    scheduler, commands = make(s, scheduler_agent.SPEC)
    await put_raw(scheduler, [("asic.telemetry", encode(tele(0, "a0")))] + [
        ("metrics.energy", encode(m)) for m in metrics
        if isinstance(m, EnergyHeadroomComputed)])
    assert not [c for c in commands if isinstance(c, SleepAsic | WakeAsic)]
