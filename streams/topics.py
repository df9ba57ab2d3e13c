"""Create the registry's topics on a broker (idempotent)."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.registry import TOPICS, TopicSpec

log = logging.getLogger(__name__)

#: Longest a consumer on the control path lets the broker hold a fetch.  Tansu answers a
#: waiting multi-partition fetch only when the wait ends, not when data arrives, so this is
#: the per-hop latency floor there (streams/kafka_transport.py; measured 1.23 s at 1,500 ms).
FETCH_MAX_WAIT_MS = 100

#: Internal topics (not part of the contract, not stored): the site agents' single-partition
#: feed of the partitioned topics they fold (see agents/workers.py).
SITE_FEED = "hashplane.site-feed"
INTERNAL: tuple[tuple[str, int, int], ...] = ((SITE_FEED, 1, 24 * 3_600_000),)


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
