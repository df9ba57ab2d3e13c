"""Consuming a command topic: decode, de-duplicate by command id, act, publish one ack.

The handler decides (``applied``/``rejected``/``failed``) given the command and the time;
expired commands are acked ``expired`` without acting; a redelivered command (same
``command_id``) is neither acted on nor acked again.  Offsets are committed after the ack
is published, so a crash re-delivers rather than loses a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.base import Emitter
from schemas.commands import AckStatus, CommandAcknowledged
from schemas.envelope import Command
from streams.codec import DecodeError, decode
from streams.topics import FETCH_MAX_WAIT_MS

log = logging.getLogger(__name__)

Handler = Callable[[Command], Awaitable[tuple[AckStatus, str]]]


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
                 handler: Handler, emitter: Emitter, *, actuator: str, remember: int = 10_000,
                 concurrency: int = 1, timeout_s: float | None = None, own_all: bool = False):
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.targets, self.handler = targets, handler
        self.emitter, self.actuator = emitter, actuator
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.remember = remember
        self.slots = asyncio.Semaphore(concurrency)
        self.timeout_s, self.own_all = timeout_s, own_all
        self.locks: dict[str, asyncio.Lock] = {}

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
        now = self.emitter.clock()
        status: AckStatus
        if cmd.expired(now):
            status, detail = "expired", f"expired at {cmd.expires_at.isoformat()}"
        elif cmd.device_id not in self.targets:
            status, detail = "rejected", f"unknown device {cmd.device_id!r}"
        else:
            try:
                # one device's commands in log order; different devices in parallel
                async with self.locks.setdefault(cmd.device_id, asyncio.Lock()), self.slots:
                    status, detail = await asyncio.wait_for(self.handler(cmd), self.timeout_s)
            except TimeoutError:
                status, detail = "failed", f"no outcome within {self.timeout_s:g} s"
            except Exception as exc:  # noqa: BLE001 - a failed action is a failed ack
                status, detail = "failed", f"{type(exc).__name__}: {exc}"
        a = ack(cmd, status, detail, actuator=self.actuator, site=self.emitter.site,
                now=self.emitter.clock())
        try:
            await self.emitter.emit([a])
        except BaseException:
            self.seen.pop(cid, None)  # no ack went out: the redelivery must act and ack
            raise
        return a

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch continuously; each record is handled as soon as it arrives (bounded by
        ``concurrency``), and a partition's offset is committed up to the last record whose
        ack is out and before which every record's ack is out too."""
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap,
                                    group_id=self.group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", session_timeout_ms=9000,
                                    heartbeat_interval_ms=500,
                                    # a multi-partition fetch may wait this long on Tansu
                                    # before new commands are seen (streams/kafka_transport.py)
                                    fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        await consumer.start()
        inflight: dict[TopicPartition, list[tuple[int, asyncio.Task[Any]]]] = {}
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                for tp, records in batch.items():
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
            await consumer.commit(commit)
