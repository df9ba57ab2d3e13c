"""Ingest benchmark: produced -> Kafka (Tansu) -> history sink -> ClickHouse, against the raw
aiokafka consume rate of the same topic, in one run.  Prints measured numbers; not a test.

    .venv/bin/python bench/ingest.py [--events 600000] [--profile DIR]

The sink runs as its own process (``hashplane sink``), as in production; completion is the
moment its committed offsets cover every event (it commits only after the insert), and the
count is then verified in ClickHouse.  Two runs, each into an empty ClickHouse:

- **live**: the sink is running while the events are produced, each stamped when it is
  sent (a connector's reading), so the producer shares the cores and the sink takes its
  live path;
- **backlog**: the topic already holds the events (a sink back after an outage) and the
  sink drains it; timed from its first commit to its last, so its start-up is not counted.

``--profile DIR`` samples the sink of each run with py-spy (the bench extra) and prints
where its time went.
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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.profiling import summarize
from schemas.events import ShareCountsObserved
from schemas.settings import Settings
from streams.broker import EmbeddedBroker
from streams.codec import encode
from streams.history import HistoryStore
from streams.runtime import settings_env
from streams.topics import committed_total, ensure_topics

TOPIC = "shares"


def event(i: int, ts: datetime) -> tuple[bytes, bytes]:
    w = f"rig{i % 64:02d}-gpu{i % 8}"
    e = ShareCountsObserved(site="site-1", device_id=w, ts=ts, source="bench", worker=w,
                            accepted=i % 9, rejected=i % 2, stale=0,
                            difficulty_accepted=65536.0 * (i % 9), interval_s=5)
    return w.encode(), encode(e)


def stamped_now(n: int) -> Iterator[tuple[bytes, bytes]]:
    """Events stamped as they are sent (1 ms apart at most: ids and keys stay distinct)."""
    last = datetime(2000, 1, 1, tzinfo=UTC)
    for i in range(n):
        ts = max(datetime.now(UTC), last + timedelta(microseconds=1))
        last = ts
        yield event(i, ts)


async def produce(bootstrap: str, recs: Iterator[tuple[bytes, bytes]]) -> float:
    """Send the records, keyed to their partitions as the default partitioner would, in the
    producer's record batches (``create_batch``/``send_batch``): the load stands in for a
    site's many connectors, which run on their own cores; ``send`` per record cost the
    shared cores about 15 us a record more and capped the live figure (~32,000/s)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=1024 * 1024)
    await producer.start()
    partitions = sorted(await producer.partitions_for(TOPIC))
    partitioner = DefaultPartitioner()
    t = time.perf_counter()
    try:
        batches = {p: producer.create_batch() for p in partitions}
        futs = []
        for k, v in recs:
            p = partitioner(k, partitions, partitions)
            if batches[p].append(key=k, value=v, timestamp=None) is None:  # full: send it
                futs.append(await producer.send_batch(batches[p], TOPIC, partition=p))
                batches[p] = producer.create_batch()
                batches[p].append(key=k, value=v, timestamp=None)
        for p, b in batches.items():
            if b.record_count():
                futs.append(await producer.send_batch(b, TOPIC, partition=p))
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


class Sink:
    """``hashplane sink`` as a child process on its own ClickHouse directory."""

    def __init__(self, bootstrap: str, work: Path, profile: Path | None, tag: str):
        self.work = work
        self.settings = Settings(data_dir=work, kafka_bootstrap=bootstrap,
                                 sink_group=f"bench-sink-{tag}")
        env = {**os.environ, **settings_env(self.settings), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "sink"], env=env,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(work / "sink.log", "wb"))
        self.spy: subprocess.Popen[bytes] | None = None
        self.profile = profile / f"sink-{tag}.txt" if profile else None
        if self.profile:
            spy = Path(sys.executable).with_name("py-spy")
            if not spy.exists():
                raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
            self.profile.parent.mkdir(parents=True, exist_ok=True)
            self.spy = subprocess.Popen(
                [str(spy), "record", "--nonblocking", "--threads", "-r", "200", "-f", "raw",
                 "-p", str(self.proc.pid), "-o", str(self.profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def assigned(self, timeout_s: float = 120.0) -> None:
        """Wait until the sink has migrated its store and joined its group (its log says
        which partitions it was assigned), so that a live run times the sink, not its
        start."""
        log, end = self.work / "sink.log", time.monotonic() + timeout_s
        while b"sink assigned" not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"the sink did not join its group; see {log}")
            await asyncio.sleep(0.1)

    async def committed(self) -> int:
        return await committed_total(self.settings.kafka_bootstrap, self.settings.sink_group,
                                     TOPIC)

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(2)
            self.spy.wait(30)
        self.proc.terminate()
        self.proc.wait(30)

    def verify(self, n: int) -> str:
        store = HistoryStore(self.settings.history_dsn).open()
        try:
            stored = store.query("SELECT count(), uniqExact(event_id) FROM hashplane.events "
                                 "WHERE topic = 'shares'")[0]
            typed = store.query("SELECT count() FROM hashplane.shares")[0][0]
        finally:
            store.close()
        if stored[0] != n or stored[1] != n or typed != n:
            raise SystemExit(f"count mismatch ({stored}, typed {typed}, expected {n}): "
                             "the benchmark run is invalid")
        return f"{stored[0]:,} rows, {stored[1]:,} distinct ids, {typed:,} typed rows"


async def until_committed(sink: Sink, n: int) -> float:
    """Poll the sink's committed offsets; the moment they first cover anything, and return
    the seconds from then until they cover ``n``."""
    first: float | None = None
    base = 0
    while (done := await sink.committed()) < n:
        if first is None and done:
            first, base = time.perf_counter(), done
        await asyncio.sleep(0.05)
    if first is None:  # all in one commit: no interval to time
        raise SystemExit("the sink committed everything at once; run with more --events")
    return (n - base) / (time.perf_counter() - first)


async def main(n: int, profile: Path | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="hashplane-bench-"))
    broker = EmbeddedBroker(log_file=work / "broker.log")
    await broker.start()
    await ensure_topics(broker.bootstrap)
    size = len(event(0, datetime.now(UTC))[1])
    print(f"hashplane ingest benchmark: {n:,} ShareCountsObserved events (~{size} B each), "
          f"{os.cpu_count()} cores, python {platform.python_version()}")
    try:
        (work / "live").mkdir()
        live = Sink(broker.bootstrap, work / "live", profile, "live")
        try:
            await live.assigned()
            t0 = time.perf_counter()
            produce_s = await produce(broker.bootstrap, stamped_now(n))
            while await live.committed() < n:
                await asyncio.sleep(0.05)
            e2e_s = time.perf_counter() - t0
        finally:
            live.stop()
        live_ok = live.verify(n)
        consume_s = await raw_consume(broker.bootstrap, n)
        (work / "backlog").mkdir()
        backlog = Sink(broker.bootstrap, work / "backlog", profile, "backlog")
        try:
            drain = await until_committed(backlog, n)
        finally:
            backlog.stop()
        backlog_ok = backlog.verify(n)
    finally:
        await broker.stop()

    e2e, raw = n / e2e_s, n / consume_s
    print(f"  produce (aiokafka batches, acks=all, stamped)  {n / produce_s:>10,.0f} events/s")
    print(f"  live: produced -> sink -> ClickHouse            {e2e:>10,.0f} events/s  "
          f"({e2e_s:.2f} s, producer on the same cores)")
    print(f"  backlog: the sink drains the stored topic       {drain:>10,.0f} events/s  "
          f"(first commit to last)")
    print(f"  raw aiokafka consume, same topic                {raw:>10,.0f} events/s  "
          f"({consume_s:.2f} s)")
    print(f"  ratio live / raw consume                        {e2e / raw:>10.2f}")
    print(f"  ratio backlog / raw consume                     {drain / raw:>10.2f}")
    print(f"  goal >= 50,000 events/s: live {'met' if e2e >= 50_000 else 'NOT MET'}, "
          f"backlog {'met' if drain >= 50_000 else 'NOT MET'}")
    print(f"  verified in ClickHouse: live {live_ok}; backlog {backlog_ok}")
    if profile:
        for tag in ("live", "backlog"):
            summarize(profile / f"sink-{tag}.txt", 14,
                      ("chdb", "clickhouse_connect", "aiokafka/consumer", "pydantic"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="sample each run's sink with py-spy into DIR and summarize")
    args = ap.parse_args()
    asyncio.run(main(args.events, args.profile))
