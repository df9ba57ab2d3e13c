"""The history sink on a real Tansu broker and the real ClickHouse engine."""

from __future__ import annotations

import asyncio
import base64
import random
import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.events import ShareCountsObserved
from schemas.settings import Settings
from streams.history import HistoryStore
from streams.publish import Publisher
from streams.sink import HistorySink
from streams.topics import committed_total
from tests.conftest import HASHPLANE, child_env, until
from tests.factories import T0

pytestmark = pytest.mark.integration


def make_events(n: int, workers: int = 50) -> list[ShareCountsObserved]:
    return [ShareCountsObserved(
        site="site-1", device_id=f"w{i % workers}", ts=T0 + timedelta(milliseconds=i),
        source="test", worker=f"w{i % workers}", accepted=i % 7, rejected=i % 2, interval_s=1)
        for i in range(n)]


async def committed(bootstrap: str, group: str, topic: str = "shares") -> int:
    return await committed_total(bootstrap, group, topic)


def counts(store: HistoryStore) -> tuple[int, int, int]:
    """Physical rows, distinct event ids, typed rows of the shares topic."""
    rows = store.query("SELECT count(), uniqExact(event_id) FROM hashplane.events "
                       "WHERE topic = 'shares'")[0]
    typed = store.query("SELECT count() FROM hashplane.shares")[0][0]
    return int(rows[0]), int(rows[1]), int(typed)


async def run_sink(settings: Settings, store: HistoryStore, done) -> HistorySink:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    sink = HistorySink(settings, store)
    task = asyncio.create_task(sink.run(stop))
    try:
        await until(lambda: done(sink) or task.done(), 60, what="sink progress")
    finally:
        stop.set()
        await task
    return sink


async def test_events_reach_clickhouse_once_and_redelivery_is_not_stored_twice(
        settings: Settings, store: HistoryStore) -> None:
    events = make_events(5000)
    async with Publisher(settings.kafka_bootstrap) as pub:
        await pub.publish_many(events)
    sink = await run_sink(settings, store, lambda s: s.stats.inserted >= 5000)
    assert counts(store) == (5000, 5000, 5000)
    assert sink.stats.duplicates_skipped == 0

    # Same store, offsets lost (a crash after insert and before commit looks like this),
    # and a typed view that missed rows (a crash between the log and its views): the sink
    # re-reads everything, stores nothing twice and fills the typed table's gap.
    store.client.command("ALTER TABLE hashplane.shares DELETE WHERE device_id = 'w3'",
                         settings={"mutations_sync": 2})
    assert counts(store) == (5000, 5000, 4900)
    again = settings.model_copy(update={"sink_group": "after-crash"})
    sink2 = await run_sink(again, store, lambda s: s.stats.duplicates_skipped >= 5000)
    assert sink2.stats.inserted == 0
    assert counts(store) == (5000, 5000, 5000)
    row = store.query_dicts("SELECT * FROM hashplane.shares WHERE device_id = 'w7' "
                            "ORDER BY ts LIMIT 1")[0]
    first = next(e for e in events if e.device_id == "w7")
    assert (row["event_id"], row["accepted"], row["ts"]) == (first.event_id, first.accepted,
                                                             first.ts)
    # the log's own columns (the sink writes ids and times as integers) say the same
    logged = store.query_dicts("SELECT event_id, ts, device_id FROM hashplane.events "
                               "WHERE topic = 'shares' ORDER BY ts")
    assert [(r["event_id"], r["ts"], r["device_id"]) for r in logged] == [
        (e.event_id, e.ts, e.device_id) for e in sorted(events, key=lambda e: e.ts)]


async def test_sink_killed_mid_batch_and_restarted_stores_each_event_exactly_once(
        settings: Settings, tmp_path: Path) -> None:
    n = 60_000
    async with Publisher(settings.kafka_bootstrap) as pub:
        await pub.publish_many(make_events(n))
    s = settings.model_copy(update={"sink_batch_max": 3000, "sink_batch_window_s": 0.5,
                                    "worker_session_timeout_s": 1.0,
                                    "worker_rebalance_timeout_s": 1.0})
    env = child_env(s)
    rng = random.Random(1)
    kills = 0
    progress = 0
    while kills < 3:
        proc = subprocess.Popen([*HASHPLANE, "sink"], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"sink{kills}.log", "wb"))
        # Kill at a random moment once this run has committed beyond the last one.
        before = progress
        await until(lambda b=before: _done(s, b + 1), 60, 0.05, what="progress")
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        progress = await committed(s.kafka_bootstrap, s.sink_group)
        assert before < progress < n, "the sink was not killed mid-stream"
    log = tmp_path / "sink-final.log"
    proc = subprocess.Popen([*HASHPLANE, "sink"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))
    try:
        await until(lambda: "sink assigned" in log.read_text(), 60, what="final sink joined")
        await until(lambda: _done(s, n), 120, 0.5, what="all offsets committed")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    store = HistoryStore(s.history_dsn).open()
    try:
        assert counts(store) == (n, n, n)
    finally:
        store.close()


async def _done(s: Settings, n: int) -> bool:
    return await committed(s.kafka_bootstrap, s.sink_group) >= n


async def test_clickhouse_outage_pauses_without_commit_and_loses_nothing(
        settings: Settings, store: HistoryStore) -> None:
    async with Publisher(settings.kafka_bootstrap) as pub:
        await pub.publish_many(make_events(1000))
        stop = asyncio.Event()
        sink = HistorySink(settings.model_copy(update={"sink_retry_max_s": 0.5}), store)
        task = asyncio.create_task(sink.run(stop))
        await until(lambda: sink.stats.inserted >= 1000, what="first batch")
        before = await committed(settings.kafka_bootstrap, settings.sink_group)
        assert before == 1000
        # A real failure of the engine's table: inserts fail until it is attached again.
        store.client.command("DETACH TABLE hashplane.events")
        await pub.publish_many(make_events(2000)[1000:])
        await until(lambda: sink.stats.insert_failures >= 3, what="failed inserts")
        assert await committed(settings.kafka_bootstrap, settings.sink_group) == before
        assert "events" in sink.stats.last_error or "UNKNOWN_TABLE" in sink.stats.last_error
        store.client.command("ATTACH TABLE hashplane.events")
        await until(lambda: sink.stats.inserted >= 2000, what="recovery")
        await until(lambda: _done(settings, 2000), what="commit after recovery")
        stop.set()
        await task
    assert counts(store) == (2000, 2000, 2000)


async def test_undecodable_records_go_to_dlq_with_reason_and_the_sink_goes_on(
        settings: Settings, store: HistoryStore) -> None:
    good = make_events(10)
    async with Publisher(settings.kafka_bootstrap) as pub:
        await pub.send_raw("shares", b"\x00garbage", key=b"w1")
        await pub.send_raw("shares", b'{"kind": "ShareCountsObserved", "site": "s"}', key=b"w2")
        await pub.publish_many(good)
    sink = await run_sink(settings, store, lambda s: s.stats.inserted >= 12)
    assert sink.stats.dead_lettered == 2
    rows = store.query_dicts("SELECT source_topic, reason, raw, device_id FROM hashplane.dlq "
                             "ORDER BY offset")
    assert [r["source_topic"] for r in rows] == ["shares", "shares"]
    assert "not JSON" in rows[0]["reason"] and base64.b64decode(rows[0]["raw"]) == b"\x00garbage"
    assert "worker" in rows[1]["reason"] and rows[1]["device_id"] == "w2"
    assert counts(store) == (10, 10, 10)


def test_times_go_into_the_log_as_the_client_would_write_them(store: HistoryStore) -> None:
    """``epoch_ms`` truncates to the millisecond as clickhouse-connect does for a datetime:
    the same instants stored both ways read back equal."""
    from datetime import UTC, datetime

    from streams.history import epoch_ms

    micros = (0, 999, 1000, 123999, 999999)
    instants = [datetime(2026, 12, 3, 12, 0, 0, us, tzinfo=UTC) for us in micros]
    instants.append(datetime(2030, 1, 1, 23, 59, 59, 999500, tzinfo=UTC))
    for n, t in enumerate(instants):
        for form, value in (("datetime", t), ("epoch_ms", epoch_ms(t))):
            store.insert_events([(f"00000000-0000-0000-0000-{n:06d}{len(form):06d}", "shares",
                                  "ShareCountsObserved", 1, "site-1", form, value, value,
                                  "test", "{}", 0, n)])
    rows = store.query("SELECT device_id, kafka_offset, ts, ingested_at FROM hashplane.events "
                       "ORDER BY kafka_offset, device_id")
    by_form: dict[str, list[tuple[object, object]]] = {}
    for form, _, ts, ingested in rows:
        by_form.setdefault(form, []).append((ts, ingested))
    assert by_form["datetime"] == by_form["epoch_ms"]
    assert [ts for ts, _ in by_form["epoch_ms"]] == [
        t.replace(microsecond=t.microsecond // 1000 * 1000) for t in instants]


def test_a_payload_goes_into_the_log_as_its_bytes_or_its_text(store: HistoryStore) -> None:
    """The sink hands the client a payload's bytes as received; stored as bytes or as str,
    the log and the typed table read back the same text (non-ASCII included)."""
    import orjson

    from streams.codec import encode
    from tests.factories import sample

    ids = []
    for n, as_bytes in enumerate((False, True)):
        e = sample(ShareCountsObserved, worker="Zürich-ü-💡")
        raw = encode(e)
        ids.append(e.event_id)
        store.insert_events([(e.event_id, "shares", e.kind, e.schema_version, e.site,
                              e.device_id, e.ts, T0, e.source,
                              raw if as_bytes else raw.decode(), 0, n)])
    logged = dict(store.query("SELECT event_id, payload FROM hashplane.events"))
    typed = dict(store.query("SELECT event_id, worker FROM hashplane.shares"))
    assert [orjson.loads(logged[i])["worker"] for i in ids] == ["Zürich-ü-💡"] * 2
    assert [typed[i] for i in ids] == ["Zürich-ü-💡"] * 2
