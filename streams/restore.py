"""The site agents' durable state across a broker that forgets (the embedded Tansu broker
keeps topics in memory: its restart loses every Faust changelog).

Two paths, both in the worker process (in each lane's, for the tables of its agents):

* **At start** (``prepare_changelogs``, before Faust starts): when every site table's
  changelog topic of the lane is empty or missing, the state is rebuilt from ClickHouse with the
  replay fold (``streams.replay.restore``) and written into the changelog topics, so Faust's
  own recovery loads it and the agents act on it at their first event.  The fold runs where
  the history is: straight on a ClickHouse server (``HASHPLANE_CLICKHOUSE_DSN``), or, with
  the embedded engine, which one process owns, through that process's API
  (``HASHPLANE_STATE_URL``, ``GET /v1/state``).  If no state arrives within
  ``restore_timeout_s`` the worker says so loudly and starts on what it has.
* **While running** (``ChangelogWatchdog``, a Faust timer): when the broker lost its state
  under a running worker (its cluster id changed, or a changelog topic vanished), the
  worker's tables are still right in memory; it recreates the changelog topics and writes
  every key again, so a later restart recovers the whole state from the new broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from agents.registry import AGENTS, durable_site_agents
from schemas.alerts import AlertFired, AlertResolved
from schemas.settings import Settings
from streams.topics import changelog_topic

log = logging.getLogger(__name__)

#: The site agents' Faust tables that hold durable state (their specs' ``durable.table``),
#: all with one partition.  Persistent names (STYLE.md 12).
SITE_TABLES = tuple(a.durable.table for a in durable_site_agents() if a.durable is not None)


def lane_tables(lane: str) -> tuple[str, ...]:
    """The site tables a worker of ``lane`` holds (``all``: every one)."""
    return tuple(a.durable.table for a in durable_site_agents()
                 if a.durable is not None and a.runs_in(lane))


def lane_changelogs(lane: str) -> tuple[str, ...] | None:
    """Every table (site and partition scoped) a worker of ``lane`` holds; None for ``all``
    (every changelog topic of the app)."""
    if lane == "all":
        return None
    return tuple(t for a in AGENTS if a.lane == lane
                 for t in (a.durable.table if a.durable else "", a.partition_table) if t)

Tables = dict[str, dict[str, Any]]


async def changelog_ends(bootstrap: str, app_id: str) -> dict[str, int]:
    """End offset of each site table's changelog topic (absent: the topic does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        topics = await consumer.topics()
        tps = [TopicPartition(changelog_topic(app_id, t), 0) for t in SITE_TABLES
               if changelog_topic(app_id, t) in topics]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.topic.removeprefix(f"{app_id}-").removesuffix("-changelog"): int(off)
                for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def create_changelogs(bootstrap: str, app_id: str, replication: int = 1) -> list[str]:
    """Create the site tables' changelog topics that are missing (compacted, 1 partition,
    as Faust creates them); return those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        have = set(await admin.list_topics())
        new = [NewTopic(name=changelog_topic(app_id, t), num_partitions=1,
                        replication_factor=replication,
                        topic_configs={"cleanup.policy": "compact"})
               for t in SITE_TABLES if changelog_topic(app_id, t) not in have]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        return [t.name for t in new]
    finally:
        await admin.close()


async def seed_changelogs(bootstrap: str, app_id: str, tables: Tables,
                          replication: int = 1) -> int:
    """Write ``tables`` into the changelog topics the way Faust does (JSON key and value),
    creating the topics first; return the number of entries written."""
    await create_changelogs(bootstrap, app_id, replication)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(changelog_topic(app_id, table), json.dumps(v).encode(),
                                       key=json.dumps(k).encode(), partition=0)
                   for table, entries in tables.items() if table in SITE_TABLES
                   for k, v in entries.items()]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


#: Key of the record ``seal_changelogs`` appends (no agent reads it).
SEAL_KEY = "__seal__"


async def seal_changelogs(bootstrap: str, app_id: str,
                          tables: tuple[str, ...] | None = None) -> int:
    """Append one record, alone in its produce request, to every non-empty partition of the
    app's changelog topics (of ``tables`` only, when given); return how many were sealed.

    Tansu answers ListOffsets(latest) with the last batch's base offset + 1, not the high
    watermark, and Faust's table recovery reads a changelog up to that answer: the rest of
    a last batch of several writes (a grid dip writes 160 keys at once) would not be
    recovered.  A last batch of one record makes the answer exact; the seal's key is one
    no agent reads."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        mine = None if tables is None else {changelog_topic(app_id, t) for t in tables}
        names = [t for t in await consumer.topics()
                 if t.startswith(f"{app_id}-") and t.endswith("-changelog")
                 and (mine is None or t in mine)]
        tps = [TopicPartition(t, p) for t in names
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    todo = [tp for tp in tps if ends.get(tp, 0) > 0]
    if not todo:
        return 0
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for tp in todo:  # one request each: each seal is a batch of its own
            await producer.send_and_wait(tp.topic, b"0", key=json.dumps(SEAL_KEY).encode(),
                                         partition=tp.partition)
    finally:
        await producer.stop()
    return len(todo)


def _restore_from_store(settings: Settings) -> Tables:
    from streams.history import HistoryStore
    from streams.replay import restore

    store = HistoryStore(settings.history_dsn, settings.clickhouse_database).open()
    try:
        return restore(store, settings).tables()
    finally:
        store.close()


async def fetch_restored(settings: Settings) -> Tables | None:
    """The durable state rebuilt from the history, or None when no source answered within
    ``restore_timeout_s``.  Tries the API (``state_url``) when set, else a ClickHouse
    server directly; the embedded engine's directory belongs to another process."""
    deadline = time.monotonic() + settings.restore_timeout_s
    delay = 0.5
    while True:
        try:
            if settings.state_url:
                key = settings.api_key or next(
                    (k for k, scope in settings.api_keys.items()), "")
                async with httpx.AsyncClient(timeout=settings.restore_timeout_s) as client:
                    r = await client.get(settings.state_url.rstrip("/") + "/v1/state",
                                         headers={"Authorization": f"Bearer {key}"})
                r.raise_for_status()
                return dict(r.json()["tables"])
            if not settings.embedded_history:
                return await asyncio.to_thread(_restore_from_store, settings)
            log.error("no source to restore the site state from: the history is the embedded "
                      "ClickHouse of another process; set HASHPLANE_STATE_URL to its API")
            return None
        except Exception as exc:  # noqa: BLE001 - API not up yet, store down: retry
            if time.monotonic() + delay > deadline:
                log.critical("could not restore the site state from the history within "
                             "%.0f s (%s): starting with what the broker holds",
                             settings.restore_timeout_s, exc)
                return None
            log.warning("restoring the site state: %s; retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)


async def broker_cluster_id(bootstrap: str) -> str | None:
    """The broker's cluster id (a restarted embedded broker has a new one)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        cluster = (await admin.describe_cluster()).get("cluster_id")
        return str(cluster) if cluster else None
    finally:
        await admin.close()


async def prepare_changelogs(settings: Settings, lane: str = "all") -> str:
    """Before Faust starts: restore the durable state of the lane's site tables (each lane's
    worker restores its own) into their changelogs when all of them are empty (see module
    docstring), and seal the lane's changelogs; return what was done, for the log."""
    tables, sealing = lane_tables(lane), lane_changelogs(lane)
    ends = await changelog_ends(settings.kafka_bootstrap, settings.app_id)
    if not tables or any(ends.get(t, 0) > 0 for t in tables):
        sealed = await seal_changelogs(settings.kafka_bootstrap, settings.app_id, sealing)
        return (f"changelog topics hold the site state: Faust recovers it from them "
                f"({sealed} partitions sealed)")
    restored = await fetch_restored(settings)
    if restored is None:
        # the other tables' changelogs (share ratios') are recovered all the same
        sealed = await seal_changelogs(settings.kafka_bootstrap, settings.app_id, sealing)
        return (f"site state NOT restored (no history source): starting from empty site "
                f"tables ({sealed} partitions of the others sealed)")
    restored = {t: v for t, v in restored.items() if t in tables}
    n = await seed_changelogs(settings.kafka_bootstrap, settings.app_id, restored,
                              settings.topic_replication)
    await seal_changelogs(settings.kafka_bootstrap, settings.app_id, sealing)
    sizes = ", ".join(f"{t} {len(restored.get(t, {}))}" for t in tables)
    return f"site state restored from the history into the changelogs ({n} entries: {sizes})"


class ChangelogWatchdog:
    """Notices that the broker lost its state under a running worker and writes the
    tables' content into fresh changelog topics (``check`` runs on a Faust timer).

    Every look is bounded (``look_timeout_s``): a look the broker does not answer, or
    answers with an error, drops the admin client, so the next look connects afresh
    instead of waiting on a connection to the broker that died.  A loss once seen is
    rewritten until a rewrite succeeds, whatever the later looks say."""

    def __init__(self, app: Any, settings: Settings, look_timeout_s: float = 15.0,
                 silent_warn_s: float = 30.0, cluster_id: str | None = None) -> None:
        self.app, self.settings = app, settings
        #: the site tables this worker holds (its lane's), registered before the watchdog
        self.tables = tuple(t for t in SITE_TABLES if t in app.tables)
        self.look_timeout_s, self.silent_warn_s = look_timeout_s, silent_warn_s
        #: the broker's cluster id when the tables were recovered (``broker_cluster_id``
        #: before Faust starts): a broker that restarts before the first look is a new
        #: cluster too, though Faust's writes may have created its changelog topics again
        self.cluster_id: str | None = cluster_id
        self.reseeds = 0
        self.lost: str | None = None  # what the last look found lost, until rewritten
        self._admin: AIOKafkaAdminClient | None = None
        self._silent_since: float | None = None
        self._warned = False

    async def check(self) -> bool:
        """One look; True when the changelogs were rewritten."""
        try:
            return await asyncio.wait_for(self._look(), self.look_timeout_s)
        except TimeoutError:
            self._unanswered(f"no answer within {self.look_timeout_s:.0f} s")
            await self._drop_admin()
            return False

    async def close(self) -> None:
        await self._drop_admin()

    async def _look(self) -> bool:
        try:
            if self._admin is None:
                self._admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=5000)
                await self._admin.start()
            cluster = (await self._admin.describe_cluster()).get("cluster_id")
            topics = set(await self._admin.list_topics())
        except (KafkaError, OSError) as exc:
            self._unanswered(str(exc) or type(exc).__name__)
            await self._drop_admin()
            return False
        self._answered()
        missing = [t for t in self.tables
                   if changelog_topic(self.settings.app_id, t) not in topics]
        changed = self.cluster_id is not None and cluster != self.cluster_id
        self.cluster_id = cluster
        if (missing or changed) and self.lost is None:
            self.lost = "new cluster id" if changed else f"missing {missing}"
            log.error("the broker lost its state (%s): rewriting the site tables into new "
                      "changelog topics", self.lost)
        if self.lost is None:
            return False
        try:
            await create_changelogs(self.settings.kafka_bootstrap, self.settings.app_id,
                                    self.settings.topic_replication)
            n = 0
            for name in self.tables:
                table = self.app.tables.get(name)
                if table is None:
                    continue
                for k, v in list(table.items()):
                    if v is not None:
                        table.send_changelog(0, k, v)  # queued on the app's producer
                        n += 1
        except (KafkaError, OSError) as exc:
            log.warning("changelog watchdog: rewrite failed (%s); retrying", exc)
            return False
        self.lost = None
        self.reseeds += 1
        log.warning("site tables rewritten into the changelogs (%d entries)", n)
        return True

    def _unanswered(self, why: str) -> None:
        now = time.monotonic()
        self._silent_since = self._silent_since or now
        if not self._warned and now - self._silent_since >= self.silent_warn_s:
            self._warned = True
            log.warning("changelog watchdog: the broker has not answered for %.0f s (%s)",
                        now - self._silent_since, why)
        else:
            log.debug("changelog watchdog: broker not answering (%s)", why)

    def _answered(self) -> None:
        if self._warned:
            log.warning("changelog watchdog: the broker answers again after %.0f s",
                        time.monotonic() - (self._silent_since or time.monotonic()))
        self._silent_since, self._warned = None, False

    async def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), 5.0)


class RecoveryGuard(threading.Thread):
    """Says loudly when Faust's table recovery holds the agents for longer than
    ``bound_s`` (nothing is decided meanwhile): a CRITICAL log line and a critical
    ``worker_recovery_stalled`` alert on the alerts topic (SMS, webhooks), resolved when the
    recovery ends.  A thread, so it speaks even when recovery holds the event loop busy.
    ``who`` names the worker in the alert (a lane's: ``worker-control``)."""

    def __init__(self, app: Any, settings: Settings, bound_s: float,
                 who: str = "worker") -> None:
        super().__init__(name="recovery-guard", daemon=True)
        self.app, self.settings, self.bound_s, self.who = app, settings, bound_s, who
        self.fired: AlertFired | None = None

    def run(self) -> None:
        since: float | None = None
        while True:
            time.sleep(1.0)
            if getattr(self.app, "in_recovery", False):
                since = since or time.monotonic()
                held = time.monotonic() - since
                if self.fired is None and held > self.bound_s:
                    log.critical("table recovery has held the agents for %.0f s: no decision "
                                 "is made until it ends", held)
                    self.fired = self._alert(held)
            else:
                since = None
                if self.fired is not None:
                    self._resolve(self.fired)
                    self.fired = None

    def _alert(self, held: float) -> AlertFired:
        now = datetime.now(UTC)
        alert = AlertFired(
            site=self.settings.site, device_id=self.who, ts=now, source="worker:recovery",
            rule="worker_recovery_stalled", severity="critical",
            dedup_key=f"{self.settings.site}/{self.who}_recovery_stalled",
            message=f"the agents' table recovery has taken {held:.0f} s: the control plane "
                    f"makes no decision until it ends", value=held, threshold=self.bound_s)
        self._send(alert)
        return alert

    def _resolve(self, fired: AlertFired) -> None:
        self._send(AlertResolved(
            site=fired.site, device_id=fired.device_id, ts=datetime.now(UTC),
            source=fired.source, rule=fired.rule, severity=fired.severity,
            dedup_key=fired.dedup_key, message="the agents' table recovery ended"))

    def _send(self, event: Any) -> None:
        from streams.publish import Publisher

        async def send() -> None:
            pub = Publisher(self.settings.kafka_bootstrap, client_id="hashplane-recovery-guard",
                            resend_s=0)
            await pub.start(timeout_s=10)
            try:
                await pub.publish(event)
            finally:
                await pub.stop()

        try:
            asyncio.run(send())
        except Exception as exc:  # noqa: BLE001 - the log line has said it already
            log.error("could not publish the recovery alert: %s", exc)
