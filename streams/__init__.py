"""The runtime: settings, the codec, Kafka clients, the history store, the entry points.

Topics are a contract created from the registry (``streams.topics.ensure_topics``) with
their partition counts.  A Kafka client's metadata request normally lets the broker create
a topic it does not know, and Tansu (which has no broker-side switch for it) then creates it
with 4 partitions: right after a restart of the embedded broker, a producer's first request
would create ``shares`` with 4 partitions instead of 8 before the topics are recreated.  So
every aiokafka client of this process (Faust's included) asks without auto-creation, as a
production Kafka runs with ``auto.create.topics.enable=false``; a record for a topic that
does not exist yet is retried until it does.
"""

from __future__ import annotations

from typing import Any

from aiokafka.protocol import metadata as _metadata

_plain_init = _metadata.MetadataRequest.__init__


def _no_auto_create(self: Any, topics: list[str] | None = None,
                    allow_auto_topic_creation: bool | None = None) -> None:
    _plain_init(self, topics, bool(allow_auto_topic_creation))


if getattr(_metadata.MetadataRequest.__init__, "__name__", "") != "_no_auto_create":
    _metadata.MetadataRequest.__init__ = _no_auto_create
