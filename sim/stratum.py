"""The simulated miners' Stratum side: ``MinerSession``, a miner's real session to a pool
(the farm's upstream pool, sim/pool.py, or hashplane's local pool after a failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import Any

from sim.pool import pool_address
from sim.work import feasible, search

log = logging.getLogger(__name__)


class MinerSession:
    """A simulated miner's Stratum v1 session to its active pool.

    Shares the miner produced while the session is open (``asic.pending``) are submitted;
    the pool's answer is what counts: accepted, rejected (21 stale, 22 duplicate, 23 low
    difficulty).  A refused or dropped connection marks the pool dead so the miner fails
    over, as cgminer does.
    """

    def __init__(self, asic: Any, pool_index: int, clock: Any, connect_timeout_s: float = 3.0):
        self.asic = asic
        self.pool_index = pool_index
        self.clock = clock
        self.connect_timeout_s = connect_timeout_s
        self.difficulty = 1.0
        self.job = ""
        self.old_job = ""
        self.notify: list[Any] = []
        self.extranonce1 = ""
        self.en2_size = 4
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=2)

    async def _run(self) -> None:
        a, slot = self.asic, self.asic.pools[self.pool_index]
        where = pool_address(slot.url)
        try:
            if where is None:
                raise OSError(f"no endpoint in {slot.url}")
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*where),
                                                    self.connect_timeout_s)
        except (OSError, TimeoutError):
            slot.alive = False
            a.active_pool = a._pick_pool()
            a.live_pool = None
            return
        pending_ids: dict[int, str] = {}
        next_id = 3
        try:
            writer.write(json.dumps({"id": 1, "method": "mining.subscribe",
                                     "params": ["hashplane-sim/1.0"]}).encode() + b"\n")
            writer.write(json.dumps({"id": 2, "method": "mining.authorize",
                                     "params": [slot.user, slot.password]}).encode() + b"\n")
            await writer.drain()
            a.live_pool = self.pool_index
            reader_task = asyncio.create_task(self._read(reader, pending_ids))
            while not reader_task.done():
                if a.live_pool != self.pool_index or a.active_pool != self.pool_index:
                    break
                a.advance(self.clock())
                while a.pending and self.job:
                    kind = a.pending.pop(0)
                    # A stale share names a job the pool has already dropped.
                    job = f"stale{secrets.token_hex(2)}" if kind == "stale" else self.job
                    work = self._work(kind)
                    pending_ids[next_id] = kind
                    writer.write(json.dumps({
                        "id": next_id, "method": "mining.submit",
                        "params": [slot.user, job, *work],
                    }).encode() + b"\n")
                    next_id += 1
                await writer.drain()
                await asyncio.sleep(0.2)
            reader_task.cancel()
            if reader_task.done() and not reader_task.cancelled() and reader_task.exception():
                raise ConnectionError(str(reader_task.exception()))
            if reader_task.done() and a.live_pool == self.pool_index:
                raise ConnectionError("pool closed the connection")
        except (OSError, ConnectionError):
            slot.alive = False
            a.active_pool = a._pick_pool()
        finally:
            if a.live_pool == self.pool_index:
                a.live_pool = None
            writer.close()

    def _work(self, kind: str) -> list[str]:
        """extranonce2, ntime and nonce of a share: found for real where the target allows
        (a good share meets it, a low one misses it), else a random nonce, or the marker
        ``ffffffff`` of a low share, which the simulator's upstream pool goes by."""
        if self.notify and self.extranonce1 and feasible(self.difficulty):
            found = search(self.notify, self.extranonce1, self.en2_size, self.difficulty,
                           good=kind != "low")
            if found is not None:
                return list(found)
        ntime = str(self.notify[7]) if self.notify else "6553f100"
        return [secrets.token_hex(self.en2_size), ntime,
                "ffffffff" if kind == "low" else secrets.token_hex(4)]

    async def _read(self, reader: asyncio.StreamReader, pending_ids: dict[int, str]) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            method = msg.get("method")
            if method == "mining.set_difficulty":
                self.difficulty = float(msg["params"][0])
                self.asic.pools[self.pool_index].difficulty = self.difficulty
            elif method == "mining.notify":
                self.old_job, self.job = self.job, str(msg["params"][0])
                self.notify = list(msg["params"])
            elif msg.get("id") == 1 and isinstance(msg.get("result"), list):
                with contextlib.suppress(IndexError, TypeError, ValueError):
                    self.extranonce1, self.en2_size = str(msg["result"][1]), int(msg["result"][2])
            elif msg.get("id") in pending_ids:
                kind = pending_ids.pop(msg["id"])
                err = msg.get("error")
                if msg.get("result") is True:
                    outcome = "accepted"
                elif (err and err[0] == 21) or kind == "stale":
                    outcome = "stale"
                else:
                    outcome = "rejected"
                self.asic.record(self.pool_index, outcome, self.difficulty, self.clock())
