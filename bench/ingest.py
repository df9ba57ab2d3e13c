"""Ingest benchmark: produced -> Kafka (Tansu) -> history sink -> ClickHouse, against the raw
aiokafka consume rate of the same topic, in one run.  Prints measured numbers; not a test.

    .venv/bin/python bench/ingest.py [--events 200000]

The sink runs as its own process (``hashplane sink``), as in production; completion is the
moment its committed offsets cover every event (it commits only after the insert), and the
count is then verified in ClickHouse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.events import ShareCountsObserved
from schemas.settings import Settings
from streams.broker import EmbeddedBroker
from streams.codec import encode
from streams.history import HistoryStore
from streams.runtime import settings_env
from streams.topics import committed_total, ensure_topics

TOPIC = "shares"


def records(n: int) -> list[tuple[bytes, bytes]]:
    t0 = datetime(2026, 11, 21, tzinfo=UTC)
    out = []
    for i in range(n):
        w = f"rig{i % 64:02d}-gpu{i % 8}"
        e = ShareCountsObserved(site="site-1", device_id=w, ts=t0 + timedelta(milliseconds=i),
                                source="bench", worker=w, accepted=i % 9, rejected=i % 2,
                                stale=0, difficulty_accepted=65536.0 * (i % 9), interval_s=5)
        out.append((w.encode(), encode(e)))
    return out


async def produce(bootstrap: str, recs: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=1024 * 1024)
    await producer.start()
    t = time.perf_counter()
    try:
        futs = [await producer.send(TOPIC, v, key=k) for k, v in recs]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return time.perf_counter() - t


async def raw_consume(bootstrap: str, n: int, topics: tuple[str, ...] = (TOPIC,)) -> float:
    """Seconds for a bare aiokafka consumer to fetch ``n`` records of ``topics``."""
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", fetch_max_bytes=32 * 1024 * 1024,
                         max_partition_fetch_bytes=4 * 1024 * 1024)
    await c.start()
    got = 0
    t = time.perf_counter()
    try:
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=20_000)
            got += sum(len(v) for v in batch.values())
    finally:
        await c.stop()
    return time.perf_counter() - t


async def main(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="hashplane-bench-"))
    broker = EmbeddedBroker(log_file=work / "broker.log")
    await broker.start()
    await ensure_topics(broker.bootstrap)
    settings = Settings(data_dir=work, kafka_bootstrap=broker.bootstrap)
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    print(f"hashplane ingest benchmark: {n:,} ShareCountsObserved events "
          f"(~{len(records(1)[0][1])} B each), {os.cpu_count()} cores, {platform.python_version()}")
    recs = records(n)
    sink = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(work / "sink.log", "wb"))
    try:
        await asyncio.sleep(4)  # the sink joins its group and migrates before the clock starts
        t0 = time.perf_counter()
        produce_s = await produce(broker.bootstrap, recs)
        while await committed_total(broker.bootstrap, settings.sink_group, TOPIC) < n:
            await asyncio.sleep(0.05)
        e2e_s = time.perf_counter() - t0
    finally:
        sink.terminate()
        sink.wait(30)
    store = HistoryStore(settings.history_dsn).open()
    try:
        stored = store.query("SELECT count(), uniqExact(event_id) FROM hashplane.events "
                             "WHERE topic = 'shares'")[0]
        typed = store.query("SELECT count() FROM hashplane.shares")[0][0]
    finally:
        store.close()
    consume_s = await raw_consume(broker.bootstrap, n)
    await broker.stop()

    e2e, raw = n / e2e_s, n / consume_s
    print(f"  produce (aiokafka, acks=all)        {n / produce_s:>10,.0f} events/s")
    print(f"  end to end (Kafka->sink->ClickHouse) {e2e:>10,.0f} events/s  "
          f"({e2e_s:.2f} s; goal >= 20,000)")
    print(f"  raw aiokafka consume, same topic     {raw:>10,.0f} events/s  ({consume_s:.2f} s)")
    print(f"  ratio end-to-end / raw consume       {e2e / raw:>10.2f}")
    print(f"  verified in ClickHouse: {stored[0]:,} rows, {stored[1]:,} distinct event ids, "
          f"{typed:,} typed rows (expected {n:,})")
    if stored[0] != n or stored[1] != n or typed != n:
        raise SystemExit("count mismatch: the benchmark run is invalid")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    asyncio.run(main(ap.parse_args().events))
