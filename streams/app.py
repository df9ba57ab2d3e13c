"""The Faust app factory and the decode-at-the-edge helper every agent uses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import faust

from schemas.envelope import Event
from schemas.plausibility import implausible
from schemas.settings import Settings
from streams.codec import DecodeError, dead_letter, decode, dlq_id, encode, encode_key

log = logging.getLogger(__name__)


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A Faust app on ``settings.kafka_bootstrap`` with join timings that suit the broker.

    Tables live in memory and are rebuilt from their changelog topics on start; the broker,
    not local disk, is their durable copy.
    """
    conf: dict[str, Any] = {
        # hashplane:// is Faust's aiokafka transport with a short fetch wait (kafka_transport)
        "broker": f"hashplane://{settings.kafka_bootstrap.replace(',', ';hashplane://')}",
        "store": "memory://",
        "topic_replication_factor": settings.topic_replication,
        "broker_rebalance_timeout": settings.worker_rebalance_timeout_s,
        "broker_session_timeout": settings.worker_session_timeout_s,
        "broker_heartbeat_interval": settings.worker_heartbeat_interval_s,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        # A few ms of linger batches an agent's outputs into one produce request (per-record
        # requests with acks=all left the agents waiting on round trips); the control path
        # (meter -> energy -> scheduler -> actuator) pays it once per hop.
        "producer_linger": 0.005,
        "web_enabled": False,
        "table_standby_replicas": 0,
        "stream_wait_empty": False,
    }
    conf.update(overrides)
    return faust.App(settings.app_id, **conf)


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A Faust topic carrying raw bytes; the hashplane codec decodes at the edge."""
    return app.topic(name, key_serializer="raw", value_serializer="raw")


async def send(topic: faust.TopicT, event: Event) -> None:
    """Publish an event on a Faust topic, keyed by its registry key."""
    await topic.send(key=encode_key(event), value=encode(event))


#: Header naming the contract topic a forwarded record came from (the site feed).
TOPIC_HEADER = "hashplane-topic"


def record_topic(ev: faust.types.EventT[Any], default: str | None = None) -> str:
    """The contract topic of a record: the forwarding header, else the topic it is on."""
    headers = ev.headers or {}
    raw = headers.get(TOPIC_HEADER) if isinstance(headers, dict) else \
        next((v for k, v in headers if k == TOPIC_HEADER), None)
    if raw:
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    return default or ev.message.topic


def _timestamp_ms(msg: Any) -> int | None:
    """A Faust message's Kafka timestamp in ms (Faust gives float seconds)."""
    ts = getattr(msg, "timestamp", None)
    return None if ts is None else round(float(ts) * 1000)


async def decoded(
    stream: faust.StreamT[Any], topic_name: str | None, publish: Callable[[Event], Awaitable[None]],
    site: str, source: str,
) -> AsyncIterator[Event]:
    """Yield the stream's records decoded; publish undecodable ones to dlq and go on.

    ``topic_name`` None: a multi-topic stream, each record's topic from ``record_topic``.
    """
    async for ev in stream.events():
        name = record_topic(ev, topic_name)
        try:
            event = decode(name, ev.value)
            if (why := implausible(event, datetime.now(UTC))) is not None:
                raise DecodeError(f"implausible: {why}")
            yield event
        except DecodeError as exc:
            msg = ev.message
            if name == "dlq":  # never a letter about a letter (it would loop)
                log.error("undecodable record on dlq at %s:%s: %s", msg.partition, msg.offset,
                          exc.reason)
                continue
            letter = dead_letter(
                source_topic=name, raw=ev.value, reason=exc.reason, site=site,
                source=source, ts=datetime.now(UTC), key=ev.key, partition=msg.partition,
                offset=msg.offset,
                event_id=dlq_id(name, msg.partition, msg.offset, _timestamp_ms(msg), ev.value))
            log.warning("dead-lettered %s@%s:%s: %s", name, msg.partition, msg.offset,
                        exc.reason)
            await publish(letter)
