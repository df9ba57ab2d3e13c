"""The named history queries (streams/queries.py) against the real ClickHouse engine, and
how the API tells a store outage (503) from a bug (500)."""

from __future__ import annotations

import inspect
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import HTTPException

from agents.scheduler import CYCLE_KIND
from api.app import create_api
from api.context import ApiContext
from schemas.alerts import AlertFired, AlertResolved
from schemas.commands import CommandAcknowledged
from schemas.events import AsicTelemetryObserved
from schemas.registry import topic_of
from schemas.settings import Settings
from streams.codec import encode
from streams.history import HistoryStore
from streams.queries import NUMERIC, Queries, store_reader
from tests.factories import T0, sample

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = HistoryStore(f"chdb://{tmp_path}/ch").open()
    s.migrate()
    yield s
    s.close()


def test_every_query_has_a_docstring() -> None:
    named = [m for n, m in inspect.getmembers(Queries, inspect.iscoroutinefunction)
             if not n.startswith("_")]
    assert len(named) >= 20
    assert all((m.__doc__ or "").strip() for m in named), [m.__name__ for m in named
                                                          if not m.__doc__]


async def test_every_query_runs_on_the_engine(store: HistoryStore) -> None:
    q = Queries(store_reader(store), store.database)
    since, until = T0 - timedelta(days=1), T0 + timedelta(days=1)
    table, field = next(iter(NUMERIC.items()))
    answers: dict[str, Any] = {
        "asic_states": await q.asic_states(60), "gpu_totals": await q.gpu_totals(60),
        "active_workers": await q.active_workers(60),
        "command_outcomes": await q.command_outcomes_last_hour(),
        "asics": await q.asics(60, None, None, 10, 0), "gpus": await q.gpus(60, 10, 0),
        "gpu_profiles": await q.gpu_profiles(["g"]),
        "latest_rewards": await q.latest_rewards(["w"], 60),
        "workers": await q.workers(60, 60, 10, 0),
        "window_rewards": await q.window_rewards(["w"], 60),
        "worker_windows": await q.worker_windows("w", 60, since, until, 10),
        "rewards": await q.rewards(since, until, 60, None, 10, 0),
        "energy_latest": await q.energy_latest("site-1"),
        "energy_buckets": await q.energy_buckets("site-1", since, until, 10),
        "commands": await q.commands(since, until, None, None, None, None, 10, 0),
        "firing": await q.firing_alerts(), "alert_history": await q.alert_history(
            since, until, None, 10, 0),
        "jobs": await q.jobs(since, until, None, 10, 0), "scores": await q.scores(None),
        "trials": await q.tuner_trials(since, until, None, 10, 0),
        "series": await q.series(table, field[0], "avg", "fleet", 60, [], since, until),
        "tuning_trials": await q.tuning_trials(since, until)}
    assert answers["energy_latest"] is None and answers["gpu_totals"]["n"] == 0
    assert all(v in ([], {}, None, 0) or k == "gpu_totals" for k, v in answers.items()), answers
    with pytest.raises(ValueError, match="not a numeric history field"):
        await q.series(table, "payload; DROP TABLE x", "avg", "device", 60, [], since, until)


async def test_cycles_and_firing_alerts_follow_the_agents_rules(store: HistoryStore) -> None:
    q = Queries(store_reader(store), store.database)
    recent = T0.replace(year=2100)  # "seen within" is relative to the engine's clock
    tele = sample(AsicTelemetryObserved, device_id="a1", ts=recent)
    acks = [sample(CommandAcknowledged, device_id="a1", command_kind=kind, status=status,
                   ts=recent - timedelta(minutes=i))
            for i, (kind, status) in enumerate([(CYCLE_KIND, "applied"),
                                                (CYCLE_KIND, "applied"),
                                                (CYCLE_KIND, "rejected"),
                                                ("WakeAsic", "applied")])]
    fired = sample(AlertFired, dedup_key="k1", ts=T0)
    fired2 = sample(AlertFired, dedup_key="k2", ts=T0)
    resolved = sample(AlertResolved, dedup_key="k2", ts=T0 + timedelta(minutes=1))
    events = [tele, *acks, fired, fired2, resolved]
    store.insert_events([(e.event_id, topic_of(type(e)).name, e.kind, e.schema_version, e.site,
                          e.device_id, e.ts, e.ts, e.source, encode(e).decode(), 0, n)
                         for n, e in enumerate(events)])
    (row,) = await q.asics(10 ** 9, "a1", None, 10, 0)
    assert row["cycles"] == 2  # applied sleeps only (agents.scheduler's rule)
    assert [a["dedup_key"] for a in await q.firing_alerts()] == ["k1"]


async def test_a_store_failure_is_503_and_a_bug_is_500(
        store: HistoryStore, tmp_path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, api_keys={"r": "read"}, api_store_connections=1)
    # a store that is down for real: a ClickHouse server URL where nothing listens
    down = ApiContext(settings, HistoryStore("http://default:@127.0.0.1:1", "hashplane"))
    with pytest.raises(HTTPException) as e:
        await down.q("SELECT 1")
    assert e.value.status_code == 503
    down.close()

    class Failing:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def query_dicts(self, *_: Any) -> Any:
            raise self.exc

    ctx = ApiContext(settings, store)
    ctx.pool().get_nowait()
    ctx.pool().put_nowait(Failing(TypeError("a bug")))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await ctx.q("SELECT 1")

    app = create_api(settings, store, live=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        async def broken(self: Queries, *a: Any) -> Any:
            raise KeyError("a programming error")

        monkeypatch.setattr(Queries, "gpus", broken)
        with caplog.at_level(logging.ERROR):
            r = await client.get("/v1/gpus", headers={"Authorization": "Bearer r"})
    assert r.status_code == 500
    assert "a programming error" in caplog.text  # logged with its traceback
