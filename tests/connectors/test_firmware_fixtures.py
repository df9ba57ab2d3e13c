"""Each dialect's parsers on recorded replies (tests/fixtures/firmware, written from the
vendors' API documentation and pyasic's backends, not from our simulator), and malformed
variants of them, served over a real socket, that must end in ``dlq``."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Emitter, ListSink
from connectors.cgminer import AsicEndpoint, AsicTelemetry, counters, parse_telemetry
from connectors.firmware import dialect
from schemas.events import AsicTelemetryObserved, RecordDeadLettered

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "firmware"
TS = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def fixture(name: str) -> Any:
    return json.loads((FIX / name).read_text())


def reply_of(fw: str, status: str = "whatsminer_status.json") -> dict[str, Any]:
    reply: dict[str, Any] = fixture(f"{fw}_multi.json")
    if fw == "whatsminer":
        reply["status"] = [fixture(status)]
    return reply


def test_braiins_values_come_from_tunerstatus_temps_fans_and_devdetails() -> None:
    ep = AsicEndpoint("b1", "10.0.0.1", dialect="braiins")
    t = parse_telemetry(reply_of("braiins"), ep, site="s", ts=TS, where=dialect("braiins").where)
    assert t.state == "running" and t.hashrate_ths == pytest.approx(96.012, abs=0.01)
    assert t.power_w == 2954 and t.temp_chip_c == 70.0 and t.temp_board_c == 57.0
    assert t.fan_rpm == [4320, 4380, 4290, 4350] and t.model == "Antminer S19j Pro"
    assert t.pool_url == "stratum+tcp://stratum.braiins.com:3333" and t.accepted == 41230


def test_antminer_stock_reads_gh_s_strings_and_uses_the_nameplate_for_power() -> None:
    ep = AsicEndpoint("a1", "10.0.0.2", dialect="antminer", nameplate_w=3068.0)
    where = dialect("antminer").where
    t = parse_telemetry(reply_of("antminer"), ep, site="s", ts=TS, where=where)
    assert t.state == "running" and t.hashrate_ths == pytest.approx(104.512, abs=0.01)
    assert t.power_w == 3068.0 and t.temp_chip_c == 77.0 and t.temp_board_c == 62.0
    assert t.fan_rpm == [5640, 5760, 5640, 5700] and t.model == "Antminer S19j Pro"
    asleep = reply_of("antminer")
    asleep["summary"][0]["SUMMARY"][0]["GHS 5s"] = "0.00"
    asleep["web_conf"] = fixture("antminer_get_miner_conf_sleep.json")
    t = parse_telemetry(asleep, ep, site="s", ts=TS, where=where)
    assert t.state == "sleeping" and t.power_w == 0.0


def test_whatsminer_reads_power_status_and_chip_temperatures() -> None:
    ep = AsicEndpoint("w1", "10.0.0.3", dialect="whatsminer", model="WhatsMiner M30S++ VE40")
    where = dialect("whatsminer").where
    t = parse_telemetry(reply_of("whatsminer"), ep, site="s", ts=TS, where=where)
    assert t.state == "running" and t.hashrate_ths == pytest.approx(112.302, abs=0.01)
    assert t.power_w == 3462 and t.temp_board_c == 72.5 and t.temp_chip_c == 76.6
    assert t.fan_rpm == [4770, 4800] and t.model == "WhatsMiner M30S++ VE40"
    off = reply_of("whatsminer", "whatsminer_status_off.json")
    assert parse_telemetry(off, ep, site="s", ts=TS, where=where).state == "sleeping"
    c = counters(reply_of("whatsminer"), TS)
    assert c.accepted == 81234 and c.worker == "farm.m30s01"


def test_vnish_reads_the_rpc_and_takes_power_and_state_from_its_web_summary() -> None:
    ep = AsicEndpoint("v1", "10.0.0.4", dialect="vnish", nameplate_w=3068.0)
    where = dialect("vnish").where
    reply = reply_of("vnish")
    reply["web_summary"] = fixture("vnish_web_summary.json")
    t = parse_telemetry(reply, ep, site="s", ts=TS, where=where)
    assert t.state == "running" and t.hashrate_ths == pytest.approx(104.512, abs=0.01)
    assert t.power_w == 3012 and t.model == "Antminer S19j Pro" and t.temp_chip_c == 77.0
    reply["web_summary"]["miner"]["miner_status"]["miner_state"] = "stopped"
    reply["summary"][0]["SUMMARY"][0]["GHS 5s"] = "0"
    reply["web_summary"]["miner"]["power_usage"] = 14
    assert parse_telemetry(reply, ep, site="s", ts=TS, where=where).state == "sleeping"
    reply["web_summary"]["miner"]["power_usage"] = "NaN"
    with pytest.raises(ValueError, match="power_usage"):
        parse_telemetry(reply, ep, site="s", ts=TS, where=where)


# -- malformed replies end in dlq ---------------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    return r["summary"][0]["SUMMARY"][0]  # type: ignore[no-any-return]


def _set(path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Mutation:
    def m(r: dict[str, Any]) -> dict[str, Any]:
        path(r)[key] = value
        return r
    return m


def _drop_summary(r: dict[str, Any]) -> dict[str, Any]:
    r.pop("summary")
    return r


COMMON: list[tuple[str, Mutation]] = [
    ("html instead of JSON", lambda r: b"<html><body>502 Bad Gateway</body></html>"),
    ("a JSON array of numbers", lambda r: [1, 2, 3]),
    ("a JSON string", lambda r: "summary"),
    ("nested past any depth", lambda r: b"[" * 5000 + b"]" * 5000),
    ("over the size limit", lambda r: b'{"x":"' + b"a" * (2 << 20) + b'"}'),
    ("no summary", _drop_summary),
    ("summary rows empty", lambda r: (_summary_rows(r, []), r)[1]),
    ("a hashrate no miner has", _set(_summary, "MHS 5s", 9.9e15)),
]


def _summary_rows(r: dict[str, Any], rows: Any) -> None:
    r["summary"][0]["SUMMARY"] = rows


def _stats(r: dict[str, Any]) -> dict[str, Any]:
    return r["stats"][0]["STATS"][1]  # type: ignore[no-any-return]


BY_DIALECT: dict[str, list[tuple[str, Mutation]]] = {
    "braiins": [
        ("power NaN", _set(lambda r: r["tunerstatus"][0]["TUNERSTATUS"][0],
                           "ApproximateMinerPowerConsumption", "nan")),
        ("power a megawatt", _set(lambda r: r["tunerstatus"][0]["TUNERSTATUS"][0],
                                  "ApproximateMinerPowerConsumption", 1e6)),
        ("a chip at 900 °C", _set(lambda r: r["temps"][0]["TEMPS"][0], "Chip", 900.0)),
    ],
    "antminer": [
        ("a chip at 400 °C", _set(_stats, "temp_chip1", "62-61-400-74")),
        ("GH/s for an exahash", _set(_summary, "GHS 5s", "9.9e12")),
        ("a summary that is a string", lambda r: (_summary_rows(r, "oops"), r)[1]),
    ],
    "vnish": [
        ("a chip at 400 °C", _set(_stats, "temp_chip2", "64-62-400-76")),
        ("GH/s for an exahash", _set(_summary, "GHS 5s", "9.9e12")),
        ("a summary that is a string", lambda r: (_summary_rows(r, "oops"), r)[1]),
    ],
    "whatsminer": [
        ("power NaN", _set(_summary, "Power", "NaN")),
        ("power a megawatt", _set(_summary, "Power", 1_000_000)),
        ("a chip at 900 °C", _set(lambda r: r["devs"][0]["DEVS"][1], "Chip Temp Avg", 900)),
    ],
}


def cases() -> Iterator[Any]:
    for fw, extra in BY_DIALECT.items():
        for name, mutate in COMMON + extra:
            yield pytest.param(fw, mutate, id=f"{fw}: {name}")


def test_each_dialect_has_at_least_ten_malformed_cases() -> None:
    assert all(len(COMMON) + len(v) >= 10 for v in BY_DIALECT.values())


async def serve(answer: Callable[[str], bytes]) -> tuple[asyncio.Server, int]:
    async def on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = json.loads((await reader.read(65536)).decode() or "{}")
        writer.write(answer(str(req.get("command", ""))))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def encode(v: Any) -> bytes:
    return v if isinstance(v, bytes) else json.dumps(v).encode() + b"\x00"


@pytest.mark.parametrize(("fw", "mutate"), cases())
async def test_a_malformed_reply_is_dead_lettered_and_the_sweep_goes_on(
        fw: str, mutate: Mutation) -> None:
    good = reply_of(fw)
    bad = mutate(copy.deepcopy(good))
    status = good.pop("status", None)

    def answer(command: str) -> bytes:
        if command == "status":
            return encode(status[0] if isinstance(bad, dict) else bad)  # type: ignore[index]
        if isinstance(bad, dict):
            return encode({k: v for k, v in bad.items() if k != "status"})
        return encode(bad)

    server, port = await serve(answer)
    sink = ListSink()
    conn = AsicTelemetry([AsicEndpoint("m1", "127.0.0.1", port, fw, web_port=9,
                                       nameplate_w=3000.0)],
                         Emitter(sink, source="connector:asic", site="s"), timeout_s=2.0)
    try:
        await conn.sweep()
    finally:
        server.close()
    dead = [e for e in sink.events if isinstance(e, RecordDeadLettered)]
    assert dead and not [e for e in sink.events if isinstance(e, AsicTelemetryObserved)], \
        sink.events
