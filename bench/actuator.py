"""Actuator benchmark: 1,000 ``curtail`` sleeps against the RPC floor, in one run.  Prints
measured numbers; not a test.

    .venv/bin/python bench/actuator.py [--asics 1000] [--rounds 3]

The simulated LuxOS fleet runs in its own process (``hashplane sim``), as the miners would.
Each round puts the whole fleet to sleep three ways, and wakes it between them (untimed;
one untimed round through the broker first, while the consumer joins its group):

* **RPC floor**: the bare ``curtail <session>,sleep`` request to every miner, all in flight
  (bounded by the actuator's concurrency), with nothing else running: what the wire and
  the miners allow.
* **actuator**: ``AsicActuator`` handling a ``SleepAsic`` per miner (dialect lookup, safety
  limits, session, the request, the reply parsed into an outcome), all in flight.
* **through the broker**: 1,000 ``SleepAsic`` records produced to ``commands.asic`` on a
  Tansu broker; the clock stops at the last ack on ``commands.acks`` (the
  ``CommandConsumer``: decode, dedup, one ack per command delivered with acks=all, the ack
  journal, commits).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.asic_sweep import start_farm
from connectors.asic_actuator import SOURCE, AsicActuator
from connectors.base import Emitter
from connectors.cgminer import AsicEndpoint, rpc
from connectors.commands import CommandConsumer
from connectors.firmware import luxos
from schemas.commands import CommandAcknowledged, SleepAsic, WakeAsic
from streams.broker import EmbeddedBroker
from streams.codec import decode, encode, encode_key
from streams.publish import Publisher
from streams.topics import ensure_topics

CONCURRENCY = 512  # the default asic_concurrency (schemas/settings.py)


def command(kind: type[SleepAsic] | type[WakeAsic], device: str) -> SleepAsic | WakeAsic:
    now = datetime.now(UTC)
    cid = uuid4()
    return kind(event_id=cid, command_id=cid, site="site-1", device_id=device, ts=now,
                source="bench", issued_at=now, expires_at=now + timedelta(seconds=60),
                reason="bench", issued_by="bench")


async def bounded(n: int, jobs: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(job: Any) -> Any:
        async with sem:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


async def floor(eps: list[AsicEndpoint], act: str) -> float:
    t0 = time.perf_counter()
    await bounded(CONCURRENCY, [rpc(e.host, e.port, "curtail",
                                    f"{luxos.SESSIONS[e.host]},{act}", 5.0) for e in eps])
    return time.perf_counter() - t0


async def handler(actuator: AsicActuator, eps: list[AsicEndpoint],
                  kind: type[SleepAsic] | type[WakeAsic]) -> float:
    cmds = [command(kind, e.device_id) for e in eps]
    t0 = time.perf_counter()
    outcomes = await bounded(CONCURRENCY, [actuator(c) for c in cmds])
    elapsed = time.perf_counter() - t0
    bad = [o for o in outcomes if o[0] != "applied"]
    if bad:
        raise SystemExit(f"{len(bad)} commands not applied: {bad[:3]}")
    return elapsed


async def through_broker(bootstrap: str, eps: list[AsicEndpoint],
                         kind: type[SleepAsic] | type[WakeAsic]) -> float:
    acks = AIOKafkaConsumer("commands.acks", bootstrap_servers=bootstrap, group_id=None,
                            auto_offset_reset="latest", fetch_max_wait_ms=20)
    await acks.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        await acks.getmany(timeout_ms=300)
        cmds = [command(kind, e.device_id) for e in eps]
        want = {c.command_id for c in cmds}
        t0 = time.perf_counter()
        futs = [await producer.send("commands.asic", encode(c), key=encode_key(c))
                for c in cmds]
        await asyncio.gather(*futs)
        while want:
            for records in (await acks.getmany(timeout_ms=50)).values():
                for r in records:
                    a = decode("commands.acks", r.value)
                    assert isinstance(a, CommandAcknowledged)
                    if a.command_id in want:
                        if a.status != "applied":
                            raise SystemExit(f"ack {a.status}: {a.detail}")
                        want.discard(a.command_id)
            if time.perf_counter() - t0 > 60:
                raise SystemExit(f"{len(want)} acks missing after 60 s")
        return time.perf_counter() - t0
    finally:
        await producer.stop()
        await acks.stop()


async def main(n: int, rounds: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 4096)), hard))
    work = Path(tempfile.mkdtemp(prefix="hashplane-bench-actuator-"))
    sim, asics = start_farm(n, work, "luxos=1", "127.3.0.1")
    broker = EmbeddedBroker(log_file=work / "broker.log")
    try:
        eps = [AsicEndpoint(str(a["id"]), str(a["host"]), int(str(a["port"])),
                            str(a["firmware"])) for a in asics]
        await broker.start()
        await ensure_topics(broker.bootstrap)
        publisher = Publisher(broker.bootstrap, client_id="bench-actuator")
        await publisher.start()
        actuator = AsicActuator(eps)
        consumer = CommandConsumer(
            broker.bootstrap, "commands.asic", "bench-asic-actuator", actuator.targets,
            actuator, Emitter(publisher, source=SOURCE, site="site-1"), actuator=SOURCE,
            concurrency=CONCURRENCY, timeout_s=4.0, journal=work / "asic.acked")
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        await actuator.prepare()  # sessions open, as the actuator opens them at its start
        print(f"hashplane actuator benchmark: {n:,} LuxOS miners (hashplane sim, own "
              f"process), concurrency {CONCURRENCY}, {os.cpu_count()} cores")
        # untimed: the consumer joins its group and reads back the acks before it acts
        await through_broker(broker.bootstrap, eps, SleepAsic)
        await through_broker(broker.bootstrap, eps, WakeAsic)
        rows: dict[str, list[float]] = {"RPC floor": [], "actuator": [], "through the broker": []}
        for _ in range(rounds):
            rows["RPC floor"].append(await floor(eps, "sleep"))
            await floor(eps, "wakeup")
            rows["actuator"].append(await handler(actuator, eps, SleepAsic))
            await handler(actuator, eps, WakeAsic)
            rows["through the broker"].append(await through_broker(broker.bootstrap, eps,
                                                                   SleepAsic))
            await through_broker(broker.bootstrap, eps, WakeAsic)
        base = statistics.median(rows["RPC floor"])
        print(f"\n{'1,000 sleeps':22} {'median':>8} {'best':>8} {'x floor':>8}   (rounds: "
              f"{rounds})")
        for name, xs in rows.items():
            m = statistics.median(xs)
            print(f"{name:22} {m:>7.3f}s {min(xs):>7.3f}s {m / base:>8.2f}")
        stop.set()
        await task
        await publisher.stop()
    finally:
        await broker.stop()
        sim.terminate()
        sim.wait(30)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--asics", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    asyncio.run(main(a.asics, a.rounds))
