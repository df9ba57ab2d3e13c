"""Faust's aiokafka transport with a short fetch wait (registered as ``hashplane://``).

Faust's driver fixes the consumer's ``fetch_max_wait_ms`` at 1,500 ms.  A broker is meant to
answer a waiting fetch as soon as data arrives, but Tansu does so only for single-partition
fetches: a worker's fetch spans every partition it holds, so a record sat up to 1.5 s before
the agent saw it (measured: 1.23 s per hop on an idle worker; 40 ms with a 100 ms wait).
The grid programme's path meter -> energy -> scheduler crosses two such hops, so the worker
waits at most ``FETCH_MAX_WAIT_MS`` per fetch.  Registered through the ``faust.transports``
entry point (pyproject.toml); ``create_app`` uses it.  On a Kafka cluster the shorter wait
costs a few more empty fetches, nothing else.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.topics import FETCH_MAX_WAIT_MS


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The driver's consumer thread, with a short fetch wait."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start(); no public setter
        return consumer


class Consumer(faust_aiokafka.Consumer):
    """The driver's consumer on that thread."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """``hashplane://host:port``: the aiokafka transport with the consumer above."""

    Consumer = Consumer
