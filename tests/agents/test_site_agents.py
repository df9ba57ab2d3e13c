"""The site agents under Faust's test_context (memory store, no broker).

Records are put with the forwarding header naming their contract topic, as the site feed
carries them; the expected outputs are the step functions' own, so the agents are shown
to be wiring only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from agents import alerts, compute, energy, failover, scheduler, site_shares, tuning
from agents.energy import fold as energy_fold
from agents.registry import site_agents
from agents.scheduler import fold as scheduler_fold
from agents.spec import AgentSpec
from schemas.alerts import AlertFired
from schemas.commands import CommandAcknowledged, PauseComputeIntake, SleepAsic, SwitchAsicPool
from schemas.envelope import Event
from schemas.events import (
    AsicTelemetryObserved,
    FeedPowerMeasured,
    GpuTelemetryObserved,
    GridMeasured,
    RecordDeadLettered,
    ShareCountsObserved,
    UplinkStatusObserved,
)
from schemas.metrics import (
    ComputeScoreComputed,
    EnergyHeadroomComputed,
    RewardComputed,
    ShareRatioComputed,
)
from schemas.registry import topic_of
from schemas.settings import Settings
from streams import worker
from streams.app import BATCH_HEADER, TOPIC_HEADER, create_app, pack, unpack
from streams.codec import encode
from streams.feed import gather
from tests.factories import T0


@pytest.fixture
def settings(tmp_path):  # type: ignore[no-untyped-def]
    return Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", share_windows_s=[60],
                    share_update_s=0, energy_emit_s=0, energy_margin_kw=0, sched_min_on_s=0,
                    energy_warmup_s=0, energy_max_age_s=0,  # the fold's rule alone: fixed T0
                    sched_min_off_s=0, sched_hysteresis_kw=0, uplink_hold_down_s=10)


def make(settings: Settings, what: Any) -> tuple[Any, list[Event]]:
    """An agent spec run by the worker's runner (or a register function), publishing into a
    list."""
    app = create_app(settings, app_id="agent-test")
    app.finalize()
    published: list[Event] = []

    async def record(event: Event) -> None:
        published.append(event)

    if isinstance(what, AgentSpec):
        return worker.register(app, settings, what, publish=record), published
    return what(app, settings, publish=record), published


async def put_all(agent: Any, events: list[Event]) -> None:
    async with agent.test_context() as a:
        for e in events:
            await a.put(encode(e), key=e.device_id.encode(),
                        headers={TOPIC_HEADER: topic_of(type(e)).name.encode()})


def at(sec: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=sec)


def tele(sec: float, dev: str, kw: float = 3.0) -> AsicTelemetryObserved:
    return AsicTelemetryObserved(
        site="site-1", device_id=dev, ts=at(sec), source="t", state="running",
        hashrate_ths=100, hashrate_avg_ths=100, power_w=kw * 1000, accepted=0, rejected=0,
        stale=0, hardware_errors=0, elapsed_s=1, pool_url="stratum+tcp://up:3333")


def grid(sec: float, hz: float) -> GridMeasured:
    return GridMeasured(site="site-1", device_id="meter", ts=at(sec), source="t",
                        frequency_hz=hz, voltage_v=400, active_power_kw=0, reactive_power_kvar=0)


def feed(sec: float, cap: float) -> FeedPowerMeasured:
    return FeedPowerMeasured(site="site-1", device_id="f1", ts=at(sec), source="t", feed_id="f1",
                             voltage_v=400, current_a=10, power_kw=5, capacity_kw=cap)


async def test_energy_agent_publishes_what_the_step_function_computes(settings) -> None:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"supply_feeds": ["f1"]})
    events: list[Any] = [feed(0, 20), tele(0, "a0"), tele(0, "a1"), grid(1, 50.0), grid(2, 49.7)]
    agent, published = make(settings, energy.SPEC)
    await put_all(agent, events)
    _, expected = energy_fold(events, energy.params(settings))
    # no headroom on the feed alone: without a meter reading the grid is unknown
    assert published == expected and [m.ts for m in expected] == [at(1), at(2)]
    assert published[-1].band == "below-49.8Hz" and published[-1].load_kw == 6.0


async def test_scheduler_agent_commands_and_persists_cycles_from_acks(settings) -> None:  # type: ignore[no-untyped-def]
    e = EnergyHeadroomComputed(site="site-1", device_id="site-1", ts=at(1), source="t",
                               supply_kw=20, margin_kw=0, available_kw=20, load_kw=6,
                               asic_load_kw=6, gpu_load_kw=0, headroom_kw=14, target_load_kw=3)
    events: list[Any] = [tele(0, "a0"), tele(0, "a1"), e]
    _, (cmd,) = scheduler_fold(events, scheduler.params(settings))
    ack = CommandAcknowledged(site="site-1", device_id=cmd.device_id, ts=at(2), source="act",
                              command_id=cmd.command_id, command_kind="SleepAsic",
                              status="applied", latency_ms=3, actuator="t")
    agent, published = make(settings, scheduler.SPEC)
    await put_all(agent, events)
    table = agent.app.tables["scheduler_asics"]
    # the command in flight is kept too: a restarted scheduler waits for its ack; and the
    # efficiency last measured (3 kW / 100 TH/s = 30 J/TH)
    assert table[f"site-1/{cmd.device_id}"] == [
        0, None, None, [str(cmd.command_id), "SleepAsic", cmd.expires_at.timestamp()], 30.0]
    await put_all(agent, [ack])
    assert published == [cmd] and isinstance(cmd, SleepAsic)
    assert table[f"site-1/{cmd.device_id}"] == [1, at(2).timestamp(), None, None, 30.0]


async def test_failover_agent_switches_to_the_local_pool(settings) -> None:  # type: ignore[no-untyped-def]
    down = [UplinkStatusObserved(site="site-1", device_id="uplink", ts=at(s), source="t",
                                 target="x", up=False) for s in (1, 2)]
    agent, published = make(settings, failover.SPEC)
    await put_all(agent, [tele(0, "a0"), *down])
    assert [(type(c), c.pool_url) for c in published] == [  # type: ignore[attr-defined]
        (SwitchAsicPool, settings.local_pool_url)]
    assert agent.app.tables["failover_home_pools"]["site-1/a0"] == "stratum+tcp://up:3333"


async def test_site_shares_agent_pool_site_ratios_and_rewards(settings) -> None:  # type: ignore[no-untyped-def]
    def sh(sec: float, w: str, a: int, r: int) -> ShareCountsObserved:
        return ShareCountsObserved(site="site-1", device_id=w, ts=at(sec), source="t", worker=w,
                                   pool="stratum+tcp://p:1", accepted=a, rejected=r, interval_s=5)
    temp = GpuTelemetryObserved(site="site-1", device_id="g1", ts=at(5), source="t",
                                rig_id="rig", gpu_index=0, card="RTX 4090", power_w=300,
                                power_limit_w=450, temp_c=92, core_clock_mhz=1,
                                mem_clock_mhz=1)
    agent, published = make(settings, site_shares.SPEC)
    await put_all(agent, [sh(1, "g1", 19, 1), sh(2, "a1", 80, 0), temp, sh(95, "a1", 1, 0)])
    ratios = [m for m in published if isinstance(m, ShareRatioComputed) and m.final]
    assert {(m.scope, m.accepted, m.rejected) for m in ratios} == {("pool", 99, 1),
                                                                    ("site", 99, 1)}
    by = {m.worker: m for m in published if isinstance(m, RewardComputed)}
    assert by["g1"].temp_c == 92 and by["g1"].cluster_accepted == 99
    assert by["g1"].reward == pytest.approx(100 - 5 - 2 - 5 * (1 - 19 / 99))


async def test_compute_and_alert_agents(settings) -> None:  # type: ignore[no-untyped-def]
    short = EnergyHeadroomComputed(site="site-1", device_id="site-1", ts=at(1), source="t",
                                   supply_kw=10, margin_kw=0, available_kw=10, load_kw=12,
                                   asic_load_kw=12, gpu_load_kw=0, headroom_kw=-2,
                                   target_load_kw=10)
    gpu = GpuTelemetryObserved(site="site-1", device_id="rig-gpu0", ts=at(0), source="t",
                               rig_id="rig", gpu_index=0, card="H100", power_w=300,
                               power_limit_w=700, temp_c=60, core_clock_mhz=1, mem_clock_mhz=1)
    agent, published = make(settings, compute.SPEC)
    await put_all(agent, [gpu, short])
    assert [type(m) for m in published] == [ComputeScoreComputed, PauseComputeIntake]
    assert agent.app.tables["compute_gate"]["site-1"] is True

    agent, published = make(settings, alerts.SPEC)
    await put_all(agent, [grid(0, 49.6), short])
    assert [(m.rule, m.severity) for m in published if isinstance(m, AlertFired)] == [
        ("grid_frequency_low", "warning"), ("load_near_supply", "critical")]
    firing = agent.app.tables["alerts_firing"]
    assert firing["site-1/grid_frequency_low/meter"][:2] == ["grid_frequency_low", "warning"]


def test_site_feed_gathers_validated_records_and_letters_bad_ones(settings: Settings) -> None:
    readers = [s for s in site_agents() if s.enabled(settings)]
    good, spaced = tele(0, "a0"), tele(0, "a2")
    # valid JSON with a raw newline, which would split a packed batch: encoded again
    spaced_raw = encode(spaced).replace(b',"kind"', b',\n"kind"')

    def rec(offset: int, value: bytes, key: bytes = b"a0") -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord("asic.telemetry", 3, offset, 1_700_000_000_000, 0, key, value,
                              None, len(key), len(value), [])

    got = gather([rec(10, encode(good)), rec(11, b"{oops", b"a1"), rec(12, spaced_raw, b"a2")],
                 readers, "site-1", at(1))
    assert got.entries == [("asic.telemetry", encode(good)), ("asic.telemetry", encode(spaced))]
    (letter,) = got.letters
    assert (letter.source_topic, letter.device_id, letter.partition, letter.offset) == \
        ("asic.telemetry", "a1", 3, 11)
    assert letter.reason.startswith("not JSON")
    assert got.last == {TopicPartition("asic.telemetry", 3): 12}
    # the same record again gets the same letter (lettered once downstream)
    again = gather([rec(11, b"{oops", b"a1")], readers, "site-1", at(2))
    assert again.letters[0].event_id == letter.event_id
    assert unpack(pack(got.entries)) == got.entries


async def test_tuner_agent_commands_a_bounded_first_trial_for_gpus_in_tuning_mode(
        settings: Settings) -> None:
    s = settings.model_copy(update={"tuner_gpus": ["rig01-gpu0"], "tuner_optimizer": "random"})
    agent, published = make(s, tuning.SPEC)
    gpu = [GpuTelemetryObserved(
        site="site-1", device_id=d, ts=at(1), source="t", rig_id="rig01", gpu_index=i,
        card="NVIDIA GeForce RTX 3090", hashrate_mhs=110, power_w=300, power_limit_w=350,
        temp_c=65, core_clock_mhz=1695, mem_clock_mhz=9751)
        for i, d in enumerate(["rig01-gpu0", "rig01-gpu1"])]
    await put_all(agent, gpu)
    (cmd,) = published  # only the GPU in tuning mode
    assert cmd.kind == "ApplyGpuProfile" and cmd.device_id == "rig01-gpu0"
    assert cmd.issued_by == "agent:tuner" and cmd.reason == "tuning trial 1"
    # a bounded step from the card's current settings (350 W, no offsets, intensity 22)
    assert abs(cmd.power_limit_w - 350) <= 0.25 * 300 + 0.1
    assert abs(cmd.mem_offset_mhz) <= 0.25 * 2200 + 1


def test_the_worker_runs_the_tuner_only_when_gpus_are_in_tuning_mode(
        settings: Settings) -> None:
    names = {a.name for a in worker.build_app(settings).agents.values()}
    assert not any("tuner" in n for n in names)
    tuned = settings.model_copy(update={"tuner_gpus": ["rig01-gpu0"]})
    assert any("tuner" in a.name for a in worker.build_app(tuned).agents.values())


def test_the_lanes_split_the_agents_between_two_workers_that_keep_the_changelog_names(
        settings: Settings) -> None:
    """``up`` runs the control path (energy, scheduler) in a worker process of its own: the
    lanes together run exactly the agents of one worker running all of them, each once;
    the control lane is its own consumer group; every table keeps its changelog topic."""
    apps = {lane: worker.build_app(settings, watchdog_s=0, lane=lane)
            for lane in ("all", "control", "main")}
    agents = {lane: sorted(a.name for a in app.agents.values()) for lane, app in apps.items()}
    logs = {lane: {t.changelog_topic.get_topic_name() for t in app.tables.values()}
            for lane, app in apps.items()}
    # the site feed's forwarder runs with the control path: what the scheduler folds
    # (telemetry, acks) never waits behind the main lane's share ratios
    assert agents["control"] == ["energy", "energy-feed", "scheduler", "scheduler-feed"]
    # (a task of the worker, not a Faust agent: streams/feed.py); the partition feed's with
    # the share ratios, in the main lane: each lane one forwarder, a worker of all both
    assert [worker.forwards(lane) for lane in ("all", "control", "main")] == [True, True, False]
    assert [len(app._app_tasks) - len(apps["main"]._app_tasks)
            for lane, app in apps.items()] == [1, 0, 0]
    assert "share_ratio" in agents["main"]
    assert sorted(agents["control"] + agents["main"]) == agents["all"]
    assert logs["control"] | logs["main"] == logs["all"]
    assert not logs["control"] & logs["main"]
    assert {"hashplane-energy_caps-changelog", "hashplane-scheduler_asics-changelog"} == \
        logs["control"]
    assert [apps[lane].conf.id for lane in ("all", "control", "main")] == \
        ["hashplane", "hashplane-control", "hashplane"]


async def test_a_site_agent_folds_a_feed_batch_as_the_records_it_holds(settings) -> None:  # type: ignore[no-untyped-def]
    """The feed's batches (many readings in one record) fold exactly as the readings one by
    one would; the meter's readings come on the agent's other lane."""
    settings = settings.model_copy(update={"supply_feeds": ["f1"]})
    telemetry = [tele(0, f"a{i}") for i in range(50)]
    events: list[Any] = [feed(0, 200), *telemetry, grid(1, 50.0), grid(2, 49.7)]
    agent, published = make(settings, energy.SPEC)
    async with agent.test_context() as a:
        await a.put(encode(events[0]), key=b"f1", headers={TOPIC_HEADER: b"power.readings"})
        await a.put(pack([("asic.telemetry", encode(t)) for t in telemetry]), key=b"site-1",
                    headers={BATCH_HEADER: b"1"})
        for g in events[-2:]:
            await a.put(encode(g), key=b"meter", headers={TOPIC_HEADER: b"grid.readings"})
    _, expected = energy_fold(events, energy.params(settings))
    assert published == expected and published[-1].load_kw == 150.0


async def test_a_feed_batch_s_undecodable_reading_is_dead_lettered_alone(
        settings: Settings) -> None:
    settings = settings.model_copy(update={"supply_feeds": ["f1"]})
    telemetry = [tele(0, f"a{i}") for i in range(3)]
    events: list[Any] = [feed(0, 200), *telemetry, grid(1, 50.0)]
    agent, published = make(settings, energy.SPEC)
    lines = [("asic.telemetry", encode(telemetry[0])), ("asic.telemetry", b'{"kind": 1}'),
             *[("asic.telemetry", encode(t)) for t in telemetry[1:]]]
    async with agent.test_context() as a:
        await a.put(encode(events[0]), key=b"f1", headers={TOPIC_HEADER: b"power.readings"})
        await a.put(pack(lines), key=b"site-1", headers={BATCH_HEADER: b"1"})
        await a.put(encode(events[-1]), key=b"meter", headers={TOPIC_HEADER: b"grid.readings"})
    letters = [e for e in published if isinstance(e, RecordDeadLettered)]
    _, expected = energy_fold(events, energy.params(settings))
    assert [(x.source_topic, x.reason) for x in letters] == [("asic.telemetry", "missing 'kind'")]
    assert [e for e in published if not isinstance(e, RecordDeadLettered)] == expected
    assert expected[-1].load_kw == 9.0


async def test_the_energy_agent_warms_up_from_its_first_event_even_one_deciding_nothing(
        settings: Settings) -> None:
    """The restart guard counts from the first record folded; a telemetry reading, which
    decides nothing and skips the live guard's call, still starts the warm-up."""
    settings = settings.model_copy(update={"supply_feeds": ["f1"], "energy_warmup_s": 5.0})
    app = create_app(settings, app_id="agent-test")
    app.finalize()
    published: list[Event] = []
    now = [at(0)]

    async def record(event: Event) -> None:
        published.append(event)

    agent = worker.register(app, settings, energy.SPEC, publish=record, clock=lambda: now[0])
    # (event, processing time): the meter at 4 s after the first record is in the warm-up,
    # at 6 s it is not
    timed: list[tuple[Any, float]] = [(tele(0, "a0"), 0), (feed(0, 20), 1), (grid(1, 50.0), 4),
                                      (grid(2, 49.7), 6)]
    async with agent.test_context() as a:
        for e, t in timed:
            now[0] = at(t)
            await a.put(encode(e), key=e.device_id.encode(),
                        headers={TOPIC_HEADER: topic_of(type(e)).name.encode()})
    assert [(m.ts, m.band) for m in published] == [(at(2), "below-49.8Hz")]
