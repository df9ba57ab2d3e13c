"""Publishing typed events to their topics (the producer side of the codec)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.envelope import Event
from schemas.registry import topic_of
from streams.codec import encode, encode_key


class Publisher:
    """An aiokafka producer that routes each event to its registry topic, keyed by device."""

    def __init__(self, bootstrap: str, *, client_id: str = "hashplane", linger_ms: int = 5,
                 prefix: str = ""):
        self.prefix = prefix
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=15_000,
        )
        self.sent = 0

    async def start(self) -> None:
        """Connect to the cluster."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush pending records and disconnect."""
        await self._producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def publish(self, event: Event) -> None:
        """Send one event and wait until the broker acknowledged it."""
        spec = topic_of(type(event))
        await self._producer.send_and_wait(
            self.prefix + spec.name, encode(event), key=encode_key(event, spec)
        )
        self.sent += 1

    async def publish_many(self, events: Iterable[Event]) -> None:
        """Send events in batches and wait until all are acknowledged (order kept per key)."""
        futures = []
        for event in events:
            spec = topic_of(type(event))
            futures.append(await self._producer.send(
                self.prefix + spec.name, encode(event), key=encode_key(event, spec)
            ))
        if futures:
            await asyncio.gather(*futures)
            self.sent += len(futures)

    async def enqueue_raw(self, topic: str, value: bytes | None,
                          key: bytes | None = None) -> asyncio.Future[Any]:
        """Queue raw bytes without waiting; await the returned future for the broker's ack."""
        fut: asyncio.Future[Any] = await self._producer.send(self.prefix + topic, value, key=key)
        return fut

    async def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """Send raw bytes (tests and replay of stored payloads)."""
        await self._producer.send_and_wait(self.prefix + topic, value, key=key)
