"""Create the registry's topics on a broker (idempotent)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.registry import TOPICS, TopicSpec, topic

log = logging.getLogger(__name__)


class _Client(Protocol):
    async def start(self) -> Any: ...
    async def stop(self) -> Any: ...


C = TypeVar("C", bound=_Client)

#: Longest a consumer on the control path lets the broker hold a fetch.  Tansu answers a
#: waiting multi-partition fetch only when the wait ends, not when data arrives, so this is
#: the per-hop latency floor there (streams/kafka_transport.py; measured 1.23 s at 1,500 ms).
FETCH_MAX_WAIT_MS = 100

#: Internal topics (not part of the contract, not stored): the site agents' single-partition
#: feed of the partitioned topics they fold (see streams/worker.py).
SITE_FEED = "hashplane.site-feed"

#: The partitioned topics whose partition-scoped agents read them through a partition feed:
#: each source partition's records, many to a record, on the same partition of
#: ``partition_feed(topic)`` (``streams.feed.PartitionFeed``).  A fleet's share counts
#: arrive faster than Faust hands records to an agent one by one (~5,000 a second here).
FED = ("shares",)


def partition_feed(name: str) -> str:
    """The internal topic a fed topic's partition agents read (``FED``)."""
    return f"hashplane.{name}.feed"


INTERNAL: tuple[tuple[str, int, int], ...] = (
    (SITE_FEED, 1, 24 * 3_600_000),
    *((partition_feed(n), topic(n).partitions, 24 * 3_600_000) for n in FED))


def changelog_topic(app_id: str, table: str) -> str:
    """A Faust table's changelog topic.  Named after the site's app id (``settings.app_id``),
    not after the Faust app of the process holding the table: a lane's worker process (its
    own consumer group, ``hashplane worker --lane``) keeps the names that one worker running
    every agent uses (``streams.app.site_table``)."""
    return f"{app_id}-{table}-changelog"


async def ensure_topics(
    bootstrap: str, specs: tuple[TopicSpec, ...] = TOPICS, replication: int = 1, prefix: str = ""
) -> list[str]:
    """Create every missing topic of ``specs``; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=prefix + s.name,
                num_partitions=s.partitions,
                replication_factor=replication,
                topic_configs={"retention.ms": str(s.retention_ms)},
            )
            for s in specs
            if prefix + s.name not in existing
        ] + [
            NewTopic(name=prefix + name, num_partitions=partitions,
                     replication_factor=replication, topic_configs={"retention.ms": str(ms)})
            for name, partitions, ms in INTERNAL
            if prefix + name not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another process won the race; the topics exist, which is all we need
            log.info("created topics: %s", ", ".join(t.name for t in new))
        return [t.name for t in new]
    finally:
        await admin.close()


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of a consumer group's committed offsets on ``topic`` (0 where none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in consumer.partitions_for_topic(topic) or set():
            total += max(0, await consumer.committed(TopicPartition(topic, p)) or 0)
        return total
    finally:
        await consumer.stop()


async def start_client(make: Callable[[], C], what: str, stop: asyncio.Event | None = None,
                       retry_max_s: float = 5.0) -> C:
    """Build and start an aiokafka client, retrying (new client each time) while the broker
    cannot be reached; a process started during an outage comes up when the broker does.
    Raises ``BrokerUnavailable`` only when ``stop`` is set first."""
    delay = 0.25
    while True:
        client = make()
        try:
            await client.start()
            return client
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await client.stop()
            if stop is not None and stop.is_set():
                raise BrokerUnavailable(f"{what}: stopped before the broker answered") from exc
            log.warning("%s: broker unreachable (%s); retrying in %.1fs", what, exc, delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            delay = min(retry_max_s, delay * 2)


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached before the process was told to stop."""


async def ensure_topics_retrying(bootstrap: str, replication: int = 1,
                                 stop: asyncio.Event | None = None,
                                 retry_max_s: float = 5.0) -> list[str]:
    """``ensure_topics``, retried while the broker cannot be reached."""
    delay = 0.25
    while True:
        try:
            return await ensure_topics(bootstrap, replication=replication)
        except (KafkaError, OSError, TimeoutError) as exc:
            if stop is not None and stop.is_set():
                raise BrokerUnavailable("stopped before the broker answered") from exc
            log.warning("creating topics on %s failed (%s); retrying in %.1fs", bootstrap, exc,
                        delay)
            await asyncio.sleep(delay)
            delay = min(retry_max_s, delay * 2)
