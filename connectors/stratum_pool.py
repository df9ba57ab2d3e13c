"""The local Stratum v1 pool (seed 003's pool for internet outages) and its accounting.

``StratumPool`` speaks line-delimited JSON-RPC over TCP: ``mining.subscribe``,
``mining.authorize``, ``mining.configure`` (BIP 310 version rolling, which AsicBoost
firmwares ask for), ``mining.extranonce.subscribe``, ``mining.set_difficulty`` and
``mining.notify`` (pushed), ``mining.submit``.

Every submission is checked as a pool checks work: the coinbase is rebuilt from the job's
two halves and the session's extranonces, the merkle root from its branch, the 80-byte
header from the job's version (with the rolled bits), previous hash, time, bits and the
share's nonce; its double SHA-256 must be at or below the target of the session's
difficulty (difficulty 1 is ``0xffff * 2**208``).  The standard Stratum error codes:
an unknown or stale job is 21, a repeated submission 22, a hash above the target 23, a
malformed submission 20.  The memory of submitted shares is kept per job and dropped with
the job, so it stays bounded however long the pool runs.

The pool keeps miners hashing while the internet is gone; it does not build blocks or pay
out, so its jobs carry a random previous hash and a coinbase paying to ``OP_RETURN``.

``LocalPool`` listens on ``HASHPLANE_LOCAL_POOL_BIND`` (every interface by default: the
ASICs must reach it) at the port of ``HASHPLANE_LOCAL_POOL_URL``, which is the address
failover hands the miners, and publishes its accounting as ``shares`` events every
``report_s`` per worker (accepted; stale = code 21; rejected = 22 and 23; difficulty
summed).  Shares are counted once: the ASIC connector does not publish share deltas for a
miner whose active pool is the local pool (``AsicTelemetry(local_pool_url=)``), so the pool
is the only source for the work it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

import orjson

from connectors.base import Emitter
from schemas.events import ShareCountsObserved

log = logging.getLogger(__name__)
SOURCE = "pool:local"
ShareHook = Any  # Callable[[str, str, float], None]: worker, outcome, difficulty

DIFF1_TARGET = 0xFFFF << 208  # the target of difficulty 1 ("pool difficulty")
JOBS_KEPT = 4  # a job older than the last four is stale (21)
EXTRANONCE2_SIZE = 4
VERSION_ROLLING_MASK = 0x1FFFE000  # BIP 320's general-purpose version bits


def parse_pool_url(url: str) -> tuple[str, int] | None:
    """host and port of ``stratum+tcp://host:port``, or None when there is none."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def swap32(data: bytes) -> bytes:
    """Reverse the bytes of each 4-byte word (Stratum sends the previous hash this way)."""
    return b"".join(data[i:i + 4][::-1] for i in range(0, len(data), 4))


@dataclass(frozen=True)
class Job:
    """One ``mining.notify``: the fields a share is checked against, as Stratum sends them."""

    job_id: str
    prevhash: str  # 32 bytes, each 4-byte word byte-swapped
    coinb1: str
    coinb2: str
    branch: tuple[str, ...]  # merkle branch, internal byte order
    version: str  # big-endian hex, as are nbits and ntime
    nbits: str
    ntime: str

    def notify_params(self, clean: bool) -> list[Any]:
        return [self.job_id, self.prevhash, self.coinb1, self.coinb2, list(self.branch),
                self.version, self.nbits, self.ntime, clean]

    def header(self, extranonce1: str, extranonce2: str, ntime: str, nonce: str,
               version_bits: int | None = None) -> bytes:
        """The 80-byte block header of a share (raises ValueError on bad hex)."""
        coinbase = bytes.fromhex(self.coinb1 + extranonce1 + extranonce2 + self.coinb2)
        version = int(self.version, 16)
        if version_bits is not None:
            version = (version & ~VERSION_ROLLING_MASK) | (version_bits & VERSION_ROLLING_MASK)
        return block_header(version, self.prevhash,
                            merkle_root(sha256d(coinbase), self.branch), ntime, self.nbits,
                            nonce)


def merkle_root(coinbase_hash: bytes, branch: tuple[str, ...] | list[str]) -> bytes:
    """The merkle root from the coinbase's hash and the job's branch (internal order)."""
    root = coinbase_hash
    for h in branch:
        root = sha256d(root + bytes.fromhex(h))
    return root


def block_header(version: int, prevhash: str, root: bytes, ntime: str, nbits: str,
                 nonce: str) -> bytes:
    """80 bytes from Stratum's fields: big-endian hex numbers, the word-swapped prevhash."""
    return (struct.pack("<I", version) + swap32(bytes.fromhex(prevhash)) + root
            + bytes.fromhex(ntime)[::-1] + bytes.fromhex(nbits)[::-1]
            + bytes.fromhex(nonce)[::-1])


def header_value(header: bytes) -> int:
    """The header's hash as the number compared with a target."""
    return int.from_bytes(sha256d(header), "little")


def meets(value: int, difficulty: float) -> bool:
    """Whether a hash is at or below the target of ``difficulty`` (exact, no float)."""
    return value * Fraction(difficulty) <= DIFF1_TARGET


def _push(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def new_job(height: int, now: float) -> Job:
    """A job of the local pool: random previous hash, a coinbase paying to OP_RETURN."""
    tag = _push(b"/hashplane-local/")
    script_len = len(_push(height.to_bytes(3, "little"))) + 1 + 4 + EXTRANONCE2_SIZE + len(tag)
    coinb1 = (struct.pack("<I", 1) + b"\x01" + bytes(32) + b"\xff\xff\xff\xff"
              + bytes([script_len]) + _push(height.to_bytes(3, "little"))
              + bytes([4 + EXTRANONCE2_SIZE]))
    coinb2 = (tag + b"\xff\xff\xff\xff" + b"\x01" + bytes(8) + _push(b"\x6a")
              + bytes(4))
    return Job(job_id=secrets.token_hex(4), prevhash=secrets.token_hex(32),
               coinb1=coinb1.hex(), coinb2=coinb2.hex(), branch=(), version="20000000",
               nbits="1d00ffff", ntime=f"{int(now) & 0xFFFFFFFF:08x}")


def _hex_of(value: str, size: int) -> bool:
    if len(value) != 2 * size:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


@dataclass
class PoolStats:
    accepted: int = 0
    rejected: int = 0
    by_worker: dict[str, list[int]] = field(default_factory=dict)  # worker -> [acc, rej]


@dataclass
class _Session:
    extranonce1: str = field(default_factory=lambda: secrets.token_hex(4))
    worker: str = ""
    version_rolling: bool = False


class StratumPool:
    """Serve Stratum v1 on host:port; ``cut()`` drops everyone and stops listening."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0, difficulty: float = 65536.0,
                 job_interval_s: float = 30.0, on_share: ShareHook | None = None):
        self.host, self.port = host, port
        self.on_share = on_share
        self.difficulty = difficulty
        self.job_interval_s = job_interval_s
        self.stats = PoolStats()
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        # job id -> (job, the shares submitted for it): a job's memory goes with the job
        self._jobs: OrderedDict[str, tuple[Job, set[tuple[str, ...]]]] = OrderedDict()
        self._height = 0
        self._job_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"stratum+tcp://{self.host}:{self.port}"

    @property
    def remembered(self) -> int:
        """Submitted shares held for the duplicate check (bounded by the jobs kept)."""
        return sum(len(seen) for _, seen in self._jobs.values())

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.new_job()
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

    def new_job(self) -> Job:
        """Start a new job; the oldest beyond ``JOBS_KEPT`` is forgotten with its shares."""
        self._height += 1
        job = new_job(self._height, time.time())
        self._jobs[job.job_id] = (job, set())
        while len(self._jobs) > JOBS_KEPT:
            self._jobs.popitem(last=False)
        return job

    def current(self) -> Job:
        return next(reversed(self._jobs.values()))[0]

    async def _jobs_loop(self) -> None:
        while True:
            await asyncio.sleep(self.job_interval_s)
            params = self.new_job().notify_params(clean=True)
            for w in list(self._clients):
                self._send(w, None, "mining.notify", params)

    @staticmethod
    def _send(w: asyncio.StreamWriter, msg_id: Any, method: str | None = None,
              params: Any = None, result: Any = None, error: Any = None) -> None:
        msg = ({"id": msg_id, "method": method, "params": params} if method is not None
               else {"id": msg_id, "result": result, "error": error})
        with contextlib.suppress(Exception):
            w.write(json.dumps(msg).encode() + b"\n")

    async def _client(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._clients.add(w)
        s = _Session()
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
                    if not isinstance(params, list):
                        raise TypeError(params)
                except (ValueError, KeyError, TypeError):
                    self._send(w, None, result=None, error=[20, "Other/Unknown: bad JSON", None])
                    continue
                if method == "mining.subscribe":
                    self._send(w, mid, result=[[["mining.set_difficulty", s.extranonce1],
                                                ["mining.notify", s.extranonce1]],
                                               s.extranonce1, EXTRANONCE2_SIZE])
                elif method == "mining.configure":
                    asked = params[0] if params and isinstance(params[0], list) else []
                    s.version_rolling = "version-rolling" in asked
                    self._send(w, mid, result={"version-rolling": s.version_rolling} | (
                        {"version-rolling.mask": f"{VERSION_ROLLING_MASK:08x}"}
                        if s.version_rolling else {}))
                elif method == "mining.authorize":
                    s.worker = str(params[0]) if params else ""
                    self._send(w, mid, result=bool(s.worker))
                    self._send(w, None, "mining.set_difficulty", [self.difficulty])
                    self._send(w, None, "mining.notify", self.current().notify_params(True))
                elif method == "mining.extranonce.subscribe":
                    self._send(w, mid, result=True)  # the extranonce never changes here
                elif method == "mining.submit":
                    self._submit(w, mid, params, s)
                else:
                    self._send(w, mid, result=None, error=[20, f"Unknown method {method}", None])
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(w)
            w.close()

    def check(self, params: list[Any], s: _Session) -> list[Any] | None:
        """The Stratum error of a submission, or None when the share is good (and new)."""
        if len(params) < 5 or not all(isinstance(p, str) for p in params[:6]):
            return [20, "Other/Unknown: bad params", None]
        _name, job_id, en2, ntime, nonce = params[:5]
        bits = params[5] if len(params) > 5 else None
        if not (_hex_of(en2, EXTRANONCE2_SIZE) and _hex_of(ntime, 4) and _hex_of(nonce, 4)
                and (bits is None or _hex_of(bits, 4))):
            return [20, "Other/Unknown: malformed extranonce2, ntime, nonce or version", None]
        if bits is not None and not s.version_rolling:
            return [20, "Other/Unknown: version rolling was not configured", None]
        entry = self._jobs.get(job_id)
        if entry is None:
            return [21, "Job not found", None]
        job, seen = entry
        key = (s.extranonce1, en2.lower(), ntime.lower(), nonce.lower(), (bits or "").lower())
        if key in seen:
            return [22, "Duplicate share", None]
        header = job.header(s.extranonce1, en2, ntime, nonce,
                            int(bits, 16) if bits is not None else None)
        if not meets(header_value(header), self.difficulty):
            return [23, "Low difficulty share", None]
        seen.add(key)
        return None

    def _submit(self, w: asyncio.StreamWriter, mid: Any, params: list[Any], s: _Session) -> None:
        name = str(params[0]) if params else ""
        if not s.worker or name != s.worker:  # and no memory for names nobody authorized
            self._send(w, mid, result=None, error=[24, "Unauthorized worker", None])
            return
        counts = self.stats.by_worker.setdefault(s.worker, [0, 0])
        error = self.check(params, s)
        if error:
            self.stats.rejected += 1
            counts[1] += 1
            self._send(w, mid, result=None, error=error)
            if self.on_share:
                self.on_share(s.worker, "stale" if error[0] == 21 else "rejected",
                              self.difficulty)
            return
        self.stats.accepted += 1
        counts[0] += 1
        self._send(w, mid, result=True)
        if self.on_share:
            self.on_share(s.worker, "accepted", self.difficulty)


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

    host: str  # the address the miners are given (HASHPLANE_LOCAL_POOL_URL's)
    port: int
    emitter: Emitter
    report_s: float = 5.0
    difficulty: float = 65536.0
    bind: str = "0.0.0.0"  # where it listens (HASHPLANE_LOCAL_POOL_BIND)
    tallies: dict[str, Tally] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pool = StratumPool(self.bind, self.port, self.difficulty, on_share=self.count)

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
            log.error("local Stratum pool cannot listen on %s:%s: %s", self.bind, self.port,
                      exc)
            self.emitter.error(f"cannot listen on {self.bind}:{self.port}: {exc}")
            await stop.wait()
            return
        log.info("local Stratum pool on %s:%s (miners are given %s, difficulty %g)",
                 self.bind, self.pool.port, self.url, self.difficulty)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.report_s)
                await self.report()
        finally:
            await self.pool.stop()
