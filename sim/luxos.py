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

import secrets
import time
from typing import Any

from sim.cgminer import ACCDENY, MISPAR, CgminerApi, RpcError, serve_rpc

__all__ = ["LuxosApi", "serve_rpc"]

FIRMWARE = "2024.5.1.204518-2a1ba8d"
DESCRIPTION = f"LUXminer {FIRMWARE}"


class LuxosApi(CgminerApi):
    """LuxOS: sessions for writes, ``curtail``, profiles, ATM."""

    DESCRIPTION = DESCRIPTION
    PRIVILEGED = frozenset({"curtail", "profileset", "atmset", "logoff", "ledset", "fanset",
                            "resetminer", "rebootdevice", "tempctrlset", "frequencyset",
                            "voltageset"})

    def cmd_version(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 22, "LUXminer versions", VERSION=[{
            "API": "3.7", "LUXminer": FIRMWARE, "Miner": FIRMWARE, "Type": self.asic.model.type}])
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
