"""Replay and rebuild from the event log in ClickHouse.

* ``replay``: re-publish the stored records of a time range in event-time order (ts, then
  topic, partition, offset), to the original topics or to prefixed copies, at the recorded
  pace times ``speed`` or as fast as the broker takes them.  Payloads go out byte for byte as
  they were stored.
* ``rebuild``: fold the same records through the agents' own step functions (agents/) and
  return the site state the Faust tables hold: ASIC cycles / last-off / last-on, home pools,
  firing alerts, the operator's load cap, the compute gate.  Same functions, same order of
  decisions, so the rebuilt state equals the live one (tests/integration/test_replay.py).

Stored records are decoded by the one codec (streams/codec.py): pydantic-core validates
each straight from its bytes, which measured as fast as building the model without
validation (``model_construct``), so there is no second, unvalidated path.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agents.registry import durable_site_agents
from agents.spec import AgentSpec, table_key
from schemas.envelope import Event
from schemas.registry import BY_NAME, TOPICS, topic_of
from schemas.settings import Settings
from streams.codec import decode
from streams.history import HistoryStore
from streams.progress import Progress

# -- reading the log --------------------------------------------------------------------------

#: The rows of a time range, topics and devices (none: every device) in ``events``.
_LOG_RANGE = ("ts >= {s:DateTime64(3, 'UTC')} AND ts < {e:DateTime64(3, 'UTC')} AND topic IN "
              "{t:Array(String)} AND (empty({d:Array(String)}) OR has({d:Array(String)}, "
              "device_id))")

def read_log(store: HistoryStore, since: datetime, until: datetime,
             topics: Iterable[str] | None = None, devices: Iterable[str] | None = None,
             chunk: timedelta = timedelta(hours=1)) -> Iterator[tuple[str, str, bytes]]:
    """(topic, device_id, payload) of every stored record in [since, until), event-time
    order, each event once; read a chunk of time at a time so memory stays bounded."""
    db = store.database
    names = sorted(topics) if topics is not None else [t.name for t in TOPICS]
    unknown = [t for t in names if t not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown topics {unknown}; known: {', '.join(BY_NAME)}")
    devs = sorted(devices) if devices is not None else []
    start = since
    while start < until:
        end = min(until, start + chunk)
        rows = store.query(
            f"SELECT topic, device_id, payload FROM {db}.events WHERE {_LOG_RANGE} "
            f"ORDER BY ts, topic, kafka_partition, kafka_offset LIMIT 1 BY event_id",
            {"s": start, "e": end, "t": names, "d": devs})
        for topic, device, payload in rows:
            yield topic, device, payload.encode() if isinstance(payload, str) else payload
        start = end


def count_log(store: HistoryStore, since: datetime, until: datetime,
              topics: Iterable[str] | None = None, devices: Iterable[str] | None = None) -> int:
    """How many records ``read_log`` reads, about: stored rows, before redeliveries' copies
    are dropped (a progress bar's total, one cheap count)."""
    names = sorted(topics) if topics is not None else [t.name for t in TOPICS]
    return int(store.query(
        f"SELECT count() FROM {store.database}.events WHERE {_LOG_RANGE}",
        {"s": since, "e": until, "t": names, "d": sorted(devices or [])})[0][0])


# -- the site fold ----------------------------------------------------------------------------

def site_topics() -> tuple[str, ...]:
    """The topics the site state is folded from: the durable site agents' inputs."""
    wanted = {topic_of(cls).name for a in durable_site_agents() for cls in a.inputs}
    return tuple(t.name for t in TOPICS if t.name in wanted)


#: Topics the site state is folded from (the durable site agents' inputs).
SITE_TOPICS = site_topics()
#: Topics of the long-lived inputs (each durable agent's ``ledger``) folded from the first
#: record on at a restore; the miners' telemetry is read for their home pools only.
LEDGER_TOPICS = tuple(sorted(
    {topic_of(m).name for a in durable_site_agents() if a.durable is not None
     for m in a.durable.ledger} - {"asic.telemetry"}))


class SiteFold:
    """The durable site agents' states (agents/registry.py), folded from recorded events
    with their own step functions and parameters: nothing of an agent is restated here."""

    def __init__(self, settings: Settings, agents: Iterable[str] | None = None) -> None:
        """``agents``: fold only the durable site agents of these names (a benchmark's
        per-agent figure); default every enabled one."""
        self.settings = settings
        names = set(agents) if agents is not None else None
        self.specs = [a for a in durable_site_agents() if a.enabled(settings)
                      and (names is None or a.name in names)]
        self.params = {a.name: a.params(settings) for a in self.specs}
        self.states: dict[str, dict[str, Any]] = {a.name: {} for a in self.specs}
        self.events = 0
        self._routes: dict[type, list[AgentSpec[Any, Any]]] = {}

    def _fold(self, spec: AgentSpec[Any, Any], e: Event) -> None:
        states = self.states[spec.name]
        s = states.get(e.site)
        if s is None:
            s = spec.state()
        states[e.site], _ = spec.step(s, e, self.params[spec.name])

    def feed(self, e: Event) -> None:
        """Fold one event into every agent that reads it (each spec's own input union)."""
        self.events += 1
        routes = self._routes.get(type(e))
        if routes is None:
            routes = self._routes[type(e)] = [a for a in self.specs
                                              if isinstance(e, a.inputs)]
        for spec in routes:
            if spec.accepts is None or spec.accepts(e):
                self._fold(spec, e)

    def feed_ledger(self, e: Event) -> None:
        """Fold an old event into the long-lived state only: into each agent whose
        ``durable.ledger`` names its kind (acks into cycles and last-off/on, an operator's
        cap, a miner's last telemetry on its own pool into its home pool: ``restore``)."""
        self.events += 1
        for spec in self.specs:
            if spec.durable is not None and isinstance(e, spec.durable.ledger):
                self._fold(spec, e)

    def tables(self) -> dict[str, dict[str, Any]]:
        """The durable state under the Faust tables' names and keys (``site/key``)."""
        out: dict[str, dict[str, Any]] = {}
        for spec in self.specs:
            d = spec.durable
            assert d is not None
            table = out.setdefault(d.table, {})
            for site, s in self.states[spec.name].items():
                for k in list(d.keys(s)):
                    if (v := d.save(s, k)) not in (None, False):
                        table[table_key(site, k)] = v
        return out


def rebuild(store: HistoryStore, settings: Settings, since: datetime, until: datetime,
            devices: Iterable[str] | None = None, progress: Progress | None = None) -> SiteFold:
    """Fold [since, until) of the log through the site agents' step functions.

    The cyclic garbage collector is paused meanwhile: a fold allocates millions of small
    objects and frees them in order, which the collector would scan over and over (it
    halves decoding throughput); reference counting still frees them."""
    fold = SiteFold(settings)
    if progress is not None:
        progress.set(0, total=count_log(store, since, until, SITE_TOPICS, devices))
    was = gc.isenabled()
    gc.disable()
    try:
        for topic, _, payload in read_log(store, since, until, SITE_TOPICS, devices):
            fold.feed(decode(topic, payload))
            if progress is not None and not fold.events & 4095:
                progress.set(fold.events)
    finally:
        if was:
            gc.enable()
    if progress is not None:
        progress.set(fold.events)
    return fold


def restore(store: HistoryStore, settings: Settings, until: datetime | None = None) -> SiteFold:
    """The durable site state as of ``until`` (default now), rebuilt from the log cheaply
    enough to run at a worker's start: everything of the last ``restore_window_s`` through
    every site agent (``rebuild``'s fold), preceded by what outlives that window, folded
    into the long-lived state only: every ack and operator cap before it (cycles,
    last-off/on, caps) and each miner's last telemetry on a pool of its own (home pools).
    Over a range the window covers, this is exactly ``rebuild``."""
    until = until or datetime.now(UTC)
    start = until - timedelta(seconds=settings.restore_window_s)
    fold = SiteFold(settings)
    db = store.database
    was = gc.isenabled()
    gc.disable()
    try:
        first = store.query(f"SELECT min(ts) FROM {db}.events WHERE topic IN "
                            f"{{t:Array(String)}} AND ts < {{s:DateTime64(3, 'UTC')}}",
                            {"s": start, "t": list(LEDGER_TOPICS)})[0][0]
        if first is not None and first.year > 1970:
            for topic, _, payload in read_log(store, first, start, LEDGER_TOPICS,
                                              chunk=timedelta(days=31)):
                fold.feed_ledger(decode(topic, payload))
        homes = store.query(
            f"SELECT payload FROM {db}.events WHERE topic = 'asic.telemetry' AND ts < "
            f"{{s:DateTime64(3, 'UTC')}} AND (device_id, ts) IN (SELECT device_id, max(ts) "
            f"FROM {db}.asic_telemetry WHERE ts < {{s:DateTime64(3, 'UTC')}} AND pool_url "
            f"NOT IN ('', {{local:String}}) GROUP BY device_id) LIMIT 1 BY device_id",
            {"s": start, "local": settings.local_pool_url})
        for (payload,) in homes:
            fold.feed_ledger(decode("asic.telemetry", payload.encode()
                                    if isinstance(payload, str) else payload))
        for topic, _, payload in read_log(store, start, until, SITE_TOPICS):
            fold.feed(decode(topic, payload))
    finally:
        if was:
            gc.enable()
    return fold


# -- re-publishing ----------------------------------------------------------------------------

async def replay(store: HistoryStore, bootstrap: str, since: datetime, until: datetime, *,
                 topics: Iterable[str] | None = None, devices: Iterable[str] | None = None,
                 speed: float | None = None, prefix: str = "",
                 progress: Progress | None = None) -> int:
    """Re-publish [since, until) in event-time order; ``speed`` None = as fast as possible,
    else the recorded pace x ``speed``.  Returns the number of records sent."""
    from streams.publish import Publisher
    from streams.topics import ensure_topics

    if prefix:
        await ensure_topics(bootstrap, prefix=prefix)
    sent = 0
    t0_event: float | None = None
    t0_wall = time.monotonic()
    async with Publisher(bootstrap, client_id="hashplane-replay") as pub:
        pending: list[Any] = []
        rows = await asyncio.to_thread(lambda: list(read_log(store, since, until, topics,
                                                             devices)))
        if progress is not None:
            progress.set(0, total=len(rows))
        for topic, device, payload in rows:
            if speed is not None:
                ts = datetime.fromisoformat(orjson.loads(payload)["ts"]).timestamp()
                t0_event = ts if t0_event is None else t0_event
                delay = (ts - t0_event) / speed - (time.monotonic() - t0_wall)
                if delay > 0:
                    await _drain(pending)
                    if progress is not None:
                        progress.set(sent)
                    await asyncio.sleep(delay)
            pending.append(await pub.enqueue_raw(prefix + topic, payload, device.encode()))
            sent += 1
            if len(pending) >= 5_000:
                await _drain(pending)
                if progress is not None:
                    progress.set(sent)
        await _drain(pending)
    if progress is not None:
        progress.set(sent)
    return sent


async def _drain(pending: list[Any]) -> None:
    if pending:
        await asyncio.gather(*pending)
        pending.clear()
