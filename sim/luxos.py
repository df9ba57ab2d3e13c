"""The LuxOS dialect of the CGMiner RPC (TCP 4028), as a simulated miner speaks it.

One JSON request per connection (``{"command": "summary+pools", "parameter": "..."}``, or
cgminer's plain ``summary|param`` form); one JSON reply terminated by a NUL byte; the
connection closes.  Multi-commands (``a+b``) answer ``{"a": [reply], "b": [reply]}``.
Privileged commands (``curtail``, ``profileset``, ``atmset``, ``logoff``...) take the session
id from ``logon`` as their first parameter, as LuxOS requires.  Errors are cgminer's
``STATUS: E`` replies with its codes, never a dropped connection.

Chosen because pyasic identifies LuxOS from the RPC alone (``version`` says ``LUXminer``; no
web page on :80, so no root) and reads hashrate (per-board ``chain_rate``), pools,
temperatures and power from it, and because LuxOS has RPC commands for everything the
actuator needs: ``curtail sleep|wakeup``, pool commands, and power targets through
``profileset`` (profiles carry their wattage).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from sim.asic import SimAsic

log = logging.getLogger(__name__)

FIRMWARE = "2024.5.1.204518-2a1ba8d"
DESCRIPTION = f"LUXminer {FIRMWARE}"
PRIVILEGED = {"curtail", "profileset", "atmset", "logoff", "ledset", "fanset", "resetminer",
              "rebootdevice", "tempctrlset", "frequencyset", "voltageset"}

# cgminer API message codes used here
INVCMD, INVJSON, MISPID, INVPID, ACCDENY, MISPAR, INVSESS = 14, 23, 15, 13, 45, 109, 110


class RpcError(Exception):
    """A cgminer-style error reply."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code, self.msg = code, msg


class LuxosApi:
    """Answers RPC requests for one simulated miner at simulated time ``clock()``."""

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
        if len(commands) > 1:
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
                            "Msg": msg, "Description": DESCRIPTION}], **extra, "id": 1}

    def _one(self, command: str, param: str, t: float) -> dict[str, Any]:
        handler = getattr(self, f"cmd_{command}", None)
        if handler is None or not command.isidentifier():
            return self._status("E", INVCMD, "Invalid command")
        args = [a.strip() for a in param.split(",")] if param != "" else []
        if command in PRIVILEGED:
            if not args or not self.session_id or args[0] != self.session_id:
                return self._status("E", INVSESS, f"Invalid session id for '{command}'")
            args = args[1:]
        try:
            return handler(args, t)  # type: ignore[no-any-return]
        except RpcError as exc:
            return self._status("E", exc.code, exc.msg)

    # -- read commands ----------------------------------------------------------------

    def cmd_version(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 22, "LUXminer versions", VERSION=[{
            "API": "3.7", "LUXminer": FIRMWARE, "Miner": FIRMWARE, "Type": self.asic.model.type}])

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

    def cmd_devs(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        n = a.model.boards
        rows = []
        for b in range(n):
            chips, _ = self._board_temps(b)
            h5 = a.hashrate_5s_ths() * 1e6 / n
            hav = a.hashrate_avg_ths(t) * 1e6 / n
            rows.append({
                "ASC": b, "Name": "BTM", "ID": b,
                "Enabled": "N" if a.state == "sleeping" else "Y",
                "Status": "Alive" if a.state != "sleeping" else "Disabled",
                "Temperature": float(max(chips)), "MHS av": round(hav, 2),
                "MHS 5s": round(h5, 2), "MHS 1m": round(h5, 2), "MHS 5m": round(hav, 2),
                "MHS 15m": round(hav, 2), "Accepted": a.accepted // n,
                "Rejected": a.rejected // n, "Hardware Errors": a.hw_errors // n,
                "Utility": 0.0, "Last Share Pool": a.active_pool, "Last Share Time": 0,
                "Total MH": round(a.total_mh / n), "Diff1 Work": 0,
                "Difficulty Accepted": a.diff_accepted / n,
                "Difficulty Rejected": a.diff_rejected / n, "Last Share Difficulty": 0.0,
                "Last Valid Work": int(time.time()), "Device Hardware%": 0.0,
                "Device Rejected%": 0.0, "Device Elapsed": a.elapsed(t)})
        return self._status("S", 9, f"{n} ASC(s)", DEVS=rows)

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

    def cmd_stats(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        n = a.model.boards
        prof = a.current_profile()
        ramp = a.ramp(t)
        board: dict[str, Any] = {
            "STATS": 1, "ID": "LUX0", "Elapsed": a.elapsed(t), "Calls": 0, "Wait": 0.0,
            "Max": 0.0, "Min": 99999999.0, "GHS 5s": round(a.hashrate_5s_ths() * 1e3, 2),
            "GHS av": round(a.hashrate_avg_ths(t) * 1e3, 2), "rate_unit": "GH",
            "total_rateideal": round(prof.ths * 1e3, 2), "total_freqavg": prof.frequency_mhz,
            "total_acn": a.model.chips_per_board * n,
            "total_rate": round(a.hashrate_5s_ths() * 1e3, 2), "miner_count": n,
            "frequency": prof.frequency_mhz, "fan_num": a.model.fans,
            "temp_num": n, "temp_max": 0, "Mode": 0,
        }
        for i, rpm in enumerate(a.fan_rpm(t), start=1):
            board[f"fan{i}"] = rpm
        for b in range(n):
            chips, pcb = self._board_temps(b)
            k = b + 1
            board[f"chain_rate{k}"] = round(a.hashrate_5s_ths() * 1e3 / n, 2)
            board[f"chain_rateideal{k}"] = round(prof.ths * 1e3 / n, 2)
            board[f"chain_acn{k}"] = a.model.chips_per_board if ramp > 0 else 0
            board[f"chain_acs{k}"] = "o" * a.model.chips_per_board if ramp > 0 else ""
            board[f"chain_hw{k}"] = a.hw_errors // n
            board[f"freq_avg{k}"] = prof.frequency_mhz
            board[f"temp_chip{k}"] = "-".join(str(x) for x in chips)
            board[f"temp_pcb{k}"] = "-".join(str(x) for x in pcb)
            board["temp_max"] = max(board["temp_max"], max(chips))
        head = {"STATS": 0, "ID": "LUX", "Elapsed": a.elapsed(t), "Calls": 0, "Wait": 0.0,
                "Max": 0.0, "Min": 99999999.0, "LUXminer": FIRMWARE, "Type": a.model.type,
                "Miner": FIRMWARE, "CompileTime": "2024-05-01"}
        return self._status("S", 70, "LUXminer stats", STATS=[head, board])

    def cmd_fans(self, args: list[str], t: float) -> dict[str, Any]:
        rpms = self.asic.fan_rpm(t)
        rows = [{"FAN": i, "ID": i, "RPM": rpm, "Speed": min(100, round(rpm / 60))}
                for i, rpm in enumerate(rpms)]
        return self._status("S", 300, "Fans", FANS=rows,
                            FANCTRL=[{"MinFans": self.asic.model.fans, "PowerOffSpeed": 0}])

    def cmd_temps(self, args: list[str], t: float) -> dict[str, Any]:
        rows = []
        for b in range(self.asic.model.boards):
            chips, pcb = self._board_temps(b)
            rows.append({"TEMP": b, "ID": b, "Board": float(max(pcb)), "Chip": float(max(chips)),
                         "BottomLeft": float(chips[0]), "BottomRight": float(chips[1]),
                         "TopLeft": float(chips[2]), "TopRight": float(chips[3])})
        return self._status("S", 201, f"{len(rows)} Temp(s)", TEMPS=rows)

    def cmd_power(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 320, "Power", POWER=[{"PSU": True,
                                                       "Watts": round(self.asic.power_w(t))}])

    def cmd_config(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        return self._status("S", 33, "CGMiner config", CONFIG=[{
            "ASC Count": a.model.boards, "PGA Count": 0, "Pool Count": len(a.pools),
            "Strategy": "Failover", "Log Interval": 5, "Device Code": "", "OS": "Linux",
            "Profile": a.profile, "IsAtmEnabled": a.atm_enabled, "RedLed": self.red_led,
            "MACAddr": f"02:48:50:{(a.index >> 16) & 255:02x}:{(a.index >> 8) & 255:02x}:"
                       f"{a.index & 255:02x}", "Model": a.model.type,
            "SerialNumber": f"SIM{a.index:08d}", "CurtailMode": "Sleep"
            if a.state == "sleeping" else "None"}])

    def cmd_profiles(self, args: list[str], t: float) -> dict[str, Any]:
        rows = [{"Profile Name": p.name, "Frequency": p.frequency_mhz, "Voltage": p.voltage_v,
                 "Watts": p.watts, "Hashrate": p.ths, "IsTuned": False, "Step": str(p.step)}
                for p in self.asic.profiles.values()]
        return self._status("S", 327, "Profiles", PROFILES=rows)

    def cmd_tempctrl(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 340, "Temp control", TEMPCTRL=[
            {"Mode": "Auto", "Target": 75.0, "Hot": 85.0, "Dangerous": 95.0}])

    def cmd_groups(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 401, "Groups", GROUPS=[
            {"GROUP": 0, "Name": "Default", "Quota": 1, "Strategy": "Failover"}])

    def cmd_atm(self, args: list[str], t: float) -> dict[str, Any]:
        profs = list(self.asic.profiles)
        return self._status("S", 340, "ATM", ATM=[{
            "Enabled": self.asic.atm_enabled, "MaxProfile": profs[-1], "MinProfile": profs[0],
            "PostRampMinutes": 15, "StartupMinutes": 15, "TempWindow": 7.0}])

    def cmd_devdetails(self, args: list[str], t: float) -> dict[str, Any]:
        rows = [{"DEVDETAILS": b, "Name": "BTM", "ID": b, "Driver": "luxminer",
                 "Kernel": "", "Model": self.asic.model.type, "Device Path": ""}
                for b in range(self.asic.model.boards)]
        return self._status("S", 69, "Device Details", DEVDETAILS=rows)

    def cmd_session(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 350, "Session", SESSION=[{"SessionID": self.session_id}])

    def cmd_logon(self, args: list[str], t: float) -> dict[str, Any]:
        if self.session_id:
            raise RpcError(ACCDENY, "Another session is active")
        self.session_id = secrets.token_hex(4)
        return self._status("S", 350, "Session created", SESSION=[{"SessionID": self.session_id}])

    def cmd_logoff(self, args: list[str], t: float) -> dict[str, Any]:
        self.session_id = ""
        return self._status("S", 351, "Session closed")

    # -- write commands ---------------------------------------------------------------

    def cmd_curtail(self, args: list[str], t: float) -> dict[str, Any]:
        mode = args[0].lower() if args else ""
        if mode == "sleep":
            self.asic.sleep(t)
        elif mode == "wakeup":
            self.asic.wake(t)
        else:
            raise RpcError(MISPAR, "Missing or invalid curtail mode: sleep or wakeup")
        return self._status("S", 200, f"Curtail {mode}", CURTAIL=[{"Mode": mode}])

    def cmd_profileset(self, args: list[str], t: float) -> dict[str, Any]:
        if not args:
            raise RpcError(MISPAR, "Missing profile name")
        if args[0] not in self.asic.profiles:
            raise RpcError(MISPAR, f"Invalid profile '{args[0]}'")
        if self.asic.atm_enabled:
            raise RpcError(ACCDENY, "Cannot change profile while ATM is enabled")
        self.asic.set_profile(args[0], t)
        return self._status("S", 328, "Profile set", PROFILE=[{"Profile": self.asic.profile}])

    def cmd_atmset(self, args: list[str], t: float) -> dict[str, Any]:
        for arg in args:
            key, _, value = arg.partition("=")
            if key == "enabled":
                self.asic.atm_enabled = value.lower() == "true"
        return self._status("S", 341, "ATM set", ATM=[{"Enabled": self.asic.atm_enabled}])

    def cmd_ledset(self, args: list[str], t: float) -> dict[str, Any]:
        self.red_led = args[1] if len(args) > 1 else "off"
        return self._status("S", 360, "LED set")

    def cmd_resetminer(self, args: list[str], t: float) -> dict[str, Any]:
        self.asic.restart(t)
        return self._status("S", 361, "Miner reset")

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


async def serve_rpc(api: LuxosApi, host: str, port: int = 4028,
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
