"""The local Stratum v1 pool (seed 003's pool for internet outages) and its accounting.

``StratumPool`` speaks line-delimited JSON-RPC over TCP: ``mining.subscribe``,
``mining.authorize``, ``mining.set_difficulty`` and ``mining.notify`` (pushed),
``mining.submit``.  Submissions are checked against the current jobs: an unknown or stale
job is error 21, a repeated submission 22, a share below the difficulty 23 (the standard
Stratum error codes).  Work validity is not hashed here: a submission's ``nonce`` is trusted
to meet the difficulty unless it is ``ffffffff`` (what a miner's below-target share carries
in the simulated farm); the pool keeps miners hashing, it does not pay out.

``LocalPool`` runs it at ``HASHPLANE_LOCAL_POOL_URL`` and publishes its accounting as
``shares`` events every ``report_s`` per worker (accepted; stale = code 21; rejected = 22 and
23; difficulty summed).  Shares are counted once: the ASIC connector does not publish share
deltas for a miner whose active pool is the local pool (``AsicTelemetry(local_pool_url=)``),
so the pool is the only source for the work it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from connectors.base import Emitter
from schemas.events import ShareCountsObserved

log = logging.getLogger(__name__)
SOURCE = "pool:local"
ShareHook = Any  # Callable[[str, str, float], None]: worker, outcome, difficulty


def parse_pool_url(url: str) -> tuple[str, int] | None:
    """host and port of ``stratum+tcp://host:port``, or None when there is none."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)



@dataclass
class PoolStats:
    accepted: int = 0
    rejected: int = 0
    by_worker: dict[str, list[int]] = field(default_factory=dict)  # worker -> [acc, rej]


class StratumPool:
    """Serve Stratum v1 on host:port; ``cut()`` drops everyone and stops listening."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, difficulty: float = 65536.0,
                 job_interval_s: float = 30.0, on_share: ShareHook | None = None):
        self.host, self.port = host, port
        self.on_share = on_share
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
                try:
                    line = await reader.readline()
                except ValueError:  # a line past the reader's 64 KiB limit: not Stratum
                    break
                if not line:
                    break
                try:
                    msg = orjson.loads(line)
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
            if self.on_share:
                self.on_share(name or worker, "stale" if error[0] == 21 else "rejected",
                              self.difficulty)
            return
        self._seen.add((job, en2, ntime, nonce))
        self.stats.accepted += 1
        counts[0] += 1
        self._send(w, mid, result=True)
        if self.on_share:
            self.on_share(name or worker, "accepted", self.difficulty)




@dataclass
class Tally:
    """One worker's shares since the last report."""

    accepted: int = 0
    rejected: int = 0
    stale: int = 0
    diff_accepted: float = 0.0
    diff_rejected: float = 0.0
    since: datetime | None = None


@dataclass
class LocalPool:
    """The local pool as a service: serve Stratum, publish its accounting as ``shares``."""

    host: str
    port: int
    emitter: Emitter
    report_s: float = 5.0
    difficulty: float = 65536.0
    tallies: dict[str, Tally] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pool = StratumPool(self.host, self.port, self.difficulty, on_share=self.count)

    @property
    def url(self) -> str:
        return f"stratum+tcp://{self.host}:{self.pool.port}"

    def count(self, worker: str, outcome: str, difficulty: float) -> None:
        t = self.tallies.setdefault(worker, Tally(since=self.emitter.clock()))
        if outcome == "accepted":
            t.accepted += 1
            t.diff_accepted += difficulty
        elif outcome == "stale":
            t.stale += 1
        else:
            t.rejected += 1
            t.diff_rejected += difficulty

    async def report(self) -> None:
        """Publish and reset every worker's tally."""
        now = self.emitter.clock()
        tallies, self.tallies = self.tallies, {}
        await self.emitter.emit([ShareCountsObserved(
            site=self.emitter.site, device_id=worker or "unknown", ts=now, source=SOURCE,
            worker=worker or "unknown", pool=self.url, accepted=t.accepted,
            rejected=t.rejected, stale=t.stale, difficulty_accepted=t.diff_accepted,
            difficulty_rejected=t.diff_rejected,
            interval_s=max(0.0, (now - (t.since or now)).total_seconds()))
            for worker, t in sorted(tallies.items())])

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.pool.start()
        except OSError as exc:
            # Not fatal for the site: failover still points miners here; the miners'
            # dead-pool state and the alerts show it.  The operator sees why in the log.
            log.error("local Stratum pool cannot listen on %s:%s: %s", self.host, self.port,
                      exc)
            self.emitter.error(f"cannot listen on {self.host}:{self.port}: {exc}")
            await stop.wait()
            return
        log.info("local Stratum pool on %s", self.url)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.report_s)
                await self.report()
        finally:
            await self.pool.stop()
