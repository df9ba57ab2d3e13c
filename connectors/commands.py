"""Consuming a command topic: decode, de-duplicate by command id, act, publish one ack.

The handler decides (``applied``/``rejected``/``failed``) given the command and the time;
expired commands are acked ``expired`` without acting; a redelivered command (same
``command_id``) is neither acted on nor acked again.  Offsets are committed after the ack
is published, so a crash re-delivers rather than loses a command.

Exactly one ack across a crash: the ack goes out before the offset commit, so a consumer
killed between the two sees its last commands again.  Before it consumes, it therefore
reads ``commands.acks`` from the time of its first uncommitted command onwards and
remembers every command id acked there (``acked_since``): a redelivered command that was
already acked is neither applied nor acked again.  (One that was applied but whose ack never
went out is applied again, which the commands are made safe for, and acked once; a device's
next command waits for the previous one's ack, so that is at most one command per device.)  The
broker may have lost those acks (the embedded one keeps topics in memory) while producers
send their recent commands again to its new incarnation: so the consumer also keeps a small
journal of the command ids it acked (``AckJournal``, a file under the data directory),
appended once each ack is out, and remembers those too.  Acks are
delivered through broker outages (``Emitter.deliver``); after a rebalance or when the
broker restarted (offsets start again at 0), offsets of records handled before are not
committed, so nothing is committed past a command whose ack is not out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connectors.base import Emitter
from schemas.commands import AckStatus, CommandAcknowledged
from schemas.envelope import Command
from streams.codec import DecodeError, decode
from streams.topics import FETCH_MAX_WAIT_MS, BrokerUnavailable, start_client

log = logging.getLogger(__name__)

Handler = Callable[[Command], Awaitable[tuple[AckStatus, str]]]

#: Clocks of the command's producer and of the ack's may differ by this much.
CLOCK_SKEW_MS = 5 * 60_000


async def acked_since(bootstrap: str, topic: str, group: str, idle_ms: int = 1000,
                      actuator: str | None = None) -> set[str]:
    """Command ids acked on ``commands.acks`` (by ``actuator`` when given: the others' acks
    are not this consumer's to remember) since the first command of ``topic`` that
    ``group`` has not committed (empty when it has committed everything).

    End offsets are not asked for: Tansu answers ListOffsets(latest) with the last batch's
    base offset + 1, which hides the rest of that batch.  Reads go on until the fetch high
    watermark (which is exact) or until nothing arrives for ``idle_ms``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()  # every topic's metadata (an assignment narrows it)
        cmds = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                          or ())]
        acks = [TopicPartition("commands.acks", p)
                for p in sorted(consumer.partitions_for_topic("commands.acks") or ())]
        if not cmds or not acks:
            return set()
        consumer.assign(cmds)
        for tp in cmds:
            consumer.seek(tp, await consumer.committed(tp) or 0)
        first_ts: int | None = None
        pending = set(cmds)
        while pending:  # the first uncommitted record of each partition, if any
            got = await consumer.getmany(*pending, timeout_ms=idle_ms, max_records=len(cmds))
            if not got:
                break
            for tp, records in got.items():
                if records:
                    first_ts = records[0].timestamp if first_ts is None else min(
                        first_ts, records[0].timestamp)
                    pending.discard(tp)
                    consumer.pause(tp)
        if first_ts is None:
            return set()
        consumer.assign(acks)
        starts = await consumer.offsets_for_times({tp: max(0, first_ts - CLOCK_SKEW_MS)
                                                    for tp in acks})
        todo = set()
        for tp in acks:
            at = starts.get(tp)
            if at is not None:  # None: nothing that recent on this partition
                consumer.seek(tp, at.offset)
                todo.add(tp)
            else:
                consumer.pause(tp)
        seen: set[str] = set()
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=idle_ms)
            if not batch:
                break
            for tp, records in batch.items():
                for rec in records:
                    try:
                        a = decode("commands.acks", rec.value)
                    except DecodeError:
                        continue
                    assert isinstance(a, CommandAcknowledged)
                    if actuator is None or a.actuator == actuator:
                        seen.add(str(a.command_id))
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    todo.discard(tp)
                    consumer.pause(tp)
        return seen
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


class AckJournal:
    """The command ids this consumer acked, on local disk: what a restart remembers even
    when the broker forgot its acks.  Appended (and flushed) after each ack went out; kept
    to the last ``keep`` ids (rewritten when it holds twice that)."""

    def __init__(self, path: Path, keep: int = 10_000) -> None:
        self.path, self.keep = path, keep
        self._lines = 0
        self._file: Any = None

    def load(self) -> list[str]:
        """The ids recorded (oldest first), compacting the file."""
        try:
            ids = [x for x in self.path.read_text().split() if len(x) == 36][-self.keep:]
        except FileNotFoundError:
            ids = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{x}\n" for x in ids))
        tmp.replace(self.path)
        self._lines = len(ids)
        return ids

    def add(self, command_id: str) -> None:
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(f"{command_id}\n")
        self._file.flush()  # in the page cache: survives the process being killed
        self._lines += 1
        if self._lines > 2 * self.keep:
            self._file.close()
            self._file = None
            self.load()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Positions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forget the commit bookkeeping of partitions that moved (see ``CommandConsumer``)."""

    def __init__(self, inflight: dict[TopicPartition, list[tuple[int, asyncio.Task[Any]]]]):
        self.inflight = inflight

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self.inflight.pop(tp, None)  # handled, acked; redelivered ones are recognised

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


def ack(cmd: Command, status: AckStatus, detail: str, *, actuator: str, site: str,
        now: datetime) -> CommandAcknowledged:
    """The ack of ``cmd`` (latency from the command's issue to now)."""
    return CommandAcknowledged(
        site=site, device_id=cmd.device_id, ts=now, source=actuator, command_id=cmd.command_id,
        command_kind=cmd.kind, status=status, detail=detail[:4096], actuator=actuator,
        latency_ms=max(0.0, (now - cmd.issued_at).total_seconds() * 1000))


class CommandConsumer:
    """Apply the commands of one topic addressed to ``targets`` (device ids).

    Records are applied as they arrive, concurrently (at most ``concurrency`` at once, each
    within ``timeout_s``: a grid programme wants a whole fleet curtailed in one go); offsets
    are committed behind the acks.  ``own_all``: this consumer is the only actuator
    of the topic for the site, so a command for a device it does not know gets a
    ``rejected`` ack; when actuators shard the devices, others' commands are skipped.
    """

    def __init__(self, bootstrap: str, topic: str, group: str, targets: set[str],
                 handler: Handler, emitter: Emitter, *, actuator: str, remember: int = 100_000,
                 concurrency: int = 1, timeout_s: float | None = None, own_all: bool = False,
                 session_timeout_s: float = 9.0, journal: Path | None = None):
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.targets, self.handler = targets, handler
        self._prepared: asyncio.Task[Any] | None = None
        self.emitter, self.actuator = emitter, actuator
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.remember = remember
        self.slots = asyncio.Semaphore(concurrency)
        self.timeout_s, self.own_all = timeout_s, own_all
        self.locks: dict[str, asyncio.Lock] = {}
        # a killed predecessor's partitions come back after its session times out
        self.session_timeout_ms = int(session_timeout_s * 1000)
        self.journal = AckJournal(journal, remember) if journal is not None else None

    async def recall(self) -> None:
        """Remember the commands already acked that this group may be given again."""
        while True:
            try:
                acked = await acked_since(self.bootstrap, self.topic, self.group,
                                          actuator=self.actuator)
                break
            except Exception as exc:  # noqa: BLE001 - broker trouble: acting without the
                # memory could ack twice, so wait for it
                log.warning("%s: reading commands.acks failed (%s); retrying", self.actuator,
                            exc)
                await asyncio.sleep(1.0)
        journal = self.journal.load() if self.journal is not None else []
        # the journal last and in its order (oldest first): the bound evicts the oldest
        for cid in [*sorted(acked.difference(journal)), *journal]:
            self.seen.pop(cid, None)
            self.seen[cid] = None
        while len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        acked.update(journal)
        if acked:
            log.info("%s: %d commands acked before this start will not be acted on again",
                     self.actuator, len(acked))

    async def handle(self, raw: bytes | None, key: bytes | None) -> CommandAcknowledged | None:
        """One record: its ack, or None when it is not for us, a duplicate, or undecodable."""
        try:
            cmd = decode(self.topic, raw)
        except DecodeError as exc:
            await self.emitter.dead(self.topic, raw, exc.reason,
                                    key=(key or b"").decode("utf-8", "replace"))
            return None
        assert isinstance(cmd, Command)
        if cmd.device_id not in self.targets and not self.own_all:
            return None
        cid = str(cmd.command_id)
        if cid in self.seen:
            return None
        self.seen[cid] = None  # before acting: a copy in the same batch must not act too
        while len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        # one device's commands in log order, each acked before the next acts: a crash
        # then leaves at most one command per device applied without its ack
        async with self.locks.setdefault(cmd.device_id, asyncio.Lock()):
            status, detail = await self._act(cmd)
            a = ack(cmd, status, detail, actuator=self.actuator, site=self.emitter.site,
                    now=self.emitter.clock())
            try:
                await self.emitter.deliver([a])
            except BaseException:
                self.seen.pop(cid, None)  # no ack went out: the redelivery must act and ack
                raise
            if self.journal is not None:
                self.journal.add(cid)
        return a

    async def _act(self, cmd: Command) -> tuple[AckStatus, str]:
        if cmd.expired(self.emitter.clock()):
            return "expired", f"expired at {cmd.expires_at.isoformat()}"
        if cmd.device_id not in self.targets:
            return "rejected", f"unknown device {cmd.device_id!r}"
        try:
            async with self.slots:  # different devices in parallel, boundedly
                return await asyncio.wait_for(self.handler(cmd), self.timeout_s)
        except TimeoutError:
            return "failed", f"no outcome within {self.timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - a failed action is a failed ack
            return "failed", f"{type(exc).__name__}: {exc}"

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch continuously; each record is handled as soon as it arrives (bounded by
        ``concurrency``), and a partition's offset is committed up to the last record whose
        ack is out and before which every record's ack is out too."""
        inflight: dict[TopicPartition, list[tuple[int, asyncio.Task[Any]]]] = {}
        last_seen: dict[TopicPartition, int] = {}

        def make() -> AIOKafkaConsumer:
            c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                 group_id=self.group, enable_auto_commit=False,
                                 auto_offset_reset="earliest",
                                 session_timeout_ms=self.session_timeout_ms,
                                 heartbeat_interval_ms=500,
                                 # a multi-partition fetch may wait this long on Tansu
                                 # before new commands are seen (streams/kafka_transport.py)
                                 fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
            c.subscribe([self.topic], listener=_Positions(inflight))
            return c

        try:
            consumer = await start_client(make, f"{self.actuator} on {self.topic}", stop)
            await self.recall()
            prepare = getattr(self.handler, "prepare", None)
            if prepare is not None and self._prepared is None:  # logins, in the background
                self._prepared = asyncio.create_task(prepare())
        except BrokerUnavailable:
            return
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                for tp, records in batch.items():
                    if records and records[0].offset <= last_seen.get(tp, -1):
                        # offsets went back (broker restarted, position reset): what was
                        # handled before must not be committed against the new ones
                        inflight.pop(tp, None)
                    if records:
                        last_seen[tp] = records[-1].offset
                    inflight.setdefault(tp, []).extend(
                        (r.offset, asyncio.create_task(self.handle(r.value, r.key)))
                        for r in records)
                await self._commit_done(consumer, inflight)
            for tasks in inflight.values():
                await asyncio.gather(*(t for _, t in tasks))
            await self._commit_done(consumer, inflight)
        finally:
            for tasks in inflight.values():
                for _, t in tasks:
                    t.cancel()
            with contextlib.suppress(Exception):
                await consumer.stop()
            if self.journal is not None:
                self.journal.close()

    @staticmethod
    async def _commit_done(consumer: AIOKafkaConsumer,
                           inflight: dict[TopicPartition, list[tuple[int, asyncio.Task[Any]]]],
                           ) -> None:
        commit: dict[TopicPartition, int] = {}
        for tp, tasks in inflight.items():
            done = 0
            while done < len(tasks) and tasks[done][1].done():
                tasks[done][1].result()  # a failed ack publish re-raises: no commit past it
                done += 1
            if done:
                commit[tp] = tasks[done - 1][0] + 1
                del tasks[:done]
        if commit:
            try:
                await consumer.commit(commit)
            except KafkaError as exc:  # rebalance or broker restart: redelivered, recognised
                log.warning("commit of handled commands failed: %s", exc)
