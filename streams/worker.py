"""The Faust worker: every agent spec (agents/registry.py) run by one generic runner.

The runner holds no agent logic: it decodes at the edge (undecodable records go to dlq),
keeps each agent's state, calls its ``step``, writes the changed durable keys to its table
and publishes the outputs on their registry topics.

* **Partition-scoped** agents fold per-device state on their input topic's own partitions
  and scale out with them (share ratios, endpoint scores).  A fed topic's records
  (``streams.topics.FED``: share counts) come through its partition feed, many to a record
  (``streams.feed.PartitionFeed``, a task of the worker), each folded at its own position.
* **Site-scoped** agents fold a whole site, which needs every partition of several topics
  in one place.  The site feed's forwarder (``streams.feed``, a task of the worker that
  reads with aiokafka's batch fetch, not a Faust agent) forwards the records of the
  partitioned topics they read, validated, to the single-partition internal topic
  ``hashplane.site-feed``, many to a record (``streams.app.pack``: each with its source
  topic, gathered for a few ms).  Each
  site agent reads the feed in one lane and the single-partition topics of its input union
  (grid, feeds, uplink, headroom, operator commands) in another, both folding into one state:
  control-path records (meter -> energy -> scheduler) never take the forwarding hop and
  never wait behind the feed's telemetry.

Which topics an agent reads follows from its input union through the registry; nothing
here names an agent.  Site agents keep their working state in memory (rebuilt from live
data within a poll period after a restart) and what must survive a restart in a Faust
table (changelog-backed), loaded on a site's first event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import faust

from agents import spec as spec_lanes
from agents.registry import AGENTS, site_agents
from agents.spec import AgentSpec, table_key
from schemas.envelope import Event
from schemas.registry import TOPICS, topic, topic_of
from schemas.settings import Settings
from streams.app import create_app, decode_one, decoded, header, publish_letter, raw_topic
from streams.codec import DecodeError, decode_plausible, encode, encode_key, record_letter
from streams.feed import FRAMES_HEADER, Forwarder, PartitionFeed, SiteFeed, unframe
from streams.topics import FED, SITE_FEED, partition_feed

log = logging.getLogger(__name__)

#: An event whose fold (step, table, publish) takes longer is logged with the breakdown.
SLOW_S = 0.1

Publish = Callable[[Event], Awaitable[None]]
Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """Processing time, for the guards of the live agents (``AgentSpec.live``)."""
    return datetime.now(UTC)


def topic_publisher(app: faust.App) -> Publish:
    """Publish an event on its registry topic through the app's producer (straight to its
    batching, without Faust's per-message channel machinery: a scheduler's 1,000 commands
    of a grid dip go out in milliseconds, not seconds)."""

    async def publish(event: Event) -> None:
        spec = topic_of(type(event))
        await app.producer.send(spec.name, encode_key(event, spec), encode(event), None, None,
                                None)

    return publish


async def publish_all(publish: Publish, events: Iterable[Event]) -> None:
    """Send a step's outputs in order."""
    for e in events:
        await publish(e)


#: From this many records at once, they go to the producer as record batches.
BATCH_FROM = 16

#: (topic, partition or None for the producer's partitioner on the key, key, value)
Record = tuple[str, int | None, bytes | None, bytes]


async def send_records(app: faust.App, records: Sequence[Record], acked: bool = False) -> None:
    """Hand records to the app's producer in order, each to the partition ``send`` would
    choose (the one given, or the producer's own partitioner on the key); ``acked``: and
    wait until the broker has acknowledged every one.

    Many at once (a fleet's commands, their pending entries) go as the producer's record
    batches, one per partition, a few microseconds a record: through Faust's and aiokafka's
    ``send`` each took 50-230 us here, and a grid dip's 1,000 sleep commands 52-226 ms.
    Order within a partition is kept: the accumulator queues a batch behind what that
    partition already holds."""
    delivered: list[Any] = []
    if len(records) < BATCH_FROM:
        for topic, partition, key, value in records:
            delivered.append(await app.producer.send(topic, key, value, partition, None, None))
        if acked:
            await asyncio.gather(*delivered)
        return
    producer = app.producer._ensure_producer()  # type: ignore[attr-defined]  # aiokafka's
    known: set[str] = set()
    batches: dict[tuple[str, int], list[Any]] = {}
    for topic, partition, key, value in records:
        if partition is None:
            if topic not in known:
                await producer.client._wait_on_metadata(topic)
                known.add(topic)
            partition = producer._partition(topic, None, None, None, key, value)
        queue = batches.setdefault((topic, partition), [])
        if not queue or queue[-1].append(key=key, value=value, timestamp=None) is None:
            queue.append(producer.create_batch())  # full (or none yet): a new one
            queue[-1].append(key=key, value=value, timestamp=None)  # empty: takes any record

    async def send(topic: str, partition: int, queue: list[Any]) -> None:
        for batch in queue:  # a partition's batches in order, each queued behind the last
            delivered.append(await producer.send_batch(batch, topic, partition=partition))

    # the partitions side by side: each waits only for its own queue
    await asyncio.gather(*(send(t, p, q) for (t, p), q in batches.items()))
    if acked:
        await asyncio.gather(*delivered)


async def send_events(app: faust.App, events: Sequence[Event], acked: bool = False) -> None:
    """Publish events on their registry topics, in order (``send_records``)."""
    records: list[Record] = []
    for e in events:
        spec = topic_of(type(e))
        records.append((spec.name, None, encode_key(e, spec), encode(e)))
    await send_records(app, records, acked)


async def drain_changelog(app: faust.App) -> None:
    """Hand the table writes Faust buffered to the producer's batching now, in the order
    they were written (writes queued in the same loop turn: the buffer's own sender has not
    taken any of them).

    Faust's buffer sends them one message per event loop turn, and while it holds more than
    100 its conductor delivers no record to any agent, waiting for each message with a timer
    of its own: a scheduler folding a fleet's 1,000 acks held the next grid dip's headroom
    behind them for 1.7 s.  The agents' folds no longer write through it (``write_table``);
    what else Faust buffers is handed over here before a flush."""
    buffer = app.producer.buffer
    pending = buffer.pending
    while not pending.empty():
        await buffer._send_pending(pending.get_nowait())  # type: ignore[attr-defined]


async def flush_changelog(app: faust.App) -> None:
    """Wait until the broker has every table write handed to the producer
    (``write_table``; ``drain_changelog`` first for anything Faust still buffered)."""
    await drain_changelog(app)
    await app.producer.flush()


async def write_table(app: faust.App, table: Any, entries: Iterable[tuple[str, Any]],
                      partition: int = 0) -> None:
    """Set table entries and hand each changelog record straight to the producer's
    batching, in order, as Faust itself writes it (the table's serializers; the partition
    of the record being folded, which is 0 for a site agent's one-partition table): what a
    restart recovers is the same.

    Faust's own write goes through its message buffer, a future per entry, and must then
    be drained (``drain_changelog``): about 60-140 us an entry here, so the scheduler's
    1,000 pending commands of a grid dip spent 56-144 ms there before the commands could
    go out.  Straight to the producer, in order, a newer write of a key can no longer be
    overtaken by an older one still in Faust's buffer."""
    topic = table.changelog_topic
    name = topic.get_topic_name()
    records: list[Record] = []
    for key, value in entries:
        table.data[key] = value
        k, _ = topic.prepare_key(key, table.key_serializer)
        v, _ = topic.prepare_value(value, table.value_serializer)
        records.append((name, partition, k, v))
    await send_records(app, records)


def input_topics(spec: AgentSpec[Any, Any]) -> list[str]:
    """The contract topics an agent's input union lives on (registry order)."""
    wanted = {topic_of(cls).name for cls in spec.inputs}
    return [t.name for t in TOPICS if t.name in wanted]


def direct_topics(spec: AgentSpec[Any, Any]) -> list[str]:
    """What a site agent reads itself: its single-partition input topics."""
    return [t for t in input_topics(spec) if topic(t).partitions == 1]


def forwarded_topics(specs: Iterable[AgentSpec[Any, Any]]) -> list[str]:
    """What the site feed forwards: the site agents' partitioned input topics."""
    wanted = {t for s in specs for t in input_topics(s) if topic(t).partitions > 1}
    return [t.name for t in TOPICS if t.name in wanted]


#: What a worker process runs: every agent (``all``) or one lane's (``AgentSpec.lane``).
Lane = Literal["all"] | spec_lanes.Lane


def enabled(settings: Settings, lane: Lane = "all") -> list[AgentSpec[Any, Any]]:
    """The agents this configuration runs (in ``lane``)."""
    return [a for a in AGENTS if a.enabled(settings) and a.runs_in(lane)]


def lane_app_id(settings: Settings, lane: Lane) -> str:
    """A lane's Faust app id, which is its consumer group: the site's for the main lane and
    for a worker running every agent, ``<app_id>-control`` for the control lane.  The tables'
    changelogs keep the site's names whatever the lane (``streams.app.site_table``)."""
    return f"{settings.app_id}-control" if lane == "control" else settings.app_id


def forwards(lane: Lane) -> bool:
    """Whether a lane's worker runs the site feed's forwarder (the control path's does: what
    the scheduler folds never waits behind the main lane)."""
    return lane != "main"


def _forever(app: faust.App, forwarder: Forwarder) -> None:
    """Run a forwarder as a task of the worker, started again after a failure."""

    @app.task  # type: ignore[untyped-decorator]
    async def forward() -> None:
        while True:
            try:
                await forwarder.run()
                return
            except Exception:  # a failure not foreseen must not end the forwarding
                log.exception("%s: the forwarder failed; starting it again in 1 s",
                              forwarder.label)
                await asyncio.sleep(1.0)


def register_partition_feed(app: faust.App, settings: Settings,
                            topics: list[str]) -> PartitionFeed:
    """Forward the fed topics the worker's partition agents read to their partition feeds
    (``streams.feed.PartitionFeed``), as a task of the worker, through its producer."""

    async def send(topic: str, partition: int, value: bytes,
                   headers: list[tuple[str, bytes]]) -> Any:
        return await app.producer.send(topic, None, value, partition, None, headers)

    feed = PartitionFeed(settings, app.conf.id, topics, send)
    _forever(app, feed)
    return feed


def register_site_feed(app: faust.App, settings: Settings,
                       read_by_agents: Iterable[str] = ()) -> SiteFeed:
    """Forward what the site agents fold of the partitioned topics to the site feed, in
    batches (validated; undecodable records go to dlq here, once): ``streams.feed``, run as
    a task of the worker, sending through the worker's producer.  ``read_by_agents``: the
    topics the worker's own Faust agents read (``SiteFeed.carry_over``)."""
    readers = [s for s in site_agents() if s.enabled(settings)]

    async def send(topic: str, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]]) -> Any:
        return await app.producer.send(topic, key, value, None, None, headers or None)

    feed = SiteFeed(settings, app.conf.id, forwarded_topics(readers), readers, send, SITE_FEED,
                    read_by_agents=read_by_agents)
    _forever(app, feed)
    return feed


def register(app: faust.App, settings: Settings, spec: AgentSpec[Any, Any],
             publish: Publish | None = None, clock: Clock = wall_clock,
             ) -> faust.types.AgentT[Any]:
    """Run one agent spec as a Faust agent.  ``publish`` defaults to the registry topic of
    each event (agent tests pass a recorder instead of a broker)."""
    if spec.scope == "partition":
        return _partition_agent(app, settings, spec, publish)
    flush = partial(flush_changelog, app) if publish is None and spec.commit_first else None
    direct = publish is None  # a real broker: table writes straight to the producer
    out_to = publish or topic_publisher(app)
    p = spec.params(settings)
    durable = spec.durable
    table = app.Table(durable.table, default=lambda: None, partitions=1) \
        if durable is not None else None
    states: dict[str, Any] = {}
    def state_of(site: str) -> Any:
        s = states.get(site)
        if s is None:
            s = states[site] = spec.state()
            if table is not None and durable is not None:
                for k, v in list(table.items()):
                    if v is None or not isinstance(k, str):
                        continue
                    if k == site:
                        durable.load(s, "", v)
                    elif k.startswith(f"{site}/"):
                        durable.load(s, k[len(site) + 1:], v)
        return s

    async def fold(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, out_to, settings.site, spec.source):
            if not spec.wants(event):
                continue
            t0 = time.perf_counter()
            first = event.site not in states
            s = state_of(event.site)
            if spec.offload is not None and spec.offload(s, event, p):
                s, out = await asyncio.to_thread(spec.step, s, event, p)
            else:
                s, out = spec.step(s, event, p)
            states[event.site] = s
            t1 = time.perf_counter()
            if table is not None and durable is not None and s.dirty:
                entries = [(table_key(event.site, k), durable.save(s, k)) for k in s.dirty]
                s.dirty.clear()
                if direct:
                    await write_table(app, table, entries)
                else:  # agent tests: Faust's own table, no broker
                    for key, value in entries:
                        table[key] = value
            out = list(out)
            if spec.live is not None and (out or first):
                out = spec.live(s, event, out, clock(), p)
            t2 = time.perf_counter()
            if out and flush is not None:
                await flush()  # the state is durable before what it decided goes out
            t3 = time.perf_counter()
            if out:
                await (publish_all(publish, out) if publish is not None else
                       send_events(app, out))
            if (t4 := time.perf_counter()) - t0 > SLOW_S:
                log.warning("%s: %s took %.0f ms (step %.0f, table %.0f, flush %.0f, publish "
                            "%d: %.0f)", spec.name, event.kind, 1000 * (t4 - t0),
                            1000 * (t1 - t0), 1000 * (t2 - t1), 1000 * (t3 - t2), len(out),
                            1000 * (t4 - t3))

    # Two lanes into one state: the single-partition topics (the control path: meter,
    # feeds, headroom, operator commands) are never queued behind the site feed's telemetry.
    lanes = [(spec.name, direct_topics(spec)),
             (f"{spec.name}-feed", [SITE_FEED] if forwarded_topics([spec]) else [])]
    lanes = [(name, topics) for name, topics in lanes if topics]
    agents = [app.agent(app.topic(*topics, key_serializer="raw", value_serializer="raw"),
                        name=name)(fold) for name, topics in lanes]
    return agents[0]


#: Records each agent has folded in this process (a frame of a partition feed counts its
#: records) and outputs it has published: what the benchmarks read.
FOLDED: Counter[str] = Counter()
PUBLISHED: Counter[str] = Counter()


def partition_input(spec: AgentSpec[Any, Any]) -> str:
    """The topic a partition-scoped agent reads: its input topic, or that topic's partition
    feed if it is fed (``streams.topics.FED``)."""
    (name,) = input_topics(spec)
    return partition_feed(name) if name in FED else name


Positioned = list[tuple[tuple[int, int], Event]]

#: Frames of a partition feed Faust fetches ahead of its agent (a frame holds up to
#: ``streams.feed.FEED_BATCH`` records): Faust's default, 4,096 records, would let a long
#: backlog of share counts fill the worker with over a GB of frames waiting to be folded.
FRAMES_AHEAD = 32


async def _framed(ev: faust.types.EventT[Any], name: str, source_partition: bytes,
                  publish: Publish, site: str, source: str) -> Positioned:
    """A partition-feed record's events, each with its position in ``name`` (the source
    partition, its offset); a record that does not decode goes to dlq under that position
    (the id the sink gives its letter of the same record), a feed record that is not a
    frame under its own."""
    msg = ev.message
    now = datetime.now(UTC)
    try:
        partition = int(source_partition)
        records = unframe(ev.value)
    except ValueError as exc:  # FrameError, or a header that is not a partition
        await publish_letter(publish, record_letter(
            topic=msg.topic, partition=msg.partition, offset=msg.offset, timestamp_ms=None,
            raw=ev.value, key=ev.key, reason=f"not a partition-feed frame: {exc}",
            site=site, source=source, ts=now))
        return []
    out: Positioned = []
    for r in records:
        try:
            out.append(((partition, r.offset), decode_plausible(name, r.value, now)[0]))
        except DecodeError as exc:
            await publish_letter(publish, record_letter(
                topic=name, partition=partition, offset=r.offset, timestamp_ms=r.timestamp,
                raw=r.value, key=r.key, reason=exc.reason, site=site, source=source, ts=now))
    return out


def _partition_agent(app: faust.App, settings: Settings, spec: AgentSpec[Any, Any],
                     publish: Publish | None) -> faust.types.AgentT[Any]:
    """A partition-scoped spec: one state per record key, on the input topic's partitions.

    A fed topic is read through its partition feed (``streams.feed.PartitionFeed``): a
    frame of one source partition's records is folded record by record, each at its own
    position, and then the frame's table entries (each key's last state) and outputs go to
    the producer together (``send_records``).  A record without the frame header is folded
    as a record of the input topic itself (an unfed topic; the agent tests' ``put``)."""
    out_to = publish or topic_publisher(app)
    direct = publish is None  # a real broker: table writes straight to the producer
    p = spec.params(settings)
    (name,) = input_topics(spec)
    table = app.Table(spec.partition_table, default=lambda: None,
                      partitions=topic(name).partitions) \
        if spec.partition_table else None

    load, save = spec.load, spec.save
    # key -> (the table value last saved, the live state it was saved from): a key's state is
    # loaded from the table again only when the table holds another value (a restore from
    # the changelog, a partition back from another worker)
    live: dict[str, tuple[Any, Any]] = {}

    def state_of(key: str) -> Any:
        raw = table[key] if table is not None else None
        kept = live.get(key)
        if kept is not None and kept[0] is raw:
            return kept[1]
        s = load(raw) if load is not None else raw
        return s if s is not None else spec.state()

    async def fold(events: Positioned, partition: int) -> None:
        """Fold events of one partition, publish what they decided, then write each changed
        key once (its changelog partition: the record's).

        The outputs reach the broker before the state that says they were decided: a
        worker killed in between folds the records again from the state before them (Faust
        commits a record's offset only after the producer has flushed) and publishes the
        same outputs under the same ids again, where the other order would skip the
        records as folded and their outputs would be lost."""
        changed: dict[str, Any] = {}
        outputs: list[Event] = []
        for position, event in events:
            if not spec.wants(event):
                continue
            key = event.device_id
            before = changed[key] if key in changed else state_of(key)
            after, out = spec.step(before, event, p, position)
            if after is not before:
                changed[key] = after
            outputs += out
        FOLDED[spec.name] += len(events)
        if outputs:
            PUBLISHED[spec.name] += len(outputs)
            await (publish_all(publish, outputs) if publish is not None else
                   send_events(app, outputs, acked=bool(changed) and table is not None))
        if table is not None and changed:
            entries = []
            for key, after in changed.items():
                raw = save(after) if save is not None else after
                entries.append((key, raw))
                if save is not None:
                    live[key] = (raw, after)
            if direct:
                await write_table(app, table, entries, partition)
            else:  # agent tests: Faust's own table, no broker
                for key, raw in entries:
                    table[key] = raw

    @app.agent(raw_topic(app, partition_input(spec), FRAMES_AHEAD if name in FED else None),
               name=spec.name)
    async def agent(stream: faust.StreamT[Any]) -> None:
        async for ev in stream.events():
            msg = ev.message
            if (source_partition := header(ev, FRAMES_HEADER)) is not None:
                events = await _framed(ev, name, source_partition, out_to, settings.site,
                                       spec.source)
            else:
                event = await decode_one(ev, name, ev.value, out_to, settings.site,
                                         spec.source)
                events = [] if event is None else [((msg.partition, msg.offset), event)]
            await fold(events, msg.partition)

    return agent


def describe_assignment(assigned: Iterable[Any]) -> str:
    """``topic[0,1] topic[2]`` of the input partitions a worker holds (changelogs left out:
    they follow their agents' partitions)."""
    by_topic: dict[str, list[int]] = {}
    for tp in assigned:
        if not tp.topic.endswith("-changelog") and "__assignor" not in tp.topic:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
    return " ".join(f"{t}[{','.join(map(str, sorted(p)))}]"
                    for t, p in sorted(by_topic.items())) or "(none)"


def build_app(settings: Settings, watchdog_s: float = 2.0, lane: Lane = "all",
              cluster_id: str | None = None) -> faust.App:
    """The worker app with the enabled agents of ``lane`` registered (the site feed with the
    control lane: the telemetry and acks the scheduler folds never wait behind the main
    lane's work), and the changelog watchdog (the broker may lose the tables' changelogs under
    a running worker: streams/restore.py; ``cluster_id``: the broker's when the changelogs
    were prepared).

    The lanes split the agents between two worker processes: the control path (meter ->
    energy -> scheduler) gets an event loop and a producer of its own.  In one process,
    every fold waits while another agent's fold runs, and Faust's conductor delivers no
    record to any agent while the producer's buffer holds more than 100 table writes: a
    fleet's poll of share counts held the meter's readings behind it."""
    from streams.restore import ChangelogWatchdog

    app = create_app(settings, app_id=lane_app_id(settings, lane))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def log_assignment(_sender: Any, assigned: Iterable[Any], **_: Any) -> None:
        # An operator (and the scale-out test) sees which worker holds what.
        log.info("partitions assigned: %s", describe_assignment(assigned))

    specs = enabled(settings, lane)
    if forwards(lane):  # forwards for every lane's site agents
        register_site_feed(app, settings, {
            t for spec in specs
            for t in ([partition_input(spec)] if spec.scope == "partition"
                      else direct_topics(spec))})
    if fed := [t for spec in specs if spec.scope == "partition"
               for t in input_topics(spec) if t in FED]:
        register_partition_feed(app, settings, sorted(set(fed)))
    for spec in specs:
        register(app, settings, spec)
    if watchdog_s > 0:
        watchdog = ChangelogWatchdog(app, settings, cluster_id=cluster_id)

        @app.timer(watchdog_s, on_leader=False)  # type: ignore[untyped-decorator]
        async def changelog_watchdog() -> None:
            try:
                await watchdog.check()
            except Exception:  # a look that fails in a way not foreseen must not stop the
                log.exception("changelog watchdog: look failed")  # worker; next tick looks again
    return app
