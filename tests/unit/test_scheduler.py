"""ASIC scheduler and pool failover, fed plain lists."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from agents.failover import FailoverParams
from agents.failover import fold as failover_fold
from agents.scheduler import SchedulerParams, fold
from schemas.commands import CommandAcknowledged, SleepAsic, WakeAsic
from schemas.events import AsicTelemetryObserved, UplinkStatusObserved
from schemas.metrics import EnergyHeadroomComputed
from tests.factories import T0

P = SchedulerParams(min_on_s=0, min_off_s=0, hysteresis_kw=1, wake_batch=100,
                    wake_interval_s=0, ttl_s=10)


def at(sec: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=sec)


def tele(sec: float, dev: str, kw: float = 3.0, state: str = "running",
         pool: str = "stratum+tcp://up:3333") -> AsicTelemetryObserved:
    return AsicTelemetryObserved(
        site="site-1", device_id=dev, ts=at(sec), source="test", state=state,  # type: ignore[arg-type]
        hashrate_ths=100, hashrate_avg_ths=100, power_w=kw * 1000 if state == "running" else 10,
        accepted=0, rejected=0, stale=0, hardware_errors=0, elapsed_s=1, pool_url=pool)


def energy(sec: float, target: float, available: float = 100.0, load: float = 0.0,
           asic: float | None = None) -> EnergyHeadroomComputed:
    return EnergyHeadroomComputed(
        site="site-1", device_id="site-1", ts=at(sec), source="test", supply_kw=available,
        margin_kw=0, available_kw=available, load_kw=load,
        asic_load_kw=load if asic is None else asic, gpu_load_kw=0 if asic is None else load - asic,
        headroom_kw=available - load, target_load_kw=target)


def ack(sec: float, cmd: SleepAsic | WakeAsic, status: str = "applied") -> CommandAcknowledged:
    return CommandAcknowledged(site="site-1", device_id=cmd.device_id, ts=at(sec), source="act",
                               command_id=cmd.command_id, command_kind=cmd.kind,
                               status=status, latency_ms=5, actuator="test")  # type: ignore[arg-type]


def fleet(n: int, sec: float = 0) -> list[AsicTelemetryObserved]:
    return [tele(sec, f"a{i}") for i in range(n)]


def test_shed_to_target_and_never_plan_above_supply() -> None:
    _, out = fold([*fleet(10), energy(1, target=15, load=30)], P)
    assert all(isinstance(c, SleepAsic) for c in out) and len(out) == 5
    assert all(c.expires_at == at(11) and "budget 15.0 kW" in c.reason for c in out)


def test_fewest_cycles_first_then_oldest_last_off_from_acks() -> None:
    events = [*fleet(4)]
    # a0 and a1 have cycled (a1 longest ago); a2/a3 never
    s1 = SleepAsic(site="site-1", device_id="a0", ts=at(1), source="t", issued_at=at(1),
                   expires_at=at(9), reason="", issued_by="t")
    s2 = s1.model_copy(update={"device_id": "a1", "command_id": UUID(int=2)})
    s3 = s1.model_copy(update={"device_id": "a1", "command_id": UUID(int=3)})
    events += [ack(2, s1), ack(1.5, s2), ack(1.6, s3)]  # a1: two cycles
    events += [tele(3, f"a{i}") for i in range(4)]  # all awake again
    state, out = fold([*events, energy(4, target=6, load=12)], P)
    assert state.asics["a1"].cycles == 2 and state.asics["a0"].cycles == 1
    assert [c.device_id for c in out] == ["a2", "a3"]  # the never-cycled first
    state, out = fold([*events, energy(4, target=3, load=12)], P)
    assert [c.device_id for c in out] == ["a2", "a3", "a0"]


def test_wake_order_dwell_stagger_and_hysteresis() -> None:
    p = SchedulerParams(min_on_s=0, min_off_s=30, hysteresis_kw=1, wake_batch=2,
                        wake_interval_s=5, ttl_s=10)
    events = [tele(0, f"a{i}", state="sleeping") for i in range(5)]
    _, out = fold([*events, energy(1, target=100)], p)
    assert len(out) == 2 and all(isinstance(c, WakeAsic) for c in out)  # batch of 2
    _, out = fold([*events, energy(1, target=100), energy(3, target=100), energy(6, target=100)], p)
    assert len(out) == 4  # next batch only after the 5 s stagger step
    # hysteresis: budget 7 fits two 3-kW units only with 1 kW spare each time
    _, out = fold([*events, energy(1, target=6.5)], p)
    assert len(out) == 1


def test_min_dwell_spared_unless_supply_is_exceeded() -> None:
    p = SchedulerParams(min_on_s=300, min_off_s=0, hysteresis_kw=0, ttl_s=10)
    wake = WakeAsic(site="site-1", device_id="a0", ts=at(0), source="t", issued_at=at(0),
                    expires_at=at(9), reason="", issued_by="t")
    base = [*fleet(2), ack(1, wake)]  # a0 just woke
    _, out = fold([*base, energy(2, target=3, available=10, load=6)], p)
    assert [c.device_id for c in out] == ["a1"]  # a0 spared: within its min on-time
    _, out = fold([*base, energy(2, target=0, available=2, load=6)], p)
    assert sorted(c.device_id for c in out) == ["a0", "a1"]  # supply beats dwell


def test_in_flight_command_not_repeated_until_ack_or_expiry() -> None:
    _, out = fold([*fleet(1), energy(1, target=0, load=3), energy(2, target=0, load=3)], P)
    assert len(out) == 1
    _, out = fold([*fleet(1), energy(1, target=0, load=3), energy(12, target=0, load=3)], P)
    assert len(out) == 2 and out[0].command_id != out[1].command_id  # expired: re-issued


def test_duplicate_ack_counts_one_cycle_and_failed_ack_none() -> None:
    e = energy(1, target=0, load=6)
    _, (a, b) = fold([*fleet(2), e], P)
    state, _ = fold([*fleet(2), e, ack(2, a), ack(2, a), ack(2, b, "failed")], P)
    assert state.asics["a0"].cycles + state.asics["a1"].cycles == 1
    assert all(x.pending is None for x in state.asics.values())


def test_offline_asics_are_neither_load_nor_candidates() -> None:
    _, out = fold([tele(0, "a0", state="offline"), tele(0, "a1", state="sleeping"),
                   energy(1, target=100)], P)
    assert [(type(c).__name__, c.device_id) for c in out] == [("WakeAsic", "a1")]


def test_gpu_load_is_subtracted_from_the_asic_budget() -> None:
    _, out = fold([*fleet(4), energy(1, target=20, available=20, load=24, asic=12)], P)
    assert len(out) == 2  # 12 kW of GPUs leave 8 kW for ASICs: 12 -> 9 -> 6 kW planned


def test_same_input_same_command_ids() -> None:
    events = [*fleet(3), energy(1, target=3, load=9)]
    assert [c.command_id for c in fold(events, P)[1]] == [c.command_id for c in fold(events, P)[1]]


# -- failover -------------------------------------------------------------------------------

FP = FailoverParams(local_pool_url="stratum+tcp://127.0.0.1:3333", down_after=2, hold_down_s=60)


def probe(sec: float, up: bool) -> UplinkStatusObserved:
    return UplinkStatusObserved(site="site-1", device_id="uplink", ts=at(sec), source="t",
                                target="pool:3333", up=up)


def test_failover_after_consecutive_failures_and_back_home_after_hold_down() -> None:
    home = ["stratum+tcp://a:3333", "stratum+tcp://b:3333"]
    events = [tele(0, "m0", pool=home[0]), tele(0, "m1", pool=home[1]),
              probe(1, False), probe(2, True), probe(3, False)]
    _, out = failover_fold(events, FP)
    assert out == []  # one failure, then up: no outage
    events += [probe(4, False)]
    state, out = failover_fold(events, FP)
    assert [(c.device_id, c.pool_url) for c in out] == [
        ("m0", FP.local_pool_url), ("m1", FP.local_pool_url)]
    assert state.mode == "local"
    acks = [CommandAcknowledged(site="site-1", device_id=c.device_id, ts=at(5), source="a",
                                command_id=c.command_id, command_kind=c.kind, status="applied",
                                latency_ms=1, actuator="t") for c in out]
    back = [*events, *acks, probe(10, True), probe(40, True), probe(69, True), probe(70, True)]
    state, out2 = failover_fold(back, FP)
    assert [(c.device_id, c.pool_url) for c in out2[2:]] == [("m0", home[0]), ("m1", home[1])]
    assert out2[2].ts == at(70) and state.mode == "upstream"


def test_failover_flap_during_hold_down_restarts_it() -> None:
    events = [tele(0, "m0"), probe(1, False), probe(2, False)]
    _, (cmd,) = failover_fold(events, FP)
    events += [CommandAcknowledged(site="site-1", device_id="m0", ts=at(3), source="a",
                                   command_id=cmd.command_id, command_kind=cmd.kind,
                                   status="applied", latency_ms=1, actuator="t"),
               probe(10, True), probe(50, True), probe(55, False), probe(56, True),
               probe(100, True), probe(116, True)]
    _, out = failover_fold(events, FP)
    assert [c.ts for c in out] == [at(2), at(116)]  # the 55 s failure restarted the hold


def test_telemetry_reconciles_a_miner_that_restarted_onto_the_wrong_pool() -> None:
    events = [tele(0, "m0"), probe(1, False), probe(2, False)]
    _, out = failover_fold([*events, tele(30, "m0")], FP)  # m0 still on upstream, cmd expired
    assert len(out) == 2 and out[1].ts == at(30)


def test_a_woken_miner_restarting_its_hashboards_is_shed_by_a_dip() -> None:
    """Woken, acked, then read with no hashrate (state error) while it boots: still waking
    for boot_s, so a dip sleeps it; a miner that never got our wake, or is still hashing
    nothing after boot_s, is in error: not shed, not counted."""
    p = SchedulerParams(min_on_s=0, min_off_s=0, hysteresis_kw=1, wake_batch=100,
                        wake_interval_s=0, ttl_s=10, boot_s=60)
    start = [tele(0, "a0", state="sleeping"), tele(0, "a1", state="sleeping"),
             tele(0, "a2", state="error"), energy(1, target=100)]
    _, woken = fold(start, p)
    assert {c.device_id for c in woken} == {"a0", "a1"}
    booting = [*start, *[ack(2, c) for c in woken], tele(5, "a0", state="error"),
               tele(5, "a1", state="error"), tele(5, "a2", state="error")]
    _, out = fold([*booting, energy(6, target=0)], p)
    assert {c.device_id for c in out if isinstance(c, SleepAsic)} == {"a0", "a1"}
    _, late = fold([*booting, tele(70, "a0", state="error"), tele(70, "a1", state="error"),
                    energy(71, target=0)], p)
    assert not [c for c in late if isinstance(c, SleepAsic)]
