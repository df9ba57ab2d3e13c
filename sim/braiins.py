"""Braiins OS (BOSminer) as a simulated miner speaks it: the CGMiner RPC with its own reads.

What differs from stock cgminer, from Braiins' public API documentation and the fields an
independent client (pyasic's BOSMiner backend) reads: ``version`` names ``BOSminer``;
``devdetails`` gives the model as ``Bitmain Antminer S19j Pro`` and each hashboard's chips;
``temps`` (``Board``/``Chip`` per hashboard), ``fans`` (``RPM``) and ``tunerstatus``
(``PowerLimit``, ``ApproximateMinerPowerConsumption``, each chain's tuner status) replace the
``stats`` of stock firmware; ``pause`` / ``resume`` stop and restart hashing.  Hashboard ids
start at 1.  Power targets are set through Braiins' gRPC API (not simulated): the RPC has no
command for them.
"""

from __future__ import annotations

import time
from typing import Any

from sim.cgminer import CgminerApi

FIRMWARE = "bosminer-plus-tuner 0.9.0-ede1d4d3"


class BraiinsApi(CgminerApi):
    """BOSminer's RPC."""

    DESCRIPTION = f"BOSminer {FIRMWARE}"

    def cmd_version(self, args: list[str], t: float) -> dict[str, Any]:
        return self._status("S", 22, "BOSminer versions",
                            VERSION=[{"API": "3.7", "BOSminer": FIRMWARE}])

    def _boards(self) -> range:
        return range(self.asic.model.boards)

    def cmd_devdetails(self, args: list[str], t: float) -> dict[str, Any]:
        m = self.asic.model
        rows = [{"DEVDETAILS": b, "Name": "", "ID": b + 1, "Driver": "bitmaintv", "Kernel": "",
                 "Model": f"Bitmain {m.type}", "Chips": m.chips_per_board,
                 "Frequency": float(self.asic.current_profile().frequency_mhz),
                 "Voltage": self.asic.current_profile().voltage_v} for b in self._boards()]
        return self._status("S", 69, "Device Details", DEVDETAILS=rows)

    def cmd_devs(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        n = a.model.boards
        rows = []
        for b in self._boards():
            chips, _ = self._board_temps(b)
            mhs5 = round(a.hashrate_5s_ths() * 1e6 / n, 2)
            mhsav = round(a.hashrate_avg_ths(t) * 1e6 / n, 2)
            rows.append({
                "ASC": b, "Name": "", "ID": b + 1, "Enabled": "Y", "Status": "Alive",
                "Temperature": float(max(chips)), "MHS av": mhsav, "MHS 5s": mhs5,
                "MHS 1m": mhs5, "MHS 5m": mhsav, "MHS 15m": mhsav,
                "Nominal MHS": round(a.current_profile().ths * 1e6 / n, 2),
                "Accepted": a.accepted // n, "Rejected": a.rejected // n,
                "Hardware Errors": a.hw_errors // n, "Last Share Pool": a.active_pool,
                "Last Valid Work": int(time.time()), "Device Elapsed": a.elapsed(t)})
        return self._status("S", 9, f"{n} ASC(s)", DEVS=rows)

    def cmd_temps(self, args: list[str], t: float) -> dict[str, Any]:
        rows = []
        for b in self._boards():
            chips, pcb = self._board_temps(b)
            rows.append({"TEMP": b, "ID": b + 1, "Board": float(max(pcb)),
                         "Chip": float(max(chips))})
        return self._status("S", 201, f"{len(rows)} Temp(s)", TEMPS=rows)

    def cmd_fans(self, args: list[str], t: float) -> dict[str, Any]:
        rows = [{"FAN": i, "ID": i, "RPM": rpm, "Speed": min(100, round(rpm / 60))}
                for i, rpm in enumerate(self.asic.fan_rpm(t))]
        return self._status("S", 202, f"{len(rows)} Fan(s)", FANS=rows)

    def cmd_tunerstatus(self, args: list[str], t: float) -> dict[str, Any]:
        a = self.asic
        watts = round(a.power_w(t))
        chains = [{"HashchainIndex": b + 1, "Iteration": 0, "LoadedProfile": True,
                   "PowerLimit": round(a.current_profile().watts / a.model.boards),
                   "Status": "Stable" if a.state == "running" else "Paused"}
                  for b in self._boards()]
        return self._status("S", 203, "Tuner Status", TUNERSTATUS=[{
            "PowerLimit": a.current_profile().watts, "DynamicPowerScaling": "Disabled",
            "ApproximateMinerPowerConsumption": watts,
            "ApproximateChainPowerConsumption": max(0, watts - 40),
            "TunerChainStatus": chains}])

    def cmd_pause(self, args: list[str], t: float) -> dict[str, Any]:
        self.asic.sleep(t)
        return self._status("S", 204, "Paused", PAUSE=[{"PAUSE": True}])

    def cmd_resume(self, args: list[str], t: float) -> dict[str, Any]:
        self.asic.wake(t)
        return self._status("S", 205, "Resumed", RESUME=[{"RESUME": True}])
