"""The price connector against a real HTTP server and real files: what it publishes, what it
publishes again (only what changed), and what bad sources and rows get (dlq, an error
counted, never a stopped connector)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.base import Emitter, ListSink
from connectors.power_price import PriceFeed
from schemas.events import HashpriceObserved, PowerPriceObserved, RecordDeadLettered
from schemas.site import Price
from sim.asgi import WebDevice

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
DAY_AHEAD = ("start,end,price_per_mwh\n"
             "2026-12-02T10:00:00Z,2026-12-02T11:00:00Z,52.10\n"
             "2026-12-02T11:00:00Z,2026-12-02T12:00:00Z,61.35\n")


def feed(source: str, **kw: Any) -> tuple[PriceFeed, ListSink]:
    sink = ListSink()
    em = Emitter(sink, source="connector:price", site="site-1", clock=lambda: NOW)
    return PriceFeed(Price(source=source, **kw), em, currency="EUR"), sink


def kinds(sink: ListSink, kind: type) -> list[Any]:  # type: ignore[type-arg]
    return [e for e in sink.events if isinstance(e, kind)]


async def poll(f: PriceFeed) -> int:
    async with httpx.AsyncClient() as client:
        return await f.poll(client)


async def test_a_csv_file_is_published_once_and_a_revised_interval_again(tmp_path: Path) -> None:
    path = tmp_path / "da.csv"
    path.write_text(DAY_AHEAD)
    f, sink = feed(str(path), currency="EUR", hashprice_per_th_day=0.048)
    assert await poll(f) == 3  # the hashprice and two hours
    prices = kinds(sink, PowerPriceObserved)
    assert [(p.interval_start.hour, p.price_per_mwh, p.market, p.currency) for p in prices] == [
        (10, 52.10, "day_ahead", "EUR"), (11, 61.35, "day_ahead", "EUR")]
    assert kinds(sink, HashpriceObserved)[0].hashprice_per_th_day == 0.048
    assert await poll(f) == 0  # nothing new
    path.write_text(DAY_AHEAD.replace("61.35", "75.00"))
    assert await poll(f) == 1
    revised = kinds(sink, PowerPriceObserved)[-1]
    assert revised.price_per_mwh == 75.0 and revised.event_id != prices[1].event_id
    # a restarted connector republishes under the same ids: the sinks keep one of each
    g, sink2 = feed(str(path), currency="EUR")
    await poll(g)
    assert {e.event_id for e in kinds(sink2, PowerPriceObserved)} == {
        prices[0].event_id, revised.event_id}


async def test_json_over_http_with_real_time_rows() -> None:
    doc = {"currency": "EUR", "prices": [
        {"start": "2026-12-02T10:00:00Z", "minutes": 60, "price": 40.0},
        {"start": "2026-12-02T10:15:00Z", "minutes": 5, "price": 180.5, "market": "rt"}]}
    from fastapi import FastAPI

    app = FastAPI()
    app.get("/api/prices")(lambda: doc)
    dev = WebDevice(app)
    await dev.start()
    try:
        f, sink = feed(f"{dev.url}/api/prices")
        assert await poll(f) == 2
    finally:
        await dev.stop()
    rt = [p for p in kinds(sink, PowerPriceObserved) if p.market == "real_time"]
    assert len(rt) == 1 and rt[0].price_per_mwh == 180.5
    assert (rt[0].interval_end - rt[0].interval_start).total_seconds() == 300


async def test_an_unreachable_or_missing_source_counts_an_error_and_the_next_poll_works(
        tmp_path: Path) -> None:
    path = tmp_path / "later.csv"
    f, _ = feed(str(path))
    assert await poll(f) == 0 and f.emitter.stats.errors == 1
    path.write_text(DAY_AHEAD)
    assert await poll(f) == 2
    dead, _ = feed("http://127.0.0.1:9/prices.json")  # nothing listens on the discard port
    assert await poll(dead) == 0 and dead.emitter.stats.errors == 1


async def test_http_errors_and_oversized_bodies_are_errors_not_prices() -> None:
    from fastapi import FastAPI, Response

    app = FastAPI()
    app.get("/down")(lambda: Response(status_code=503))
    app.get("/huge")(lambda: Response(b"x" * (PriceFeed.MAX_BYTES + 10)))
    dev = WebDevice(app)
    await dev.start()
    try:
        for path in ("/down", "/huge"):
            f, sink = feed(dev.url + path, format="csv")
            assert await poll(f) == 0 and f.emitter.stats.errors == 1, path
            assert not kinds(sink, PowerPriceObserved)
    finally:
        await dev.stop()


@pytest.mark.parametrize(("text", "why"), [
    ("start,price\n2026-12-02T10:00:00Z,abc\n", "could not convert"),
    ("start,end,price\n2026-12-02T10:00:00Z,2026-12-02T09:00:00Z,50\n", "ends before"),
    ("start,end,price\n2026-12-02T10:00:00Z,2026-12-20T10:00:00Z,50\n", "not a market interval"),
    ("start,minutes,price\n2026-12-02T10:00:00Z,60,1e9\n", "outside"),
    ("start,minutes,price,market\n2026-12-02T10:00:00Z,60,50,intraday\n", "market"),
    ("start,minutes,price\n99999999999999,60,50\n", "interval"),
    ('{"prices": 5}', "expected a list"),
    ("{not json", "not JSON"),
])
async def test_each_bad_row_goes_to_dlq_with_its_reason(tmp_path: Path, text: str,
                                                        why: str) -> None:
    path = tmp_path / ("p.json" if text.startswith("{") else "p.csv")
    path.write_text(text)
    f, sink = feed(str(path))
    assert await poll(f) == 0
    (letter,) = kinds(sink, RecordDeadLettered)
    assert letter.source_topic == "prices" and why in letter.reason, letter.reason
    assert str(path) in letter.reason


async def test_prices_in_another_currency_are_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "usd.json"
    path.write_text(json.dumps({"currency": "USD", "prices": [
        {"start": "2026-12-02T10:00:00Z", "minutes": 60, "price": 40.0}]}))
    f, sink = feed(str(path))
    assert await poll(f) == 0
    (letter,) = kinds(sink, RecordDeadLettered)
    assert "prices in USD, the site's currency is EUR" in letter.reason


async def test_the_connector_keeps_running_through_bad_polls(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("garbage,\x00\x01\n,,,\n")
    f, sink = feed(str(path), poll_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(f.run(stop))
    await asyncio.sleep(0.2)
    path.write_text(DAY_AHEAD)
    for _ in range(100):
        if kinds(sink, PowerPriceObserved):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(kinds(sink, PowerPriceObserved)) == 2
    assert kinds(sink, RecordDeadLettered)  # the garbage was named, once (rate-limited)


async def test_a_hashprice_feed_in_luxor_units_wins_over_the_configured_value(
        tmp_path: Path) -> None:
    prices, hp = tmp_path / "da.csv", tmp_path / "hashprice.json"
    prices.write_text(DAY_AHEAD)
    hp.write_text('{"hashprice_per_ph_day": 48.1, "currency": "EUR"}')
    f, sink = feed(str(prices), hashprice_source=str(hp), hashprice_per_th_day=0.03)
    await poll(f)
    assert [e.hashprice_per_th_day for e in kinds(sink, HashpriceObserved)] == [
        pytest.approx(0.0481)]  # 48.1 per PH/s per day
    await poll(f)  # unchanged: not published again
    hp.write_text('{"hashprice_per_th_day": 0.052}')
    await poll(f)
    assert [e.hashprice_per_th_day for e in kinds(sink, HashpriceObserved)] == [
        pytest.approx(0.0481), 0.052]


@pytest.mark.parametrize(("doc", "why"), [
    ("{nope", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"price": 5}', "no hashprice_per_th_day"),
    ('{"hashprice_per_th_day": "abc"}', "is not a number"),
    ('{"hashprice_per_th_day": true}', "is not a number"),
    ('{"hashprice_per_ph_day": 5e9}', "outside 0..1000"),
    ('{"hashprice_per_th_day": -1}', "outside 0..1000"),
    ('{"hashprice_per_th_day": 0.05, "currency": "USD"}', "hashprice in USD"),
])
async def test_a_bad_hashprice_document_goes_to_dlq_and_the_last_value_holds(
        tmp_path: Path, doc: str, why: str) -> None:
    prices, hp = tmp_path / "da.csv", tmp_path / "hashprice.json"
    prices.write_text(DAY_AHEAD)
    hp.write_text('{"hashprice_per_th_day": 0.044}')
    f, sink = feed(str(prices), hashprice_source=str(hp))
    await poll(f)
    hp.write_text(doc)
    await poll(f)
    (letter,) = kinds(sink, RecordDeadLettered)
    assert why in letter.reason and str(hp) in letter.reason, letter.reason
    assert [e.hashprice_per_th_day for e in kinds(sink, HashpriceObserved)] == [0.044]
    hp.unlink()  # a missing feed: the connector's error, and still the last value
    await poll(f)
    assert f.emitter.stats.errors == 1 and len(kinds(sink, HashpriceObserved)) == 1
