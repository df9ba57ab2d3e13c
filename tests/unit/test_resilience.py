"""Pure pieces of the fault handling: dead-letter ids, the outbox bound, the supervisor,
the scheduler's durable commands in flight."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from agents import scheduler
from schemas.events import AsicTelemetryObserved, ShareCountsObserved
from schemas.metrics import EnergyHeadroomComputed
from streams.codec import dlq_id
from streams.publish import Publisher, records
from streams.supervise import Supervisor
from tests.factories import T0


def test_dead_letter_ids_tell_records_at_the_same_offset_apart() -> None:
    # the embedded broker restarted: offset 0 names a new record
    a = dlq_id("grid.readings", 0, 0, 1_700_000_000_000, b"\x00garbage")
    assert a == dlq_id("grid.readings", 0, 0, 1_700_000_000_000, b"\x00garbage")  # redelivery
    assert a != dlq_id("grid.readings", 0, 0, 1_700_000_123_000, b"\x00garbage")
    assert a != dlq_id("grid.readings", 0, 0, 1_700_000_000_000, b"other bytes")


def shares(i: int) -> ShareCountsObserved:
    return ShareCountsObserved(site="s", device_id="w", ts=T0 + timedelta(seconds=i),
                               source="t", worker="w", accepted=i, rejected=0, interval_s=1)


async def test_the_outbox_keeps_the_newest_readings_and_counts_what_it_dropped() -> None:
    pub = Publisher("127.0.0.1:9", buffer_max=10, retry_max_s=0.01)  # never started: down
    readings = [shares(i) for i in range(15)]
    await pub.offer(readings)
    await asyncio.sleep(0.05)  # the sender tried and put them back
    assert pub.stats.dropped == 5 and pub.stats.dropped_by_kind == {"ShareCountsObserved": 5}
    assert pub.stats.buffered == 10 and pub.stats.retries >= 1 and pub.stats.sent == 0
    kept = [r[2] for r in pub._outbox]
    assert kept == [r[2] for r in records(readings[5:])]  # the oldest went, order kept
    await pub.stop(flush_s=0.01)


async def test_the_supervisor_restarts_a_failed_service_with_growing_delays() -> None:
    stop = asyncio.Event()
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("device garbage")
        await stop.wait()

    sup = Supervisor(stop, max_delay_s=0.05)
    svc = sup.task("connector", flaky)
    for _ in range(40):
        await sup.check()
        await asyncio.sleep(0.01)
    assert len(runs) == 3 and svc.restarts == 2 and "device garbage" in svc.last_error
    stop.set()
    await sup.shutdown(1.0)


def test_a_restored_command_in_flight_is_not_sent_again() -> None:
    p = scheduler.SchedulerParams(min_on_s=0, ttl_s=60)
    tele = [AsicTelemetryObserved(site="s", device_id=f"a{i}", ts=T0, source="t",
                                  state="running", hashrate_ths=100, hashrate_avg_ths=100,
                                  power_w=3000, accepted=0, rejected=0, stale=0,
                                  hardware_errors=0, elapsed_s=1) for i in range(4)]

    def headroom(sec: float) -> EnergyHeadroomComputed:
        return EnergyHeadroomComputed(
            site="s", device_id="s", ts=T0 + timedelta(seconds=sec), source="t", supply_kw=20,
            margin_kw=0, available_kw=20, load_kw=12, asic_load_kw=12, gpu_load_kw=0,
            headroom_kw=8, target_load_kw=6)

    before, sent = scheduler.fold([*tele, headroom(1)], p)
    assert len(sent) == 2
    kept = {d: a.durable() for d, a in before.asics.items() if a.durable() is not None}
    # a new process: the table's content, the same telemetry, the next headroom
    after = scheduler.SchedulerState()
    for d, v in kept.items():
        scheduler.restore(after, d, v)
    for e in tele:
        scheduler.step(after, e, p)
    _, again = scheduler.step(after, headroom(2), p)
    assert again == []  # the two sleeps are still in flight: nothing more to send
    _, later = scheduler.step(after, headroom(62), p)  # expired without an ack: act again
    assert len(later) == 2
