"""The worker's Kafka transport: registered for Faust, short fetch wait on its consumer."""

from __future__ import annotations

from faust.transport import by_url

from schemas.settings import Settings
from streams import kafka_transport
from streams.app import create_app
from streams.topics import FETCH_MAX_WAIT_MS


def test_apps_use_the_hashplane_transport_from_the_entry_point(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(data_dir=tmp_path, kafka_bootstrap="k1:9092,k2:9092"))
    urls = [str(u) for u in app.conf.broker]
    assert urls == ["hashplane://k1:9092", "hashplane://k2:9092"]
    assert by_url(urls[0]) is kafka_transport.Transport  # pyproject's faust.transports


async def test_the_workers_kafka_consumer_waits_at_most_the_short_fetch_wait(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1"))
    thread = app.consumer._thread
    assert isinstance(thread, kafka_transport.ConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)  # built, never started
    assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS <= 200
