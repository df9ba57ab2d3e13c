"""Share ratios through the partition feed, across a SIGKILL of ``hashplane worker``: every
ratio the step functions give, none folded twice, a record that is not an event lettered
once; and a feed frame forwarded twice (a forwarder killed before its commit) folded once.

Counted from the topics: ``metrics.shares`` may hold an output more than once (at least
once: a worker killed after publishing, before committing, publishes it again), always with
the same content under the same id, which the history store collapses.  A record folded
twice would show as a second, different content under an id (its window's counts)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.share_ratio import fold
from schemas.events import RecordDeadLettered, ShareCountsObserved
from schemas.metrics import ShareRatioComputed
from schemas.settings import Settings
from streams.publish import Publisher
from streams.topics import committed_total, ensure_topics, partition_feed
from tests.conftest import until
from tests.factories import T0
from tests.faults.conftest import Broker, read_topic

pytestmark = pytest.mark.integration

FEED = partition_feed("shares")


def shares(devices: int, rounds: int, first: int = 0) -> list[ShareCountsObserved]:
    """Each device's counts every 10 s of event time, rounds ``first``.. ``first + rounds``."""
    return [ShareCountsObserved(
        site="site-1", device_id=f"asic-{d:02d}", ts=T0 + timedelta(seconds=10 * r),
        source="test", worker=f"acct.asic-{d:02d}", pool="stratum+tcp://pool:3333",
        accepted=10 + (r + d) % 7, rejected=(r + d) % 5 == 0, stale=r % 2,
        difficulty_accepted=65536.0, interval_s=10)
        for r in range(first, first + rounds) for d in range(devices)]


async def ratios(bootstrap: str) -> dict[str, list[ShareRatioComputed]]:
    """Every worker- and device-scope ratio on metrics.shares, by id (each copy)."""
    out: dict[str, list[ShareRatioComputed]] = defaultdict(list)
    for _, _, m in await read_topic(bootstrap, "metrics.shares"):
        if isinstance(m, ShareRatioComputed) and m.scope in ("worker", "device"):
            out[str(m.event_id)].append(m)
    return out


async def end_total(bootstrap: str, topic: str) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
        return sum((await c.end_offsets(tps)).values())
    finally:
        await c.stop()


async def test_a_killed_worker_folds_every_share_once(
        fault_settings: Settings, broker_proc: Broker, spawn) -> None:  # type: ignore[no-untyped-def]
    s = fault_settings
    bootstrap = s.kafka_bootstrap
    await ensure_topics(bootstrap)
    first, second = shares(24, 18), shares(24, 18, first=18)
    _, expected = fold(first + second, scopes=("worker", "device"),
                       windows=tuple(s.share_windows_s), grace_s=s.share_grace_s,
                       update_s=s.share_update_s)
    want = {str(m.event_id): m for m in expected}
    assert len(want) == len(expected)

    async with Publisher(bootstrap) as pub:
        await pub.publish_many(first)
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await raw.start()
    try:
        bad = await raw.send_and_wait("shares", b'{"kind": "ShareCountsObserved", "acc',
                                      key=b"asic-05", partition=1)
    finally:
        await raw.stop()

    worker = spawn("worker", "worker")
    async def some_out() -> bool:
        return len(await ratios(bootstrap)) > 0
    await until(some_out, 120, 0.5, what="the worker's first ratios")
    worker.kill()
    async with Publisher(bootstrap) as pub:
        await pub.publish_many(second)
    worker.start()

    async def all_out() -> bool:
        return len(await ratios(bootstrap)) >= len(want)
    try:
        await until(all_out, 120, 0.5, what="every ratio after the restart")
    except AssertionError:
        got = await ratios(bootstrap)
        lost = sorted((m.subject, m.scope, m.window_s, m.window_start, m.final, m.accepted)
                      for k, m in want.items() if k not in got)
        extra = sorted((ms[0].subject, ms[0].scope, ms[0].window_s, ms[0].window_start,
                        ms[0].final, ms[0].accepted) for k, ms in got.items() if k not in want)
        raise AssertionError(f"{len(lost)} ratios lost, e.g. {lost[:6]}; {len(extra)} not "
                             f"of the fold, e.g. {extra[:6]}\n{worker.tail(3000)}") from None

    # a forwarder killed after sending, before committing, sends its frames again: the
    # worst case, every frame of the feed twice
    c = AIOKafkaConsumer(FEED, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    again = []
    try:
        while batch := await c.getmany(timeout_ms=1000):
            again += [(tp.partition, r.value, r.headers) for tp, rs in batch.items() for r in rs]
    finally:
        await c.stop()
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await raw.start()
    try:
        for partition, value, headers in again:
            await raw.send(FEED, value, partition=partition, headers=list(headers))
        await raw.flush()
    finally:
        await raw.stop()
    end = await end_total(bootstrap, FEED)

    async def folded_all() -> bool:
        return await committed_total(bootstrap, s.app_id, FEED) >= end
    await until(folded_all, 120, 0.5, what="the worker folding the frames sent again")

    got = await ratios(bootstrap)
    assert set(got) == set(want), ("every ratio of the step functions, and no other", sorted(
        (ms[0].subject, ms[0].scope, ms[0].window_s, ms[0].window_start, ms[0].final)
        for k, ms in got.items() if k not in want)[:6], len(set(want) - set(got)))
    for eid, copies in got.items():
        assert all(m == want[eid] for m in copies), f"{eid} folded twice: {copies}"
    letters = {str(m.event_id): m for _, _, m in await read_topic(bootstrap, "dlq")
               if isinstance(m, RecordDeadLettered) and m.source_topic == "shares"}
    assert [(x.partition, x.offset) for x in letters.values()] == [(1, bad.offset)]
    assert worker.alive and worker.stop() == 0, worker.tail()


async def test_share_ratios_go_on_after_the_broker_restarts_empty(
        fault_settings: Settings, broker_proc: Broker, spawn) -> None:  # type: ignore[no-untyped-def]
    """The embedded broker comes back empty: offsets start again at 0, below the positions
    the worker's states have folded.  The share counts after it are new, not redeliveries:
    the worker folds them (their ratios appear), and only once."""
    s = fault_settings
    bootstrap = s.kafka_bootstrap
    await ensure_topics(bootstrap)
    before, after = shares(8, 30), shares(8, 12, first=30)
    worker = spawn("worker", "worker")
    async with Publisher(bootstrap) as pub:
        await pub.publish_many(before)

    async def folded(n: int) -> bool:
        return await committed_total(bootstrap, s.app_id, FEED) > 0 and \
            await committed_total(bootstrap, f"{s.app_id}-partition-feed", "shares") >= n
    await until(lambda: folded(len(before)), 120, 0.5, what="the first counts forwarded")
    await until(lambda: ratios(bootstrap), 60, 0.5, what="the first ratios")

    broker_proc.kill_tansu()  # its supervisor starts it again, empty, on the same port
    await until(lambda: "tansu broker restarted" in broker_proc.tail(), 30,
                what="the broker restarted by its supervisor")
    async with Publisher(bootstrap) as pub:
        await pub.publish_many(after)
    _, expected = fold(before + after, scopes=("worker", "device"),
                       windows=tuple(s.share_windows_s), grace_s=s.share_grace_s,
                       update_s=s.share_update_s)
    # the ratios the counts after the restart decide (their windows' revisions, finals)
    want = {str(m.event_id): m for m in expected if m.ts >= after[0].ts}

    async def all_new() -> bool:
        return set(want) <= set(await ratios(bootstrap))
    await until(all_new, 120, 0.5, what="the ratios of the counts after the restart")
    got = await ratios(bootstrap)
    for eid in want:
        assert all(m == want[eid] for m in got[eid]), f"{eid}: {got[eid]} != {want[eid]}"
    assert worker.alive, worker.tail()
