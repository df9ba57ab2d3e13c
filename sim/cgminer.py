"""The CGMiner RPC (TCP 4028) as simulated miners speak it: framing, the shared commands.

One JSON request per connection (``{"command": "summary+pools", "parameter": "..."}``, or
cgminer's plain ``summary|param`` form); one JSON reply terminated by a NUL byte; the
connection closes.  Multi-commands (``a+b``) answer ``{"a": [reply], "b": [reply]}``.
Errors are cgminer's ``STATUS: E`` replies with its codes, never a dropped connection.
Each firmware (sim/luxos.py, sim/braiins.py, sim/antminer.py, sim/whatsminer.py) is a
subclass that adds its own commands: a command another firmware has is "Invalid command"
here, as on the real miner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sim.asic import SimAsic

log = logging.getLogger(__name__)

# cgminer API message codes used here
INVCMD, INVJSON, MISPID, INVPID, ACCDENY, MISPAR, INVSESS = 14, 23, 15, 13, 45, 109, 110

class RpcError(Exception):
    """A cgminer-style error reply."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code, self.msg = code, msg

class CgminerApi:
    """Answers RPC requests for one simulated miner at simulated time ``clock()``."""

    DESCRIPTION = "cgminer 4.11.1"
    PRIVILEGED: frozenset[str] = frozenset()
    MULTI = True  # answers a+b multi-commands
    #: cgminer commands this firmware's API does not have ("Invalid command" here too)
    ABSENT: frozenset[str] = frozenset()

    def __init__(self, asic: SimAsic, clock: Callable[[], float],
                 pool_alive: Callable[[str], bool] = lambda url: True):
        self.asic = asic
        self.clock = clock
        self.pool_alive = pool_alive
        self.session_id = ""
        self.red_led = "off"

    # -- framing ----------------------------------------------------------------------

    def handle(self, raw: bytes) -> bytes:
        """One request in, one NUL-terminated reply out."""
        try:
            command, param = self._parse(raw)
        except RpcError as exc:
            return self._encode(self._status("E", exc.code, exc.msg))
        if self.asic.state == "offline":
            return b""  # a crashed miner: the caller closes without an answer
        t = self.clock()
        self.asic.advance(t)
        commands = command.split("+")
        if len(commands) > 1 and self.MULTI:
            reply: dict[str, Any] = {}
            for c in commands:
                reply[c] = [self._one(c, param, t)]
            reply["id"] = 1
            return self._encode(reply)
        return self._encode(self._one(command, param, t))

    @staticmethod
    def _parse(raw: bytes) -> tuple[str, str]:
        text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
        if not text:
            raise RpcError(INVJSON, "Invalid JSON")
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                raise RpcError(INVJSON, "Invalid JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("command"), str):
                raise RpcError(INVJSON, "Missing JSON 'command'")
            param = obj.get("parameter", "")
            return obj["command"].strip(), "" if param is None else str(param)
        command, _, param = text.partition("|")
        return command.strip(), param

    @staticmethod
    def _encode(reply: dict[str, Any]) -> bytes:
        return json.dumps(reply, separators=(",", ":")).encode() + b"\x00"

    def _status(self, status: str, code: int, msg: str, **extra: Any) -> dict[str, Any]:
        return {"STATUS": [{"STATUS": status, "When": int(time.time()), "Code": code,
                            "Msg": msg, "Description": self.DESCRIPTION}], **extra, "id": 1}

    def _one(self, command: str, param: str, t: float) -> dict[str, Any]:
        handler = getattr(self, f"cmd_{command}", None)
        if handler is None or not command.isidentifier() or command in self.ABSENT:
            return self._status("E", INVCMD, "Invalid command")
        args = [a.strip() for a in param.split(",")] if param != "" else []
        if command in self.PRIVILEGED:
            if not args or not self.session_id or args[0] != self.session_id:
                return self._status("E", INVSESS, f"Invalid session id for '{command}'")
            args = args[1:]
        try:
            return handler(args, t)  # type: ignore[no-any-return]
        except RpcError as exc:
            return self._status("E", exc.code, exc.msg)

    # -- read commands ----------------------------------------------------------------

    # -- shared read commands ---------------------------------------------------------

    def _summary_row(self, t: float) -> dict[str, Any]:
        a = self.asic
        h5 = a.hashrate_5s_ths() * 1e6
        hav = a.hashrate_avg_ths(t) * 1e6
        el = a.elapsed(t)
        total = a.accepted + a.rejected + a.stale
        return {
            "Elapsed": el, "MHS av": round(hav, 2), "MHS 5s": round(h5, 2),
            "MHS 1m": round(h5, 2), "MHS 5m": round(hav, 2), "MHS 15m": round(hav, 2),
            "GHS 5s": round(h5 / 1e3, 2), "GHS av": round(hav / 1e3, 2),
            "GHS 30m": round(hav / 1e3, 2), "Found Blocks": 0, "Getworks": el // 30,
            "Accepted": a.accepted, "Rejected": a.rejected, "Hardware Errors": a.hw_errors,
            "Utility": round(a.accepted * 60 / el, 2) if el else 0.0, "Discarded": 0,
            "Stale": a.stale, "Get Failures": 0, "Local Work": el * 10,
            "Remote Failures": 0, "Network Blocks": el // 600, "Total MH": round(a.total_mh),
            "Work Utility": 0.0, "Difficulty Accepted": a.diff_accepted,
            "Difficulty Rejected": a.diff_rejected, "Difficulty Stale": a.diff_stale,
            "Best Share": int(a.pools[a.active_pool].difficulty * 9) if a.accepted else 0,
            "Device Hardware%": round(100 * a.hw_errors / max(1, a.hw_errors + total), 4),
            "Device Rejected%": round(100 * a.rejected / total, 4) if total else 0.0,
            "Pool Rejected%": round(100 * a.rejected / total, 4) if total else 0.0,
            "Pool Stale%": round(100 * a.stale / total, 4) if total else 0.0,
            "Last getwork": int(time.time()),
        }

    def cmd_summary(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 11, "Summary", SUMMARY=[self._summary_row(t)])
    def _board_temps(self, board: int) -> tuple[list[int], list[int]]:
        chip = self.asic.temp_c + board * 1.5
        chips = [round(chip - 4), round(chip - 1), round(chip + 1), round(chip + 3)]
        pcb = [round(chip - 15), round(chip - 12), round(chip - 10), round(chip - 13)]
        return chips, pcb
    def cmd_pools(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        rows = []
        for i, p in enumerate(a.pools):
            status = "Disabled" if not p.enabled else ("Alive" if p.alive else "Dead")
            total = p.accepted + p.rejected + p.stale
            rows.append({
                "POOL": i, "URL": p.url, "Status": status, "Priority": i, "Quota": 1,
                "Long Poll": "N", "Getworks": a.elapsed(t) // 30 if i == a.active_pool else 0,
                "Accepted": p.accepted, "Rejected": p.rejected, "Works": p.accepted,
                "Discarded": 0, "Stale": p.stale, "Get Failures": 0,
                "Remote Failures": 0 if p.alive else 1, "User": p.user,
                "Last Share Time": int(a.started_at + p.last_share_time)
                if p.last_share_time else 0,
                "Diff1 Shares": int(p.diff_accepted), "Proxy Type": "", "Proxy": "",
                "Difficulty Accepted": p.diff_accepted, "Difficulty Rejected": p.diff_rejected,
                "Difficulty Stale": p.diff_stale, "Last Share Difficulty": p.difficulty,
                "Work Difficulty": p.difficulty, "Has Stratum": True,
                "Stratum Active": i == a.active_pool and p.alive and p.enabled
                and a.state in ("running", "waking"),
                "Stratum URL": p.url.split("://")[-1].split(":")[0] if p.alive else "",
                "Stratum Difficulty": p.difficulty, "Has Vmask": True, "Has GBT": False,
                "Best Share": int(p.difficulty * 9) if p.accepted else 0,
                "Pool Rejected%": round(100 * p.rejected / total, 4) if total else 0.0,
                "Pool Stale%": round(100 * p.stale / total, 4) if total else 0.0,
                "Bad Work": 0, "Current Block Height": 871_000, "Current Block Version": 536870912,
                "GROUP": 0})
        return self._status("S", 7, f"{len(rows)} Pool(s)", POOLS=rows)

    # -- pool commands --------------------------------------------------------------

    def _pool_index(self, args: list[str]) -> int:
        if not args or args[0] == "":
            raise RpcError(MISPID, "Missing pool id parameter")
        try:
            n = int(args[0])
        except ValueError:
            raise RpcError(INVPID, f"Invalid pool id {args[0]}") from None
        if not 0 <= n < len(self.asic.pools):
            raise RpcError(INVPID, f"Invalid pool id {n} - range is 0 - {len(self.asic.pools) - 1}")
        return n

    def cmd_switchpool(self, args: list[str], t: float) -> dict[str, Any]:
        n = self._pool_index(args)
        url = self.asic.pools[n].url
        self.asic.switch_pool(n, t)
        return self._status("S", 27, f"Switching to pool {n}:'{url}'")

    def cmd_enablepool(self, args: list[str], t: float) -> dict[str, Any]:
        n = self._pool_index(args)
        self.asic.enable_pool(n, True, t)
        return self._status("S", 47, f"Enabling pool {n}:'{self.asic.pools[n].url}'")

    def cmd_disablepool(self, args: list[str], t: float) -> dict[str, Any]:
        n = self._pool_index(args)
        if sum(p.enabled for p in self.asic.pools) <= 1 and self.asic.pools[n].enabled:
            raise RpcError(ACCDENY, "Cannot disable last active pool")
        self.asic.enable_pool(n, False, t)
        return self._status("S", 48, f"Disabling pool {n}:'{self.asic.pools[n].url}'")

    def cmd_removepool(self, args: list[str], t: float) -> dict[str, Any]:
        n = self._pool_index(args)
        if len(self.asic.pools) <= 1:
            raise RpcError(ACCDENY, "Cannot remove last pool")
        url = self.asic.pools[n].url
        self.asic.remove_pool(n, t)
        return self._status("S", 68, f"Removed pool {n}:'{url}'")

    def cmd_addpool(self, args: list[str], t: float) -> dict[str, Any]:
        if len(args) < 2 or not args[0]:
            raise RpcError(MISPAR, "Missing addpool details: url,user[,pass]")
        url, user = args[0], args[1]
        password = args[2] if len(args) > 2 else "x"
        if "://" not in url:
            url = f"stratum+tcp://{url}"
        n = self.asic.add_pool(url, user, password, alive=self.pool_alive(url))
        return self._status("S", 55, f"Added pool {n}: '{url}'")

async def serve_rpc(api: CgminerApi, host: str, port: int = 4028,
                    read_timeout_s: float = 5.0) -> asyncio.Server:
    """Listen on host:port; one request per connection, NUL-terminated reply."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(_read_request(reader), read_timeout_s)
            reply = api.handle(raw)
            if reply:
                writer.write(reply)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:  # a simulated device never dies of a request
            log.exception("rpc handler failed on %s", host)
        finally:
            writer.close()

    return await asyncio.start_server(on_connect, host, port, backlog=64, reuse_address=True)


async def _read_request(reader: asyncio.StreamReader, idle_s: float = 0.1) -> bytes:
    """Read one request: up to a complete JSON object, a NUL, a newline, EOF, or a pause
    in the data (cgminer handles what one receive brought; a broken request still gets
    its error reply)."""
    buf = b""
    while len(buf) < 65536:
        try:
            chunk = await (reader.read(4096) if not buf
                           else asyncio.wait_for(reader.read(4096), idle_s))
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
        stripped = buf.strip()
        if b"\x00" in chunk or b"\n" in chunk:
            break
        if stripped.startswith(b"{"):
            try:
                json.loads(stripped)
                break
            except ValueError:
                continue
        elif stripped and not stripped.startswith(b"{"):
            break  # plain "command|param" requests come in one write
    return buf
