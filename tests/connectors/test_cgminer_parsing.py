"""CGMiner replies: recorded valid, quirky and malformed payloads through the pure parsers."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from connectors.cgminer import (
    AsicEndpoint,
    CgminerDecodeError,
    counters,
    parse_reply,
    parse_telemetry,
)
from connectors.shares import Counters, share_delta
from sim.asic import MODELS, PoolSlot, SimAsic
from sim.luxos import LuxosApi
from tests.factories import T0

EP = AsicEndpoint("asic-00001", "127.0.1.1")


def recorded(command: str = "summary+pools+stats+power+config+version", t: float = 300.0,
             **asic_kw: object) -> bytes:
    """A reply recorded from the simulated LuxOS miner (the same bytes it puts on the wire)."""
    a = SimAsic(0, "127.0.1.1", MODELS["S19j Pro"], [PoolSlot("stratum+tcp://pool:3333",
                                                               "farm.asic1")], **asic_kw)  # type: ignore[arg-type]
    return LuxosApi(a, lambda: t).handle(json.dumps({"command": command}).encode())


def test_valid_luxos_reply_becomes_telemetry() -> None:
    reply = parse_reply(recorded())
    tel = parse_telemetry(reply, EP, site="s", ts=T0)
    assert tel.model == "Antminer S19j Pro" and tel.state == "running"
    assert tel.hashrate_ths == pytest.approx(104, rel=0.05) and tel.power_w == 3068
    assert tel.temp_chip_c and tel.temp_board_c and tel.temp_board_c < tel.temp_chip_c
    assert len(tel.fan_rpm) == 4 and tel.pool_url == "stratum+tcp://pool:3333"
    assert tel.elapsed_s == 300 and tel.accepted > 0


CGMINER_SUMMARY = (b'{"STATUS":[{"STATUS":"S","When":1,"Code":11,"Msg":"Summary",'
                   b'"Description":"cgminer 4.11.1"}],"SUMMARY":[{"Elapsed":120,'
                   b'"MHS av":95000000.5,"MHS 5s":96000000.0,"Accepted":40,"Rejected":1,'
                   b'"Stale":0,"Hardware Errors":3,"Difficulty Accepted":2621440.0}],"id":1}')


@pytest.mark.parametrize(("name", "raw"), [
    ("nul terminator", CGMINER_SUMMARY + b"\x00"),
    ("trailing comma in object", CGMINER_SUMMARY.replace(b'2621440.0}', b'2621440.0,}')),
    ("trailing comma in list", CGMINER_SUMMARY.replace(b'2621440.0}]', b'2621440.0},]')),
    ("bare inf", CGMINER_SUMMARY.replace(b'"Stale":0', b'"Stale":0,"Utility":inf')),
    ("bare nan", CGMINER_SUMMARY.replace(b'"Stale":0', b'"Stale":0,"Work Utility":nan')),
    ("object run-on }{", CGMINER_SUMMARY.replace(b'}],"id":1}',
                                                 b'}{"Elapsed":1}],"id":1}')),
    ("truncated", CGMINER_SUMMARY[:-20]),
    ("truncated in a string", CGMINER_SUMMARY[:CGMINER_SUMMARY.index(b"Hardware") + 4]),
])
def test_vendor_quirks_are_repaired(name: str, raw: bytes) -> None:
    reply = parse_reply(raw)
    tel = parse_telemetry(reply, EP, site="s", ts=T0)
    assert tel.hashrate_ths == pytest.approx(96.0)
    assert tel.accepted == 40 and tel.state == "running"


@pytest.mark.parametrize(("name", "raw", "error"), [
    ("empty", b"", CgminerDecodeError),
    ("only NUL", b"\x00", CgminerDecodeError),
    ("html", b"<html><body>401 Unauthorized</body></html>", CgminerDecodeError),
    ("plain text", b"Socket connect failed: Connection refused\n", CgminerDecodeError),
    ("binary", bytes(range(0, 256, 7)), CgminerDecodeError),
    ("json number", b"42", CgminerDecodeError),
    ("json string", b'"summary"', CgminerDecodeError),
    ("status E", b'{"STATUS":[{"STATUS":"E","Code":14,"Msg":"Invalid command"}],"id":1}',
     ValueError),
    ("no summary section", b'{"STATUS":[{"STATUS":"S"}],"POOLS":[],"id":1}', ValueError),
    ("summary not a list", b'{"STATUS":[{"STATUS":"S"}],"SUMMARY":{"Elapsed":1},"id":1}',
     ValueError),
    ("unbalanced closers", b'}}]]', CgminerDecodeError),
    ("multi with summary error",
     b'{"summary":[{"STATUS":[{"STATUS":"E","Code":45,"Msg":"Access denied"}]}],"id":1}',
     ValueError),
])
def test_malformed_replies_are_refused_with_a_reason(name: str, raw: bytes,
                                                     error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_telemetry(parse_reply(raw), EP, site="s", ts=T0)


def test_garbage_numbers_do_not_make_negative_or_nan_fields() -> None:
    raw = CGMINER_SUMMARY.replace(b'"Accepted":40', b'"Accepted":-5').replace(
        b'"MHS 5s":96000000.0', b'"MHS 5s":"fast"')
    tel = parse_telemetry(parse_reply(raw), EP, site="s", ts=T0)
    assert tel.accepted == 0 and tel.hashrate_ths == 0 and tel.state == "error"


def test_sleeping_luxos_miner_reads_as_sleeping() -> None:
    raw = recorded(state="sleeping")
    tel = parse_telemetry(parse_reply(raw), EP, site="s", ts=T0)
    assert tel.state == "sleeping" and tel.hashrate_ths == 0 and tel.power_w == 12


def c(acc: int, rej: int, stale: int, elapsed: int, sec: float = 0) -> Counters:
    return Counters(acc, rej, stale, acc * 10.0, rej * 10.0, elapsed,
                    T0 + timedelta(seconds=sec), "w", "p")


def test_share_deltas_from_cumulative_counters() -> None:
    assert share_delta(None, c(10, 1, 0, 100), device_id="d", site="s", source="t") is None
    d = share_delta(c(10, 1, 0, 100), c(25, 2, 1, 110, sec=10), device_id="d", site="s", source="t")
    assert d is not None
    assert (d.accepted, d.rejected, d.stale, d.interval_s, d.counter_reset) == \
        (15, 1, 1, 10.0, False)
    assert d.difficulty_accepted == 150.0


def test_counter_reset_after_restart_is_detected_and_never_negative() -> None:
    d = share_delta(c(500, 9, 2, 3600), c(4, 0, 0, 20, sec=30), device_id="d", site="s", source="t")
    assert d is not None and d.counter_reset and (d.accepted, d.rejected, d.stale) == (4, 0, 0)
    # uptime going backwards with counters still higher (quick restart) is a reset too
    d = share_delta(c(5, 0, 0, 100), c(6, 0, 0, 3, sec=10), device_id="d", site="s", source="t")
    assert d is not None and d.counter_reset and d.accepted == 6


def test_counters_from_a_recorded_reply() -> None:
    cur = counters(parse_reply(recorded()), T0)
    assert cur.worker == "farm.asic1" and cur.pool == "stratum+tcp://pool:3333"
    assert cur.elapsed_s == 300
