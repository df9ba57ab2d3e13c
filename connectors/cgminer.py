"""ASIC telemetry over the CGMiner RPC (TCP 4028): transport, tolerant parsing, events.

hashplane uses its own small client rather than pyasic for the sweep: one multi-command
request per miner per sweep (``summary+pools+stats+power+config+version``) against pyasic's
identification plus six to eight requests per miner, which matters at 10,000 miners; pyasic
stays the independent reference in the tests.  Vendor JSON quirks are repaired the way
field tools do: NUL terminators, ``}{`` between objects, trailing commas, bare
``inf``/``nan``, and truncated replies closed at the last complete value.

Hostile replies are bounded: at most ``max_bytes`` are read (1 MiB by default, a real
multi-command reply is under 64 KiB), nesting past JSON's usual depth is refused by the
parser (orjson's limit of 1,024 levels, an error, not a crash), a large reply is parsed off
the event loop, and one miner's failure never fails a sweep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from connectors.base import Emitter, every
from connectors.shares import Counters, share_delta
from connectors.wire import exchange
from schemas.envelope import Event
from schemas.events import AsicState, AsicTelemetryObserved

SOURCE = "connector:asic"
READ = "summary+pools+stats+power+config+version"
MAX_REPLY_BYTES = 1 << 20
#: Replies larger than this are parsed in a worker thread (the repairs scan in Python).
THREAD_PARSE_BYTES = 64 << 10
#: A miner that hashes nothing and draws at most this is asleep (firmwares that do not say).
IDLE_W = 150.0

log = logging.getLogger(__name__)


class CgminerDecodeError(ValueError):
    """A reply that is not CGMiner JSON even after the usual repairs."""


class CgminerError(RuntimeError):
    """The miner answered ``STATUS: E`` (or could not be reached)."""


@dataclass(frozen=True)
class AsicEndpoint:
    """Where a miner answers, and what it speaks (an inventory entry, schemas/site.py)."""

    device_id: str
    host: str
    port: int = 4028
    dialect: str = "luxos"  # connectors/firmware: luxos | braiins | antminer | whatsminer
    web_port: int = 80
    username: str = ""  # the web/API login ("" = the firmware's factory login)
    password: str = ""
    nameplate_w: float | None = None
    model: str = ""  # the inventory's, for firmwares whose telemetry names none


# -- parsing (pure) ------------------------------------------------------------------------

_BARE_NUM = re.compile(r'(?<=[:\[,])\s*(-?inf(?:inity)?|nan)\s*(?=[,\]}])', re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_OBJ_SEQ = re.compile(r"}\s*{")


async def parse_reply_async(raw: bytes) -> dict[str, Any]:
    """``parse_reply``, off the event loop for a large reply (the repairs scan in Python)."""
    return await asyncio.to_thread(parse_reply, raw) if len(raw) > THREAD_PARSE_BYTES \
        else parse_reply(raw)


def parse_reply(raw: bytes) -> dict[str, Any]:
    """Parse a CGMiner reply, repairing the common vendor quirks; raise CgminerDecodeError."""
    text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    if not text:
        raise CgminerDecodeError("empty reply")
    for candidate in _repairs(text):
        try:
            obj = orjson.loads(candidate)
        except orjson.JSONDecodeError as exc:
            if "recursion" in str(exc).lower() or "depth limit" in str(exc).lower():
                raise CgminerDecodeError("reply nested too deep") from None
            continue
        if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj):
            merged: dict[str, Any] = {}
            for o in obj:
                merged.update(o)
            obj = merged
        if isinstance(obj, dict):
            return obj
        raise CgminerDecodeError(f"reply is JSON {type(obj).__name__}, not an object")
    raise CgminerDecodeError(f"not CGMiner JSON: {text[:80]!r}")


def _repairs(text: str) -> Iterator[str]:
    """The reply as it is, then ever more invasive repairs (computed only when needed)."""
    yield text
    fixed = _BARE_NUM.sub(" null", text)
    fixed = _OBJ_SEQ.sub("},{", fixed)
    fixed = _TRAILING_COMMA.sub(r"\1", fixed)
    yield fixed
    yield f"[{fixed}]"
    yield _close_truncated(fixed)


def _scan(text: str) -> tuple[list[str], bool, int]:
    """Closers still open, whether a string is open, and where the last complete value ends."""
    stack: list[str] = []
    in_str = esc = False
    last_safe = 0
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack:
                stack.pop()
            last_safe = i + 1
        elif ch == ",":
            last_safe = i
    return stack, in_str, last_safe


def _close_truncated(text: str) -> str:
    """Cut a truncated reply back to its last complete value and close what is open."""
    stack, in_str, last_safe = _scan(text)
    if not stack and not in_str:
        return text
    head = text[:last_safe].rstrip().rstrip(",")
    if head.endswith(":"):
        head += "null"
    return head + "".join(reversed(_scan(head)[0]))


def _section(reply: dict[str, Any], command: str, key: str) -> list[dict[str, Any]]:
    """Rows of ``key`` for ``command`` in a single or multi-command reply ([] on error)."""
    part = reply.get(command)
    if isinstance(part, list) and part:
        part = part[0]
    elif part is None:
        part = reply
    if not isinstance(part, dict):
        return []
    status = part.get("STATUS")
    if isinstance(status, list) and status and isinstance(status[0], dict) \
            and status[0].get("STATUS") == "E":
        return []
    rows = part.get(key)
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _ths(row: dict[str, Any], window: str) -> float | None:
    """TH/s from whichever unit the firmware reports (MHS, GHS or THS)."""
    for key, scale in ((f"MHS {window}", 1e-6), (f"GHS {window}", 1e-3), (f"THS {window}", 1.0)):
        v = _num(row.get(key))
        if v is not None:
            return max(0.0, v * scale)
    return None


def _temps(stats: dict[str, Any], prefix: str) -> list[float]:
    out: list[float] = []
    for k, v in stats.items():
        if k.startswith(prefix) and isinstance(v, str):
            out += [t for t in (_num(x) for x in v.split("-")) if t]
        elif k.startswith(prefix) and _num(v):
            out.append(float(v))
    return out


@dataclass(frozen=True)
class Locations:
    """Where a firmware keeps each value of a telemetry reading (STYLE.md 7: a table per
    dialect, connectors/firmware/).  Each function takes the merged reply."""

    power_w: Callable[[dict[str, Any]], float | None]
    chip_c: Callable[[dict[str, Any]], list[float]]
    board_c: Callable[[dict[str, Any]], list[float]]
    fans: Callable[[dict[str, Any]], list[int]]
    #: True/False when the firmware says whether it is curtailed; None: judge by hashrate
    sleeping: Callable[[dict[str, Any]], bool | None]
    model: Callable[[dict[str, Any]], str]


def merged_stats(reply: dict[str, Any]) -> dict[str, Any]:
    """Every ``STATS`` row merged into one; kept for the reply last asked about, since a
    telemetry read asks for it once per value (power, temperatures, fans).  The cache is one
    tuple, read and replaced whole: large replies are parsed in threads."""
    global _merged
    last, stats = _merged
    if last is reply:
        return stats
    stats = {}
    for row in _section(reply, "stats", "STATS"):
        stats.update(row)
    _merged = (reply, stats)
    return stats


_merged: tuple[Any, dict[str, Any]] = (None, {})


def stats_fans(reply: dict[str, Any]) -> list[int]:
    stats = merged_stats(reply)
    fans = sorted((int(k[3:]), v) for k, v in stats.items() if re.fullmatch(r"fan\d+", k))
    return [int(v) for _, v in fans if _num(v) is not None]


def watts_at(row: dict[str, Any], key: str) -> float | None:
    """``row[key]`` as watts: None when the firmware does not report it, ValueError when it
    reports something that is not a finite number (a NaN there is a device fault)."""
    if key not in row:
        return None
    watts = _num(row[key])
    if watts is None:
        raise ValueError(f"{key} {row[key]!r} is not a number")
    return watts


def power_watts(reply: dict[str, Any]) -> float | None:
    """``POWER[0].Watts`` (LuxOS), else ``stats.Power``; a NaN/inf/null there is an error."""
    power = _section(reply, "power", "POWER")
    return watts_at(power[0], "Watts") if power else _num(merged_stats(reply).get("Power"))


def version_type(reply: dict[str, Any]) -> str:
    version = _section(reply, "version", "VERSION")
    return str((version[0].get("Type") if version else "") or "")


#: LuxOS: everything in one multi-command; ``config.CurtailMode`` says whether it sleeps.
LUXOS = Locations(
    power_w=power_watts,
    chip_c=lambda r: _temps(merged_stats(r), "temp_chip"),
    board_c=lambda r: _temps(merged_stats(r), "temp_pcb"),
    fans=stats_fans,
    sleeping=lambda r: bool((c := _section(r, "config", "CONFIG"))
                            and str(c[0].get("CurtailMode", "")).lower() == "sleep"),
    model=version_type)


def parse_telemetry(reply: dict[str, Any], ep: AsicEndpoint, *, site: str, ts: datetime,
                    model: str = "", where: Locations = LUXOS,
                    firmware: str = "") -> AsicTelemetryObserved:
    """The telemetry event of one read; KeyError/ValueError if unusable."""
    summary = _section(reply, "summary", "SUMMARY")
    if not summary:
        raise ValueError("reply has no SUMMARY")
    s = summary[0]
    pools = _section(reply, "pools", "POOLS")
    model = model or where.model(reply) or ep.model
    h5 = _ths(s, "5s") or 0.0
    hav = _ths(s, "av") or 0.0
    sleeping = where.sleeping(reply)
    watts = where.power_w(reply)
    if sleeping is None:  # the firmware does not say: no hashrate at idle draw is a sleep
        sleeping = h5 <= 0 and watts is not None and watts <= IDLE_W
    state: AsicState = "sleeping" if sleeping else ("running" if h5 > 0 else "error")
    if watts is None and ep.nameplate_w:  # no power reading (Antminer stock): rated draw
        watts = ep.nameplate_w if state == "running" else 0.0
    # the pool it mines on; when none answers (an outage), the one it keeps trying: first
    # by priority among the enabled ones (so the failover learns the home pool even then)
    active = next((p for p in pools if p.get("Stratum Active") is True), None) or next(
        (p for p in pools if p.get("Status") == "Alive"), None) or next(
        (p for p in pools if p.get("Status") != "Disabled"), None)
    chip = where.chip_c(reply)
    pcb = where.board_c(reply)
    return AsicTelemetryObserved(
        site=site, device_id=ep.device_id, ts=ts, source=SOURCE, model=model,
        firmware=firmware, state=state,
        hashrate_ths=round(h5, 4), hashrate_avg_ths=round(hav, 4),
        power_w=max(0.0, watts or 0.0),
        temp_chip_c=max(chip) if chip else None, temp_board_c=max(pcb) if pcb else None,
        fan_rpm=where.fans(reply),
        pool_url=str(active.get("URL", "")) if active else "",
        accepted=max(0, int(_num(s.get("Accepted")) or 0)),
        rejected=max(0, int(_num(s.get("Rejected")) or 0)),
        stale=max(0, int(_num(s.get("Stale")) or 0)),
        hardware_errors=max(0, int(_num(s.get("Hardware Errors")) or 0)),
        elapsed_s=max(0, int(_num(s.get("Elapsed")) or 0)))


def counters(reply: dict[str, Any], ts: datetime) -> Counters:
    s = _section(reply, "summary", "SUMMARY")[0]
    pools = _section(reply, "pools", "POOLS")
    active = next((p for p in pools if p.get("Stratum Active") is True), pools[0] if pools
                  else {})
    return Counters(
        accepted=max(0, int(_num(s.get("Accepted")) or 0)),
        rejected=max(0, int(_num(s.get("Rejected")) or 0)),
        stale=max(0, int(_num(s.get("Stale")) or 0)),
        diff_accepted=max(0.0, _num(s.get("Difficulty Accepted")) or 0.0),
        diff_rejected=max(0.0, _num(s.get("Difficulty Rejected")) or 0.0),
        elapsed_s=max(0, int(_num(s.get("Elapsed")) or 0)), ts=ts,
        worker=str(active.get("User", "") or ""), pool=str(active.get("URL", "") or ""))


# -- transport ----------------------------------------------------------------------------

async def rpc(host: str, port: int, command: str, parameter: str | None = None,
              timeout_s: float = 3.0, max_bytes: int = MAX_REPLY_BYTES,
              raw: str | None = None) -> bytes:
    """One CGMiner request: connect, send, read to EOF (or the NUL), close; a reply over
    ``max_bytes`` is refused (CgminerDecodeError), one not complete within ``timeout_s``
    (connecting included) times out.  ``raw`` is sent as it is instead (Whatsminer's
    encrypted requests)."""
    body = {"command": command, **({"parameter": parameter} if parameter else {})}
    payload = raw.encode() if raw is not None else json.dumps(body).encode()
    return await exchange(host, port, payload, timeout_s, max_bytes, until_nul=True,
                          too_big=CgminerDecodeError)


# -- the sweeper --------------------------------------------------------------------------

class AsicTelemetry:
    """Sweep many miners with bounded concurrency; publish telemetry and share deltas."""

    def __init__(self, endpoints: Sequence[AsicEndpoint], emitter: Emitter, *,
                 period_s: float = 10.0, concurrency: int = 512, timeout_s: float = 3.0,
                 local_pool_url: str = "", max_reply_bytes: int = MAX_REPLY_BYTES):
        self.endpoints = list(endpoints)
        # shares a miner sends to hashplane's own local pool are counted by the pool
        # (connectors/stratum_pool.py), not again from the miner's counters
        self.local_pool_url = local_pool_url
        self.emitter = emitter
        self.period_s, self.concurrency, self.timeout_s = period_s, concurrency, timeout_s
        self.max_reply_bytes = max_reply_bytes
        self.prev: dict[str, Counters] = {}
        self.models: dict[str, str] = {}
        self.identified: dict[str, str] = {}  # device -> firmware found for "auto"
        self.unreachable: dict[str, int] = {}
        self.last_sweep_s = 0.0
        self.latencies: list[float] = []

    def dialect_of(self, ep: AsicEndpoint) -> Any:
        """The firmware dialect of a miner (``auto``: the one identified at first contact)."""
        from connectors.firmware import dialect

        return dialect(self.identified.get(ep.device_id, ep.dialect))

    async def read_one(self, ep: AsicEndpoint) -> list[Event]:
        """Read one miner; its events (or a dead letter when the reply is unusable)."""
        from connectors.firmware import Refused, identify

        t0 = time.perf_counter()
        where = f"cgminer://{ep.host}:{ep.port}"
        try:
            if ep.dialect == "auto" and ep.device_id not in self.identified:
                fw, model = await identify(ep.host, ep.port, self.timeout_s)
                self.identified[ep.device_id] = fw
                if model:
                    self.models.setdefault(ep.device_id, model)
            d = self.dialect_of(ep)
            raw, reply = await d.read(ep, self.timeout_s, self.max_reply_bytes)
            if reply and d.extra is not None:
                await d.extra(ep, reply, self.timeout_s)
        except CgminerDecodeError as exc:
            await self.emitter.dead(where, None, str(exc), key=ep.device_id)
            return []
        except Refused as exc:  # its web API refused our login (wrong credentials)
            await self.emitter.dead(where, None, f"authentication failed: {exc}"[:2000],
                                    key=ep.device_id)
            return []
        except KeyError as exc:  # a dialect we do not speak
            self.emitter.error(f"{ep.device_id}: firmware {exc} is not spoken by hashplane")
            return []
        except ValueError as exc:  # auto: the firmware could not be identified
            await self.emitter.dead(where, None, f"unknown firmware: {exc}"[:2000],
                                    key=ep.device_id)
            return []
        except (OSError, TimeoutError) as exc:
            self.unreachable[ep.device_id] = self.unreachable.get(ep.device_id, 0) + 1
            self.emitter.error(f"{ep.device_id} {ep.host}:{ep.port}: {exc!r}")
            return []
        self.latencies.append(time.perf_counter() - t0)
        ts = self.emitter.clock()
        if not reply:
            self.emitter.error(f"{ep.device_id}: closed without a reply")
            return []
        try:
            tel = parse_telemetry(reply, ep, site=self.emitter.site, ts=ts,
                                  model=self.models.get(ep.device_id, ""),
                                  where=d.where, firmware=d.name)
            cur = counters(reply, ts)
        except Exception as exc:  # noqa: BLE001 - whatever a device sends is its fault
            await self.emitter.dead(where, raw, f"{type(exc).__name__}: {exc}"[:2000],
                                    key=ep.device_id)
            return []
        self.unreachable.pop(ep.device_id, None)
        if tel.model:
            self.models.setdefault(ep.device_id, tel.model)
        events: list[Event] = [tel]
        delta = share_delta(self.prev.get(ep.device_id), cur, device_id=ep.device_id,
                            site=self.emitter.site, source=SOURCE)
        self.prev[ep.device_id] = cur
        if delta is not None and not (self.local_pool_url and cur.pool == self.local_pool_url):
            events.append(delta)
        return events

    async def sweep(self) -> int:
        """Read every miner once; publish the events; return how many miners answered."""
        sem = asyncio.Semaphore(self.concurrency)
        t0 = time.perf_counter()
        self.latencies = []

        async def one(ep: AsicEndpoint) -> list[Event]:
            async with sem:
                try:
                    return await self.read_one(ep)
                except Exception as exc:
                    self.emitter.error(f"{ep.device_id}: {type(exc).__name__}: {exc}")
                    log.exception("reading %s failed", ep.device_id)
                    return []

        results = await asyncio.gather(*(one(ep) for ep in self.endpoints))
        events = [e for r in results for e in r]
        await self.emitter.emit(events)
        self.last_sweep_s = time.perf_counter() - t0
        return sum(1 for r in results if r)

    async def run(self, stop: asyncio.Event) -> None:
        async def tick() -> None:
            await self.sweep()

        await every(self.period_s, stop, tick)
