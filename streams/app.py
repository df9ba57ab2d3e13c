"""The Faust app factory and the decode-at-the-edge helper every agent uses."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import faust

from schemas.envelope import Event
from schemas.events import RecordDeadLettered
from schemas.settings import Settings
from streams.codec import DecodeError, decode, decode_plausible, record_letter
from streams.topics import changelog_topic

log = logging.getLogger(__name__)


def site_table(app_id: str) -> type[faust.Table[Any, Any]]:
    """Faust's table class, with its changelog named by ``changelog_topic``."""

    class SiteTable(faust.Table[Any, Any]):
        def _changelog_topic_name(self) -> str:
            return changelog_topic(app_id, self.name)

    return SiteTable


def create_app(settings: Settings, app_id: str | None = None, **overrides: Any) -> faust.App:
    """A Faust app on ``settings.kafka_bootstrap`` with join timings that suit the broker.

    ``app_id`` (the consumer group) defaults to ``settings.app_id``.  Tables live in memory
    and are rebuilt from their changelog topics on start; the broker, not local disk, is
    their durable copy.
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
        # A step's many outputs go out as record batches (streams.worker.send_records): a
        # grid dip's 1,000 commands in one batch per partition, not in 16 KiB pieces that
        # each wait for the one before them to be sent
        "producer_max_batch_size": 512 * 1024,
        "web_enabled": False,
        "table_standby_replicas": 0,
        "stream_wait_empty": False,
        "Table": site_table(settings.app_id),
    }
    conf.update(overrides)
    return faust.App(app_id or settings.app_id, **conf)


def raw_topic(app: faust.App, name: str, maxsize: int | None = None) -> faust.TopicT:
    """A Faust topic carrying raw bytes; the hashplane codec decodes at the edge.
    ``maxsize``: records Faust fetches ahead of the agent (default
    ``stream_buffer_maxsize``, 4,096)."""
    return app.topic(name, key_serializer="raw", value_serializer="raw", maxsize=maxsize)


#: Header naming the contract topic a forwarded record came from (the site feed).
TOPIC_HEADER = "hashplane-topic"
#: Header marking a site-feed record that holds a batch of forwarded records (``pack``).
BATCH_HEADER = "hashplane-batch"


def header(ev: faust.types.EventT[Any], name: str) -> bytes | None:
    """A record's header ``name`` (None: it has none)."""
    headers = ev.headers or {}
    raw = headers.get(name) if isinstance(headers, dict) else \
        next((v for k, v in headers if k == name), None)
    return raw.encode() if isinstance(raw, str) else raw


def record_topic(ev: faust.types.EventT[Any], default: str | None = None) -> str:
    """The contract topic of a record: the forwarding header, else the topic it is on."""
    raw = header(ev, TOPIC_HEADER)
    if raw:
        return raw.decode()
    return default or ev.message.topic


def pack(entries: list[tuple[str, bytes]]) -> bytes:
    """One site-feed record holding many: a line per record, its topic, a space, its JSON
    (the codec's JSON has no raw newline)."""
    return b"\n".join(t.encode() + b" " + v for t, v in entries)


def unpack(value: bytes) -> list[tuple[str, bytes]]:
    """The (topic, JSON) records of a ``pack``ed batch."""
    out = []
    for line in value.split(b"\n"):
        name, _, raw = line.partition(b" ")
        out.append((name.decode("utf-8", "replace"), raw))
    return out


def _timestamp_ms(msg: Any) -> int | None:
    """A Faust message's Kafka timestamp in ms (Faust gives float seconds)."""
    ts = getattr(msg, "timestamp", None)
    return None if ts is None else round(float(ts) * 1000)


Publish = Callable[[Event], Awaitable[None]]


async def decode_one(ev: faust.types.EventT[Any], name: str, raw: bytes | None,
                     publish: Publish, site: str, source: str, checked: bool = False,
                     ) -> Event | None:
    """One record decoded (and checked for plausibility unless ``checked``: the site feed
    forwards only what passed); an undecodable one is published to dlq and None returned."""
    try:
        return decode(name, raw) if checked else decode_plausible(name, raw, datetime.now(UTC))[0]
    except DecodeError as exc:
        msg = ev.message
        if name == "dlq":  # never a letter about a letter (it would loop)
            log.error("undecodable record on dlq at %s:%s: %s", msg.partition, msg.offset,
                      exc.reason)
            return None
        await publish_letter(publish, record_letter(
            topic=name, partition=msg.partition, offset=msg.offset,
            timestamp_ms=_timestamp_ms(msg), raw=raw, key=ev.key, reason=exc.reason,
            site=site, source=source, ts=datetime.now(UTC)))
        return None


async def publish_letter(publish: Publish, letter: RecordDeadLettered) -> None:
    """Log a record's dead letter and publish it."""
    log.warning("dead-lettered %s@%s:%s: %s", letter.source_topic, letter.partition,
                letter.offset, letter.reason)
    await publish(letter)


class DecodedBatches:
    """The last site-feed batches decoded in this process, by the record's value (every site
    agent of a worker reads the same feed records: the first to reach one decodes it).

    Kept up to ``events`` events (~4 KiB each decoded, with its JSON): a batch holds up to
    1,000 readings, and 64 full batches kept 176 MiB more in the worker at 10,000 ASICs
    (``bench/memory.py``); an agent further behind than that decodes a batch again."""

    def __init__(self, batches: int = 64, events: int = 16_384):
        self.kept: OrderedDict[int, tuple[bytes, list[Event]]] = OrderedDict()
        self.max_batches, self.max_events, self.events = batches, events, 0

    def get(self, value: bytes) -> list[Event] | None:
        hit = self.kept.get(id(value))
        return hit[1] if hit is not None and hit[0] is value else None

    def put(self, value: bytes, events: list[Event]) -> None:
        if (old := self.kept.pop(id(value), None)) is not None:  # an id reused
            self.events -= len(old[1])
        self.kept[id(value)] = (value, events)
        self.events += len(events)
        while len(self.kept) > 1 and (len(self.kept) > self.max_batches
                                      or self.events > self.max_events):
            self.events -= len(self.kept.popitem(last=False)[1][1])


_BATCHES = DecodedBatches()


async def _unbatched(ev: faust.types.EventT[Any], publish: Publish, site: str,
                     source: str) -> list[Event]:
    value = ev.value
    if (hit := _BATCHES.get(value)) is not None:
        return hit
    events = []
    for name, raw in unpack(value):
        try:  # the common case without a coroutine per reading
            events.append(decode(name, raw))
        except DecodeError:  # again, with its letter to dlq
            if (e := await decode_one(ev, name, raw, publish, site, source,
                                      checked=True)) is not None:
                events.append(e)
    _BATCHES.put(value, events)
    return events


async def decoded(
    stream: faust.StreamT[Any], topic_name: str | None, publish: Publish,
    site: str, source: str,
) -> AsyncIterator[Event]:
    """Yield the stream's records decoded; publish undecodable ones to dlq and go on.

    ``topic_name`` None: a multi-topic stream, each record's topic from ``record_topic``;
    a site-feed batch (``BATCH_HEADER``) yields each of its records.
    """
    async for ev in stream.events():
        if topic_name is None and header(ev, BATCH_HEADER):
            for each in await _unbatched(ev, publish, site, source):
                yield each
            continue
        event = await decode_one(ev, record_topic(ev, topic_name), ev.value, publish, site,
                                 source)
        if event is not None:
            yield event
