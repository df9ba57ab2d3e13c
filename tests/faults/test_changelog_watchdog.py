"""The running worker's changelog watchdog (streams/restore.py) against a real Tansu broker
that dies, comes back empty, or accepts connections and never answers.

The worker's tables are stood in for by a recording table (what ``send_changelog`` was
asked to write); everything the watchdog talks to is the real broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas.settings import Settings
from streams.broker import free_port
from streams.restore import SITE_TABLES, ChangelogWatchdog
from streams.topics import changelog_topic
from tests.conftest import until
from tests.faults.conftest import Broker

pytestmark = pytest.mark.integration


class RecordingTable:
    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries, self.sent = entries, []  # type: ignore[var-annotated]

    def items(self) -> Any:
        return self.entries.items()

    def send_changelog(self, partition: int, key: str, value: Any) -> None:
        self.sent.append((partition, key, value))


class App:
    def __init__(self) -> None:
        self.tables = {t: RecordingTable({f"site-1/{t}-{i}": {"n": i} for i in range(3)})
                       for t in SITE_TABLES}

    def sent(self) -> int:
        return sum(len(t.sent) for t in self.tables.values())


async def topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_the_watchdog_rewrites_the_tables_after_the_broker_came_back_empty(
        fault_settings: Settings, broker_proc: Broker) -> None:
    app = App()
    dog = ChangelogWatchdog(app, fault_settings, look_timeout_s=5)
    logs = [changelog_topic(fault_settings.app_id, t) for t in SITE_TABLES]
    try:
        # no changelog yet: created and written
        assert await dog.check()
        assert set(logs) <= await topics(fault_settings.kafka_bootstrap)
        assert app.sent() == 3 * len(SITE_TABLES)
        assert not await dog.check()  # nothing lost: nothing written again
        assert app.sent() == 3 * len(SITE_TABLES)

        broker_proc.kill_tansu()  # its supervisor starts it again, with no topics
        await until(dog.check, 60, 0.5, what="the watchdog rewriting after the restart")
        assert set(logs) <= await topics(fault_settings.kafka_bootstrap)
        assert app.sent() == 2 * 3 * len(SITE_TABLES)
        assert dog.reseeds == 2 and dog.lost is None
    finally:
        await dog.close()


async def test_a_broker_that_restarts_before_the_first_look_is_seen_as_new(
        fault_settings: Settings, broker_proc: Broker) -> None:
    """The worker reads the cluster id before Faust starts; the broker restarts before the
    watchdog's first look, and the agents' first writes create the changelog topics again
    (empty of everything before): the first look still rewrites the tables."""
    from aiokafka.admin import NewTopic

    from streams.restore import broker_cluster_id

    app = App()
    before = await broker_cluster_id(fault_settings.kafka_bootstrap)
    assert before
    broker_proc.kill_tansu()
    await until(lambda: "tansu broker restarted" in broker_proc.tail(), 30, what="broker back")
    admin = AIOKafkaAdminClient(bootstrap_servers=fault_settings.kafka_bootstrap)
    await admin.start()
    try:  # what a table write after the restart would leave: the topics, nearly empty
        await admin.create_topics([NewTopic(changelog_topic(fault_settings.app_id, t), 1, 1)
                                   for t in SITE_TABLES])
    finally:
        await admin.close()
    dog = ChangelogWatchdog(app, fault_settings, look_timeout_s=5, cluster_id=before)
    try:
        assert await dog.check()
        assert app.sent() == 3 * len(SITE_TABLES) and dog.reseeds == 1
        assert not await dog.check()
    finally:
        await dog.close()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never answers (a broker hung mid-restart)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    port = free_port()
    server = await asyncio.start_server(hold, "127.0.0.1", port)
    try:
        yield port
    finally:
        for w in held:
            w.close()
        server.close()


async def test_a_look_the_broker_never_answers_ends_and_the_next_one_starts_afresh(
        silent_port: int, caplog: pytest.LogCaptureFixture) -> None:
    s = Settings(kafka_bootstrap=f"127.0.0.1:{silent_port}")
    app = App()
    dog = ChangelogWatchdog(app, s, look_timeout_s=1, silent_warn_s=0)
    with caplog.at_level(logging.WARNING, logger="streams.restore"):
        for _ in range(2):
            # bounded by the look's own timeout; the outer bound only keeps a regression
            # from hanging the suite
            assert not await asyncio.wait_for(dog.check(), 60)
            assert dog._admin is None  # dropped: the next look connects afresh
    assert app.sent() == 0
    warned = [r.getMessage() for r in caplog.records if "has not answered" in r.getMessage()]
    assert len(warned) == 1, caplog.text  # said once, not on every look
    await dog.close()
