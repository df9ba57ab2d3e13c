"""A Stratum v1 pool server (the farm's upstream pool, reached over the uplink).

Line-delimited JSON-RPC over TCP: ``mining.subscribe``, ``mining.authorize``,
``mining.set_difficulty`` and ``mining.notify`` (pushed), ``mining.submit``.  Submissions are
checked against the current jobs: an unknown or stale job is error 21, a repeated nonce 22,
a share below the difficulty 23 (the standard Stratum error codes).  Work validity is
simulated: a submission's ``nonce`` is trusted to meet the difficulty unless it is
``ffffffff`` (what the simulated miner sends for a share below target).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    accepted: int = 0
    rejected: int = 0
    by_worker: dict[str, list[int]] = field(default_factory=dict)  # worker -> [acc, rej]


class StratumPool:
    """Serve Stratum v1 on host:port; ``cut()`` drops everyone and stops listening."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, difficulty: float = 65536.0,
                 job_interval_s: float = 30.0):
        self.host, self.port = host, port
        self.difficulty = difficulty
        self.job_interval_s = job_interval_s
        self.stats = PoolStats()
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._jobs: list[str] = []
        self._seen: set[tuple[str, str, str, str]] = set()
        self._job_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"stratum+tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._new_job()
        self._job_task = asyncio.create_task(self._jobs_loop())

    async def stop(self) -> None:
        if self._job_task:
            self._job_task.cancel()
        await self._close()

    async def cut(self) -> None:
        """The path to the pool is gone: stop listening and drop every connection."""
        await self._close()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                      reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._clients):
            w.close()
        self._clients.clear()

    def _new_job(self) -> str:
        job = secrets.token_hex(4)
        self._jobs = [*self._jobs[-3:], job]
        return job

    async def _jobs_loop(self) -> None:
        while True:
            await asyncio.sleep(self.job_interval_s)
            job = self._new_job()
            for w in list(self._clients):
                self._send(w, None, "mining.notify", self._notify_params(job, clean=True))

    def _notify_params(self, job: str, clean: bool) -> list[Any]:
        return [job, "00" * 32, "01000000", "ffffffff", [], "20000000", "1703a30c",
                "6553f100", clean]

    @staticmethod
    def _send(w: asyncio.StreamWriter, msg_id: Any, method: str | None = None,
              params: Any = None, result: Any = None, error: Any = None) -> None:
        msg = ({"id": msg_id, "method": method, "params": params} if method is not None
               else {"id": msg_id, "result": result, "error": error})
        with contextlib.suppress(Exception):
            w.write(json.dumps(msg).encode() + b"\n")

    async def _client(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._clients.add(w)
        worker = ""
        extranonce1 = secrets.token_hex(4)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                    method, params, mid = msg["method"], msg.get("params") or [], msg.get("id")
                except (ValueError, KeyError, TypeError):
                    self._send(w, None, result=None, error=[20, "Other/Unknown: bad JSON", None])
                    continue
                if method == "mining.subscribe":
                    self._send(w, mid, result=[[["mining.set_difficulty", extranonce1],
                                                ["mining.notify", extranonce1]], extranonce1, 4])
                elif method == "mining.authorize":
                    worker = str(params[0]) if params else ""
                    self._send(w, mid, result=bool(worker))
                    self._send(w, None, "mining.set_difficulty", [self.difficulty])
                    self._send(w, None, "mining.notify",
                               self._notify_params(self._jobs[-1], clean=True))
                elif method == "mining.submit":
                    self._submit(w, mid, params, worker)
                else:
                    self._send(w, mid, result=None, error=[20, f"Unknown method {method}", None])
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(w)
            w.close()

    def _submit(self, w: asyncio.StreamWriter, mid: Any, params: list[Any], worker: str) -> None:
        if len(params) < 5:
            self._send(w, mid, result=None, error=[20, "Other/Unknown: bad params", None])
            return
        name, job, en2, ntime, nonce = (str(p) for p in params[:5])
        counts = self.stats.by_worker.setdefault(name or worker, [0, 0])
        error = None
        if job not in self._jobs:
            error = [21, "Job not found", None]
        elif (job, en2, ntime, nonce) in self._seen:
            error = [22, "Duplicate share", None]
        elif nonce.lower() == "ffffffff":
            error = [23, "Low difficulty share", None]
        if error:
            self.stats.rejected += 1
            counts[1] += 1
            self._send(w, mid, result=None, error=error)
            return
        self._seen.add((job, en2, ntime, nonce))
        self.stats.accepted += 1
        counts[0] += 1
        self._send(w, mid, result=True)


def parse_pool_url(url: str) -> tuple[str, int] | None:
    """host and port of ``stratum+tcp://host:port``, or None when there is none."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


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
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=2)

    async def _run(self) -> None:
        a, slot = self.asic, self.asic.pools[self.pool_index]
        where = parse_pool_url(slot.url)
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
                    nonce = "ffffffff" if kind == "low" else secrets.token_hex(4)
                    pending_ids[next_id] = kind
                    writer.write(json.dumps({
                        "id": next_id, "method": "mining.submit",
                        "params": [slot.user, job, secrets.token_hex(4), "6553f100", nonce],
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
