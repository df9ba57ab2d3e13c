"""The history sink starts while ClickHouse fails, at every step: opening the store, the
lookup of what is already stored, the repair of typed rows, the insert.  It waits with
capped backoff, commits nothing, and catches up by itself when the store is back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from schemas.settings import Settings
from streams.broker import free_port
from streams.history import HistoryStore
from streams.publish import Publisher
from streams.sink import HistorySink
from streams.topics import committed_total
from tests.conftest import until
from tests.faults.conftest import Broker, Proc
from tests.integration.test_history_sink import counts, make_events

pytestmark = pytest.mark.integration


async def test_sink_started_while_the_store_fails_waits_then_repairs_and_stores_once(
        fault_settings: Settings, broker_proc: Broker) -> None:
    s = fault_settings.model_copy(update={"sink_retry_max_s": 0.5})
    store = HistoryStore(s.history_dsn).open()
    store.migrate()
    try:
        events = make_events(2000)
        async with Publisher(s.kafka_bootstrap) as pub:
            await pub.publish_many(events)
        stop = asyncio.Event()
        first = HistorySink(s, store)
        task = asyncio.create_task(first.run(stop))
        await until(lambda: first.stats.inserted >= 2000, 60, what="first sink stored all")
        stop.set()
        await task
        # A crash between the log and its views left typed rows missing, and the offsets
        # were never committed (a new group stands for that); then the store fails.
        store.client.command("ALTER TABLE hashplane.shares DELETE WHERE device_id IN "
                             "('w1', 'w2')", settings={"mutations_sync": 2})
        assert counts(store) == (2000, 2000, 1920)
        store.client.command("DETACH TABLE hashplane.events")
        later = s.model_copy(update={"sink_group": "restarted-sink"})
        stop = asyncio.Event()
        second = HistorySink(later, store)
        task = asyncio.create_task(second.run(stop))
        await until(lambda: second.stats.insert_failures >= 4, 60, what="lookups failing")
        await asyncio.sleep(1.0)
        assert not task.done()
        assert await committed_total(s.kafka_bootstrap, later.sink_group, "shares") == 0
        async with Publisher(s.kafka_bootstrap) as pub:
            await pub.publish_many(make_events(2500)[2000:])  # more arrive meanwhile
        store.client.command("ATTACH TABLE hashplane.events")
        await until(lambda: _committed(later, 2500), 60, 0.5, what="caught up after the store")
        stop.set()
        await task
        print(f"store failed at the sink's start: {second.stats.insert_failures} failed "
              f"calls, then {second.stats.duplicates_skipped} records found stored and "
              f"skipped, {second.stats.inserted} new stored, typed rows repaired")
        assert counts(store) == (2500, 2500, 2500)
        assert second.stats.duplicates_skipped == 2000 and second.stats.inserted == 500
    finally:
        store.close()


async def _committed(s: Settings, n: int) -> bool:
    return await committed_total(s.kafka_bootstrap, s.sink_group, "shares") >= n


async def test_sink_process_waits_for_an_unreachable_store_and_stops_cleanly(
        fault_settings: Settings, broker_proc: Broker, spawn: Callable[..., Proc]) -> None:
    down = fault_settings.model_copy(update={
        "clickhouse_dsn": f"http://default:@127.0.0.1:{free_port()}"})
    sink = spawn("sink", "sink", settings=down)
    await until(lambda: sink.tail().count("unavailable") >= 3, 60, 0.5,
                what="the sink retrying the store")
    assert sink.alive, sink.tail()
    assert sink.stop() == 0, sink.tail()
