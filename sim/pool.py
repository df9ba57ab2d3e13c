"""The simulated farm's upstream (internet) pool: a small Stratum v1 server of its own.

It is written from the protocol, not taken from hashplane's local pool
(connectors/stratum_pool.py), so a test can set one against the other.  Line-delimited
JSON-RPC: ``mining.subscribe``, ``mining.authorize`` (answered with ``set_difficulty`` and
a ``notify``), ``mining.submit`` checked against the recent jobs (21 job not found, 22
duplicate, 23 low difficulty for the simulated miners' below-target marker nonce
``ffffffff``).  ``cut()`` is the internet going away: everyone is dropped and nothing
listens until ``restore()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from typing import Any

JOBS_KEPT = 4
LOW_NONCE = "ffffffff"


class UpstreamPool:
    """Stratum v1 on ``host:port`` (port 0: any free one, fixed after ``start``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, difficulty: float = 65536.0,
                 job_interval_s: float = 30.0) -> None:
        self.host, self.port = host, port
        self.difficulty = difficulty
        self.job_interval_s = job_interval_s
        self.accepted = 0
        self.refused = 0
        self._jobs: deque[str] = deque(maxlen=JOBS_KEPT)
        self._submitted: set[tuple[str, ...]] = set()
        self._server: asyncio.Server | None = None
        self._peers: set[asyncio.StreamWriter] = set()
        self._ticker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"stratum+tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        await self.restore()
        self._jobs.append(secrets.token_hex(4))
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.cut()

    async def cut(self) -> None:
        """The path to the pool is gone: stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._peers):
            w.close()
        self._peers.clear()

    async def restore(self) -> None:
        """Listen again (on the same port)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.job_interval_s)
            self._jobs.append(secrets.token_hex(4))
            self._submitted = {s for s in self._submitted if s[0] in self._jobs}
            for w in list(self._peers):
                _say(w, {"id": None, "method": "mining.notify", "params": self._job()})

    def _job(self) -> list[Any]:
        # job id, prevhash, coinbase 1/2, merkle branches, version, nbits, ntime, clean
        return [self._jobs[-1], "00" * 32, "01000000", "ffffffff", [], "20000000",
                "1703a30c", "6553f100", True]

    async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._peers.add(w)
        user = ""
        try:
            async for line in reader:
                try:
                    req = json.loads(line)
                    method, params, rid = req["method"], req.get("params") or [], req.get("id")
                except (ValueError, KeyError, TypeError):
                    continue
                if method == "mining.subscribe":
                    en1 = secrets.token_hex(4)
                    _say(w, {"id": rid, "result": [[["mining.notify", en1]], en1, 4],
                             "error": None})
                elif method == "mining.authorize":
                    user = str(params[0]) if params else ""
                    _say(w, {"id": rid, "result": bool(user), "error": None})
                    _say(w, {"id": None, "method": "mining.set_difficulty",
                             "params": [self.difficulty]})
                    _say(w, {"id": None, "method": "mining.notify", "params": self._job()})
                elif method == "mining.submit":
                    error = self._check([str(p) for p in params[1:5]])
                    if error is None:
                        self.accepted += 1
                    else:
                        self.refused += 1
                    _say(w, {"id": rid, "result": error is None, "error": error})
                await w.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            self._peers.discard(w)
            w.close()

    def _check(self, share: list[str]) -> list[Any] | None:
        if len(share) < 4:
            return [20, "Other/Unknown", None]
        job, nonce = share[0], share[3]
        if job not in self._jobs:
            return [21, "Job not found", None]
        if tuple(share) in self._submitted:
            return [22, "Duplicate share", None]
        if nonce.lower() == LOW_NONCE:
            return [23, "Low difficulty share", None]
        self._submitted.add(tuple(share))
        return None


def _say(w: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        w.write(json.dumps(msg).encode() + b"\n")


def pool_address(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``stratum+tcp://host:port[/...]``; None when it names none."""
    netloc = url.partition("://")[2] or url
    host, sep, port = netloc.partition("/")[0].rpartition(":")
    return (host, int(port)) if sep and host and port.isdigit() else None
