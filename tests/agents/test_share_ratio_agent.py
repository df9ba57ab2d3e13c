"""The share-ratio agent under Faust's test_context (memory store, no broker)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents import share_ratio
from schemas.envelope import Event
from schemas.events import RecordDeadLettered, ShareCountsObserved
from schemas.metrics import ShareRatioComputed
from schemas.settings import Settings
from streams.app import create_app
from streams.codec import encode
from streams.worker import register
from tests.factories import T0, sample


def make(tmp_path, app_id: str = "agent-test"):  # type: ignore[no-untyped-def]
    """The agent on a memory-store app, its outputs recorded: (settings, app, agent, list)."""
    settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", share_windows_s=[60],
                        share_update_s=0, share_grace_s=30)
    app = create_app(settings, app_id=app_id)
    app.finalize()
    published: list[Event] = []

    async def record(event: Event) -> None:
        published.append(event)

    agent = register(app, settings, share_ratio.SPEC, publish=record)
    return settings, app, agent, published


@pytest.fixture
def harness(tmp_path):  # type: ignore[no-untyped-def]
    _, _, agent, published = make(tmp_path)
    return agent, published


async def test_agent_folds_events_and_publishes_ratios(harness) -> None:  # type: ignore[no-untyped-def]
    agent, published = harness
    async with agent.test_context() as a:
        for i, (acc, rej) in enumerate([(95, 5), (45, 5), (10, 0)]):
            ev = sample(ShareCountsObserved, worker="w1", device_id="w1", accepted=acc,
                        rejected=rej, stale=0, ts=T0 + timedelta(seconds=[1, 20, 95][i]))
            await a.put(encode(ev), key=b"w1")
    ratios = [m for m in published if isinstance(m, ShareRatioComputed) and m.scope == "worker"]
    assert {m.scope for m in published if isinstance(m, ShareRatioComputed)} == {
        "worker", "device"}
    assert [(m.accepted, m.rejected, m.final) for m in ratios] == [
        (95, 5, False), (140, 10, False), (140, 10, True), (10, 0, False)]
    assert ratios[1].rejected_pct == pytest.approx(100 * 10 / 150)


async def test_agent_dead_letters_bad_records_and_keeps_going(harness) -> None:  # type: ignore[no-untyped-def]
    agent, published = harness
    async with agent.test_context() as a:
        await a.put(b"{not json", key=b"w1")
        await a.put(b'{"kind": "GridMeasured"}', key=b"w1")
        await a.put(encode(sample(ShareCountsObserved, worker="w1", accepted=3, rejected=1)),
                    key=b"w1")
    dead = [m for m in published if isinstance(m, RecordDeadLettered)]
    assert [d.source_topic for d in dead] == ["shares", "shares"]
    assert "not JSON" in dead[0].reason and "not allowed on shares" in dead[1].reason
    ratios = [m for m in published if isinstance(m, ShareRatioComputed)]
    assert [(m.scope, m.accepted) for m in ratios] == [("worker", 3), ("device", 3)]


async def test_a_state_restored_into_the_table_is_read_not_the_worker_s_own_copy(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The agent keeps each device's live state beside the table; when the table holds a
    value it did not save (a restore from the changelog, a partition back from another
    worker), that value is what the next event folds into."""
    settings, app, agent, published = make(tmp_path, "agent-test-restore")
    table = app.tables["share_ratio_devices"]
    ev = sample(ShareCountsObserved, worker="w1", device_id="w1", accepted=10, rejected=0,
                stale=0, ts=T0 + timedelta(seconds=1))
    async with agent.test_context() as a:
        await a.put(encode(ev), key=b"w1")
        saved = table["w1"]
        assert share_ratio.load_device(saved)["worker/w1"].windows[60].windows[
            int(T0.timestamp())].accepted == 10
        # what a restore puts there: another worker's later state of the same device
        elsewhere = share_ratio.load_device(saved)
        elsewhere, _ = share_ratio.device_step(elsewhere, sample(
            ShareCountsObserved, worker="w1", device_id="w1", accepted=1000, rejected=0,
            stale=0, ts=T0 + timedelta(seconds=2)), share_ratio.params(settings))
        table.data["w1"] = share_ratio.save_device(elsewhere)  # the store, as recovery fills it
        await a.put(encode(sample(ShareCountsObserved, worker="w1", device_id="w1",
                                  accepted=5, rejected=0, stale=0,
                                  ts=T0 + timedelta(seconds=3))), key=b"w1")
    ratios = [m for m in published if isinstance(m, ShareRatioComputed) and m.scope == "worker"]
    assert [m.accepted for m in ratios] == [10, 1015]
