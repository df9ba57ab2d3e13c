"""Faust workers scale out by partitions, and a SIGKILLed one's partitions move.

The production layout of one site: ``hashplane broker``, ``hashplane up --site FILE
--no-worker`` (connectors, actuators, sink, API against the simulated farm over real
sockets) and two ``hashplane worker`` processes in one consumer group.

1. The two workers share the input partitions: each holds some, none is held twice, and
   together they hold every partition (each worker logs what it was assigned).
2. An operator's cap: the site agents, on whichever worker holds the site's partitions,
   put ASICs to sleep through the real actuator.
3. That worker is SIGKILLed.  The survivor is assigned everything the dead one held, and
   acts on a lower cap from the tables the dead one wrote: it sleeps more ASICs and never
   one already asleep.
4. Counted from the topics: every command has exactly one ack, each ASIC was told to
   sleep at most once, and the simulated miners asleep are exactly those.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.commands import CapSiteLoad, CommandAcknowledged, SleepAsic
from schemas.settings import Settings
from sim.farm import Farm
from streams.broker import free_port
from streams.publish import Publisher
from tests.conftest import until
from tests.faults.conftest import Broker, Proc, read_topic
from tests.sim.conftest import farm_config

pytestmark = pytest.mark.integration

ASICS = 12
#: a worker's Faust agents' assignment, and its forwarders' (streams/feed.py: consumer
#: groups of their own, whose partitions are named "feed:<topic>" (the site feed) and
#: "partition-feed:<topic>" here)
ASSIGNED = (("", re.compile(r"partitions assigned: (.*)$", re.M)),
            ("feed:", re.compile(r"site feed assigned: (.*)$", re.M)),
            ("partition-feed:", re.compile(r"partition feed assigned: (.*)$", re.M)))


def holdings(p: Proc) -> set[tuple[str, int]] | None:
    """The input partitions a worker holds now (the last assignment of its agents and of
    its forwarder), None before both have one."""
    text = p.log.read_text(errors="replace") if p.log.exists() else ""
    out: set[tuple[str, int]] = set()
    for group, pattern in ASSIGNED:
        lines = pattern.findall(text)
        if not lines:
            return None
        if lines[-1].strip() == "(none)":
            continue
        for part in lines[-1].split():
            topic, _, nums = part.partition("[")
            out |= {(group + topic, int(n)) for n in nums.rstrip("]").split(",")}
    return out


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    f = Farm(farm_config(tmp_path, asics=ASICS, gpu_rigs=0, model_endpoints=0,
                         coordinator=False))
    await f.start()
    yield f
    await f.stop()


async def commands_and_acks(s: Settings) -> tuple[list[SleepAsic], list[CommandAcknowledged]]:
    sleeps = [e for _, _, e in await read_topic(s.kafka_bootstrap, "commands.asic", idle_s=0.3)
              if isinstance(e, SleepAsic)]
    acks = [e for _, _, e in await read_topic(s.kafka_bootstrap, "commands.acks", idle_s=0.3)
            if isinstance(e, CommandAcknowledged)]
    return sleeps, acks


async def test_two_workers_share_partitions_and_a_killed_ones_move_without_loss(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc],
        farm: Farm, tmp_path: Path) -> None:
    site_file = farm.write_site(tmp_path / "site.toml")
    feeds = [f["id"] for f in farm.endpoints()["mqtt"]["feeds"]]
    s = fault_settings.model_copy(update={
        "supply_feeds": feeds, "asic_poll_s": 1.0, "energy_emit_s": 0.5,
        "api_port": free_port(), "api_key": "scaleout-key", "command_ttl_s": 60.0})
    spawn("up", "up", "--site", str(site_file), "--env-file",
          str(site_file.with_suffix(".env")), "--no-worker", settings=s)
    workers = [spawn(f"worker-{n}", "worker", settings=s) for n in ("a", "b")]

    def shared() -> bool:
        held = [holdings(w) for w in workers]
        return all(held) and not (held[0] & held[1])  # type: ignore[operator]

    await until(shared, 120, 0.5, what="both workers holding partitions, none twice")
    held = [holdings(w) or set() for w in workers]
    everything = held[0] | held[1]
    assert {t for t, _ in everything} >= {"feed:asic.telemetry", "partition-feed:shares",
                                          "hashplane.shares.feed", "commands.site"}
    site_worker, survivor = ((workers[0], workers[1]) if ("commands.site", 0) in held[0]
                             else (workers[1], workers[0]))
    devices = {a["id"] for a in farm.endpoints()["asics"]}

    async def cap(limit_kw: float) -> CapSiteLoad:
        now = datetime.now(UTC)
        c = CapSiteLoad(site="site-1", device_id="site-1", ts=now, source="api",
                        issued_at=now, expires_at=now + timedelta(seconds=300),
                        reason="grid operator", issued_by="operator:test", limit_kw=limit_kw)
        async with Publisher(s.kafka_bootstrap) as pub:
            await pub.publish(c)
        return c

    async def acted_on(c: CapSiteLoad, at_least: int) -> list[SleepAsic] | None:
        sleeps, acks = await commands_and_acks(s)
        acked = {a.command_id for a in acks}
        done = c.command_id in acked and len(sleeps) >= at_least
        return sleeps if done and all(x.command_id in acked for x in sleeps) else None

    await until(lambda: farm.load_kw() > 0, 60, 0.5, what="the farm running")
    load = farm.load_kw()
    first_cap = await cap(load * 0.7)
    first = await until(lambda: acted_on(first_cap, 1), 120, 1.0,
                        what="the first cap acted on and acked")
    site_worker.kill()
    await until(lambda: (holdings(survivor) or set()) >= everything, 60, 0.5,
                what="the survivor holding every partition of the killed worker")
    second_cap = await cap(load * 0.4)
    await until(lambda: acted_on(second_cap, len(first) + 1), 120, 1.0,
                what="the lower cap acted on by the survivor")
    await asyncio.sleep(2.0)  # nothing more is on its way
    sleeps, acks = await commands_and_acks(s)

    per_command = Counter(a.command_id for a in acks)
    slept = Counter(x.device_id for x in sleeps)
    asleep = {f"asic-{a.index + 1:05d}" for a in farm.asics if a.state == "sleeping"}
    print(f"workers held {len(held[0])} and {len(held[1])} partitions; "
          f"{site_worker.name} (site agents) SIGKILLed; the survivor holds "
          f"{len(holdings(survivor) or ())}. Sleeps: {len(first)} for the first cap, "
          f"{len(sleeps)} in all; {len(acks)} acks for {len(per_command)} commands")
    assert set(slept) <= devices
    assert max(slept.values()) == 1, f"an ASIC was told to sleep twice: {slept}"
    assert all(per_command[x.command_id] == 1 for x in sleeps), "one ack per command"
    assert set(per_command.values()) == {1}
    assert {a.status for a in acks if a.command_id in {x.command_id for x in sleeps}} \
        == {"applied"}
    assert asleep == set(slept), (asleep, set(slept))
    assert survivor.alive and survivor.stop() == 0, survivor.tail()

