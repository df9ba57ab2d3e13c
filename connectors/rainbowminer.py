"""RainbowMiner rigs: HTTP API -> ``gpu.telemetry`` and ``shares``; log -> ``miner.events``.

``/devices`` gives each GPU's Data block (temperature, power, power limit, clocks, fan) and
``/minerstats`` each GPU's miner, live speed and Stratum counters; share deltas per GPU come
from those cumulative counters (a miner restart resets them and is flagged).  The rig's log
is tailed for the lines RainbowMiner writes when it restarts a miner (too many rejected
shares, stale shares, a new start).  Parsing is pure; what does not parse goes to ``dlq``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from connectors.base import ConnectorError, Emitter, ReplyError, every, fetch, load_json
from connectors.shares import Counters, share_delta
from schemas.envelope import Event
from schemas.events import GpuTelemetryObserved, MinerEventObserved

SOURCE = "connector:rainbowminer"

#: log line pattern -> miner event type (first match wins)
LOG_EVENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bStart miner\b", re.I), "restart"),
    (re.compile(r"too many rejected shares", re.I), "too_many_rejected"),
    (re.compile(r"stale shares?.*restart|restart.*stale shares?", re.I), "stale_restart"),
    (re.compile(r"\b(crash|exited unexpectedly|not responding)\b", re.I), "crashed"),
)
_LOG_LINE = re.compile(r"^\[(?P<ts>[^\]]+)\]\s+(?P<level>\w+):\s+(?P<msg>.*)$")
_GPU = re.compile(r"GPU#(\d+)")


class RigPayloadError(ValueError):
    """An API answer that is not what RainbowMiner sends."""


@dataclass(frozen=True)
class RigEndpoint:
    rig_id: str
    api_url: str
    log_path: str = ""


def worker_name(rig_id: str, index: int) -> str:
    """The worker name of one GPU (what its shares are counted under)."""
    return f"{rig_id}-gpu{index}"


def _f(v: Any, name: str) -> float:
    if isinstance(v, bool) or v is None:
        raise RigPayloadError(f"{name}: missing or not a number ({v!r})")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RigPayloadError(f"{name}: not a number ({v!r})") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise RigPayloadError(f"{name}: not finite")
    return f


def parse_rig(devices: Any, stats: Any, rig: RigEndpoint, *, site: str,
              ts: datetime) -> tuple[list[GpuTelemetryObserved], dict[int, Counters]]:
    """Telemetry per GPU and each GPU's cumulative share counters."""
    if not isinstance(devices, list) or not isinstance(stats, list):
        raise RigPayloadError("/devices and /minerstats must be JSON lists")
    per_dev = {}
    for s in stats:
        if isinstance(s, dict) and isinstance(s.get("Device"), str):
            per_dev[s["Device"]] = s
    tel: list[GpuTelemetryObserved] = []
    counts: dict[int, Counters] = {}
    for d in devices:
        if not isinstance(d, dict) or d.get("Type", "Gpu") != "Gpu":
            continue
        name = str(d.get("Name", ""))
        m = _GPU.fullmatch(name)
        if m is None:
            raise RigPayloadError(f"device name {name!r} is not GPU#nn")
        index = int(m.group(1))
        data = d.get("Data")
        if not isinstance(data, dict):
            raise RigPayloadError(f"{name}: no Data block")
        s = per_dev.get(name, {})
        speed = s.get("Speed_Live", 0) or 0
        tel.append(GpuTelemetryObserved(
            site=site, device_id=worker_name(rig.rig_id, index), ts=ts, source=SOURCE,
            rig_id=rig.rig_id, gpu_index=index, card=str(d.get("Model_Name") or d.get("Model")),
            algorithm=str(s.get("Algorithm", "")), miner=str(s.get("Name", "")),
            hashrate_mhs=max(0.0, _f(speed, "Speed_Live") / 1e6),
            power_w=max(0.0, _f(data.get("PowerDraw"), "PowerDraw")),
            power_limit_w=max(0.0, _f(data.get("PowerLimit"), "PowerLimit")),
            temp_c=_f(data.get("Temperature"), "Temperature"),
            core_clock_mhz=max(0.0, _f(data.get("Clock", 0), "Clock")),
            mem_clock_mhz=max(0.0, _f(data.get("ClockMem", 0), "ClockMem")),
            fan_pct=min(100.0, max(0.0, _f(data.get("FanSpeed", 0), "FanSpeed"))),
            utilization_pct=min(100.0, max(0.0, _f(data.get("Utilization", 0),
                                                   "Utilization")))))
        st = s.get("Stratum")
        if isinstance(st, dict):
            counts[index] = Counters(
                accepted=max(0, int(_f(st.get("Accepted", 0), "Accepted"))),
                rejected=max(0, int(_f(st.get("Rejected", 0), "Rejected"))),
                stale=max(0, int(_f(st.get("Stale", 0), "Stale"))), diff_accepted=0.0,
                diff_rejected=0.0, elapsed_s=0, ts=ts,
                worker=worker_name(rig.rig_id, index), pool="")
    return tel, counts


def parse_log_line(line: str, rig: RigEndpoint, *, site: str,
                   ts: datetime) -> MinerEventObserved | None:
    """A miner event from one RainbowMiner log line, or None for lines that are not one."""
    m = _LOG_LINE.match(line.strip())
    if m is None:
        return None
    msg = m.group("msg")
    for pattern, kind in LOG_EVENTS:
        if pattern.search(msg):
            gpu = _GPU.search(msg)
            worker = worker_name(rig.rig_id, int(gpu.group(1))) if gpu else rig.rig_id
            miner = re.search(r"\b(\w+-[\w-]+)\b", msg)
            return MinerEventObserved(site=site, device_id=worker, ts=ts, source=SOURCE,
                                      worker=worker, miner=miner.group(1) if miner else "",
                                      event_type=kind, message=msg[:4096])
    return None


class RainbowMinerRigs:
    """Poll each rig's API and tail its log every ``period_s``."""

    def __init__(self, rigs: list[RigEndpoint], emitter: Emitter, *, period_s: float = 5.0,
                 timeout_s: float = 3.0):
        self.rigs, self.emitter = rigs, emitter
        self.period_s, self.timeout_s = period_s, timeout_s
        self.prev: dict[str, Counters] = {}
        self.log_offsets: dict[str, int] = {}

    async def read_rig(self, client: httpx.AsyncClient, rig: RigEndpoint) -> list[Event]:
        b1 = b2 = b""
        try:
            s1, b1 = await fetch(client, "GET", f"{rig.api_url}/devices",
                                 timeout=self.timeout_s)
            s2, b2 = await fetch(client, "GET", f"{rig.api_url}/minerstats",
                                 timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            self.emitter.error(ConnectorError(f"{rig.rig_id}: {exc!r}"))
            return []
        except ReplyError as exc:
            await self.emitter.dead(f"{rig.api_url}/devices+minerstats", b1[:2048], str(exc),
                                    key=rig.rig_id)
            return []
        ts = self.emitter.clock()
        try:
            if s1 != 200 or s2 != 200:
                raise RigPayloadError(f"HTTP {s1}/{s2}")
            tel, counts = parse_rig(load_json(b1), load_json(b2), rig, site=self.emitter.site,
                                    ts=ts)
        except Exception as exc:  # noqa: BLE001 - whatever a rig sends is its fault
            await self.emitter.dead(f"{rig.api_url}/devices+minerstats",
                                    b1[:2048] + b"\n" + b2[:2048], f"{exc}"[:2000],
                                    key=rig.rig_id)
            return []
        events: list[Event] = list(tel)
        for index, cur in counts.items():
            key = worker_name(rig.rig_id, index)
            d = share_delta(self.prev.get(key), cur, device_id=key, site=self.emitter.site,
                            source=SOURCE)
            self.prev[key] = cur
            if d is not None and (d.accepted or d.rejected or d.stale or d.counter_reset):
                events.append(d)
        events += self._tail(rig, ts)
        return events

    def _tail(self, rig: RigEndpoint, ts: datetime) -> list[Event]:
        if not rig.log_path:
            return []
        path = Path(rig.log_path)
        try:
            size = path.stat().st_size
            start = self.log_offsets.get(rig.rig_id)
            if start is None or size < start:  # first look, or the log was rotated
                start = size if start is None else 0
            with path.open("rb") as f:
                f.seek(start)
                chunk = f.read(1 << 20)
        except OSError:
            return []
        text, _, _ = chunk.decode("utf-8", "replace").rpartition("\n")
        self.log_offsets[rig.rig_id] = start + len(text.encode()) + (1 if text else 0)
        out: list[Event] = []
        for line in text.splitlines():
            ev = parse_log_line(line, rig, site=self.emitter.site, ts=ts)
            if ev is not None:
                out.append(ev)
        return out

    async def sweep(self, client: httpx.AsyncClient) -> None:
        results = await asyncio.gather(*(self.read_rig(client, r) for r in self.rigs),
                                       return_exceptions=True)
        events: list[Event] = []
        for rig, r in zip(self.rigs, results, strict=True):
            if isinstance(r, BaseException):  # one rig never fails the sweep
                self.emitter.error(f"{rig.rig_id}: {type(r).__name__}: {r}")
            else:
                events += r
        await self.emitter.emit(events)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient() as client:
            async def tick() -> None:
                await self.sweep(client)
            await every(self.period_s, stop, tick)


def rigs_from(endpoints: dict[str, Any]) -> list[RigEndpoint]:
    return [RigEndpoint(str(r["id"]), str(r["api_url"]), str(r.get("log_path", "")))
            for r in endpoints.get("rigs", [])]


