"""The Faust worker: every agent spec (agents/registry.py) run by one generic runner.

The runner holds no agent logic: it decodes at the edge (undecodable records go to dlq),
keeps each agent's state, calls its ``step``, writes the changed durable keys to its table
and publishes the outputs on their registry topics.

* **Partition-scoped** agents fold per-device state on their input topic's own partitions
  and scale out with them (share ratios, endpoint scores).
* **Site-scoped** agents fold a whole site, which needs every partition of several topics
  in one place.  ``site_feed`` forwards the records of the partitioned topics they read,
  validated and unchanged, to the single-partition internal topic ``hashplane.site-feed``
  (the source topic rides in a header); each site agent reads it together with the
  single-partition topics of its input union (grid, feeds, uplink, energy, ...).
  Control-path records (meter -> energy -> scheduler) are on single-partition topics, so
  they never take the forwarding hop.

Which topics an agent reads follows from its input union through the registry; nothing
here names an agent.  Site agents keep their working state in memory (rebuilt from live
data within a poll period after a restart) and what must survive a restart in a Faust
table (changelog-backed), loaded on a site's first event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import faust

from agents.registry import AGENTS, site_agents
from agents.spec import AgentSpec, table_key
from schemas.envelope import Event
from schemas.registry import TOPICS, topic, topic_of
from schemas.settings import Settings
from streams.app import TOPIC_HEADER, create_app, decoded, raw_topic, send
from streams.codec import encode
from streams.topics import SITE_FEED

Publish = Callable[[Event], Awaitable[None]]
Forward = Callable[[bytes, bytes, dict[str, bytes]], Awaitable[Any]]
Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """Processing time, for the guards of the live agents (``AgentSpec.live``)."""
    return datetime.now(UTC)


def topic_publisher(app: faust.App) -> Publish:
    """Publish an event on its registry topic through the app's producer."""
    topics = {spec.name: raw_topic(app, spec.name) for spec in TOPICS}

    async def publish(event: Event) -> None:
        await send(topics[topic_of(type(event)).name], event)

    return publish


async def publish_all(publish: Publish, events: Iterable[Event]) -> None:
    """Send a step's outputs in order."""
    for e in events:
        await publish(e)


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


def enabled(settings: Settings) -> list[AgentSpec[Any, Any]]:
    """The agents this configuration runs."""
    return [a for a in AGENTS if a.enabled(settings)]


def register_site_feed(app: faust.App, settings: Settings, publish: Publish | None = None,
                       forward: Forward | None = None) -> faust.types.AgentT[Any]:
    """Forward what the site agents fold of the partitioned topics to the site feed
    (validated; undecodable records go to dlq here, once)."""
    publish = publish or topic_publisher(app)
    feed = app.topic(SITE_FEED, key_serializer="raw", value_serializer="raw")
    readers = [s for s in site_agents() if s.enabled(settings)]

    async def to_feed(key: bytes, value: bytes, headers: dict[str, bytes]) -> Any:
        return await feed.send(key=key, value=value, headers=headers)

    forward = forward or to_feed
    channel = app.topic(*forwarded_topics(readers), key_serializer="raw",
                        value_serializer="raw")

    @app.agent(channel, name="site_feed")
    async def site_feed_agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, publish, settings.site, "agent:site_feed"):
            if not any(s.wants(event) for s in readers):
                continue
            name = topic_of(type(event)).name
            await forward(event.site.encode(), encode(event), {TOPIC_HEADER: name.encode()})

    return site_feed_agent


def register(app: faust.App, settings: Settings, spec: AgentSpec[Any, Any],
             publish: Publish | None = None, clock: Clock = wall_clock,
             ) -> faust.types.AgentT[Any]:
    """Run one agent spec as a Faust agent.  ``publish`` defaults to the registry topic of
    each event (agent tests pass a recorder instead of a broker)."""
    if spec.scope == "partition":
        return _partition_agent(app, settings, spec, publish)
    flush = app.producer.flush if publish is None and spec.commit_first else None
    out_to = publish or topic_publisher(app)
    p = spec.params(settings)
    durable = spec.durable
    table = app.Table(durable.table, default=lambda: None, partitions=1) \
        if durable is not None else None
    states: dict[str, Any] = {}
    channel = app.topic(SITE_FEED, *direct_topics(spec), key_serializer="raw",
                        value_serializer="raw")

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

    @app.agent(channel, name=spec.name)
    async def agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, None, out_to, settings.site, spec.source):
            if not spec.wants(event):
                continue
            s = state_of(event.site)
            if spec.offload is not None and spec.offload(s, event, p):
                s, out = await asyncio.to_thread(spec.step, s, event, p)
            else:
                s, out = spec.step(s, event, p)
            states[event.site] = s
            if table is not None and durable is not None:
                for k in s.dirty:
                    table[table_key(event.site, k)] = durable.save(s, k)
                s.dirty.clear()
            out = list(out)
            if spec.live is not None:
                out = spec.live(s, event, out, clock(), p)
            if out and flush is not None:
                await flush()  # the state is durable before what it decided goes out
            await publish_all(out_to, out)

    return agent


def _partition_agent(app: faust.App, settings: Settings, spec: AgentSpec[Any, Any],
                     publish: Publish | None) -> faust.types.AgentT[Any]:
    """A partition-scoped spec: one state per record key, on the input topic's partitions."""
    out_to = publish or topic_publisher(app)
    p = spec.params(settings)
    (name,) = input_topics(spec)
    table = app.Table(spec.partition_table, default=lambda: None,
                      partitions=topic(name).partitions) \
        if spec.partition_table else None

    @app.agent(raw_topic(app, name), name=spec.name)
    async def agent(stream: faust.StreamT[Any]) -> None:
        async for event in decoded(stream, name, out_to, settings.site, spec.source):
            if not spec.wants(event):
                continue
            msg = stream.current_event.message if stream.current_event else None
            position = (msg.partition, msg.offset) if msg is not None else None
            key = event.device_id
            before = (table[key] if table is not None else None) or spec.state()
            after, out = spec.step(before, event, p, position)
            if table is not None and after is not before:
                table[key] = after
            await publish_all(out_to, out)

    return agent


def build_app(settings: Settings, watchdog_s: float = 2.0) -> faust.App:
    """The worker app with every enabled agent and the site feed registered, and the
    changelog watchdog (the broker may lose the tables' changelogs under a running worker:
    streams/restore.py)."""
    from streams.restore import ChangelogWatchdog

    app = create_app(settings)
    register_site_feed(app, settings)
    for spec in enabled(settings):
        register(app, settings, spec)
    if watchdog_s > 0:
        watchdog = ChangelogWatchdog(app, settings)

        @app.timer(watchdog_s, on_leader=False)  # type: ignore[untyped-decorator]
        async def changelog_watchdog() -> None:
            await watchdog.check()
    return app
