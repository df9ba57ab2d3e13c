"""Compute gate, compute scores and alert rules, fed plain lists."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import pytest

from agents.alerts import AlertParams
from agents.alerts import fold as alert_fold
from agents.compute import GateParams, endpoint_metric, fold
from schemas.alerts import AlertFired, AlertResolved
from schemas.commands import PauseComputeIntake, ResumeComputeIntake
from schemas.compute_score import base_score, rig_score
from schemas.events import (
    AsicTelemetryObserved,
    ComputeJobChanged,
    EndpointHealthObserved,
    FeedPowerMeasured,
    GpuTelemetryObserved,
    GridMeasured,
    RecordDeadLettered,
    UplinkStatusObserved,
)
from schemas.metrics import ComputeScoreComputed, EnergyHeadroomComputed, ShareRatioComputed
from tests.factories import T0, sample


def at(sec: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=sec)


def headroom(sec: float, kw: float, load: float = 50.0) -> EnergyHeadroomComputed:
    return EnergyHeadroomComputed(
        site="site-1", device_id="site-1", ts=at(sec), source="t", supply_kw=load + kw,
        margin_kw=0, available_kw=load + kw, load_kw=load, asic_load_kw=load, gpu_load_kw=0,
        headroom_kw=kw, target_load_kw=load + kw)


def gpu(sec: float, rig: str, idx: int, card: str, temp: float = 60) -> GpuTelemetryObserved:
    return GpuTelemetryObserved(site="site-1", device_id=f"{rig}-gpu{idx}", ts=at(sec),
                                source="t", rig_id=rig, gpu_index=idx, card=card, power_w=300,
                                power_limit_w=450, temp_c=temp, core_clock_mhz=2000,
                                mem_clock_mhz=10000)


def job(sec: float, state: str, rig: str = "rig01", jid: str = "j1") -> ComputeJobChanged:
    """A job event as the coordinator connector writes it: its device is the coordinator
    account (the miner id), the machine running it is ``rig_id``."""
    return ComputeJobChanged(site="site-1", device_id="hashplane-miner-1", ts=at(sec),
                             source="t", job_id=jid, rig_id=rig, workload="torch_bench",
                             state=state)  # type: ignore[arg-type]


# -- gate -----------------------------------------------------------------------------------

def test_gate_pauses_when_short_and_resumes_after_hold_above_resume_level() -> None:
    p = GateParams(miner_id="m1", pause_kw=0, resume_kw=20, hold_s=30)
    events = [headroom(0, 5), headroom(1, -3), headroom(2, -8), headroom(10, 25),
              headroom(20, 10), headroom(21, 30), headroom(50, 30), headroom(51, 31)]
    _, out = fold(events, p)
    assert [(type(c).__name__, c.ts) for c in out] == [
        ("PauseComputeIntake", at(1)), ("ResumeComputeIntake", at(51))]
    assert isinstance(out[0], PauseComputeIntake) and out[0].device_id == "m1"
    assert isinstance(out[1], ResumeComputeIntake) and "for 30 s" in out[1].reason


def test_headroom_between_thresholds_does_not_toggle() -> None:
    _, out = fold([headroom(i, v) for i, v in enumerate([-1, 5, 15, 5, 19, 1])],
                  GateParams(pause_kw=0, resume_kw=20, hold_s=0))
    assert len(out) == 1


# -- scores ---------------------------------------------------------------------------------

def test_card_names_map_to_the_seed_table() -> None:
    assert base_score("RTX 4090") == ("NVIDIA RTX 4090", 0.68)
    assert base_score("RTX 3090") == ("NVIDIA GeForce RTX 3090", 0.43)
    assert base_score("H100") == ("NVIDIA H100", 2.80)
    assert base_score("A100") == ("NVIDIA A100 80GB PCIe", 1.65)  # ambiguous: the cheaper
    assert base_score("Radeon VII") == (None, 0.0)


def test_rig_score_scales_to_50_for_eight_h200_and_doubles_when_allocated() -> None:
    assert rig_score(["H200"] * 8) == pytest.approx(50.0)
    assert rig_score(["H200"] * 12) == pytest.approx(50.0)  # only eight count
    assert rig_score(["H100", "RTX 4090"], allocated=True) == pytest.approx(
        2 * (2.80 + 0.68) * 50 / 32)


def test_gpu_scores_follow_cards_and_allocation_and_publish_only_changes() -> None:
    events = [gpu(0, "rig01", 0, "RTX 4090"), gpu(1, "rig01", 0, "RTX 4090"),
              gpu(2, "rig01", 1, "RTX 4090"), job(3, "assigned"), job(4, "started"),
              job(9, "accepted")]
    _, out = fold(events)
    scores = [m.score for m in out if isinstance(m, ComputeScoreComputed)]
    one = 0.68 * 50 / 32
    assert scores == pytest.approx([one, 2 * one, 4 * one, 2 * one])
    # a job on a machine that is not named (or another rig) gives this rig no bonus
    _, out = fold([*events[:3], job(3, "started", rig=""),
                   job(4, "started", rig="rig02", jid="j2")])
    assert [m.score for m in out if isinstance(m, ComputeScoreComputed)] == pytest.approx(
        [one, 2 * one])


def test_a_verified_proof_of_gpu_ranks_the_rig_by_what_it_delivered() -> None:
    cards = [gpu(0, "rig01", 0, "H100"), gpu(1, "rig01", 1, "H100")]

    def verified(sec: float, gpu_class: str) -> ComputeJobChanged:
        return job(sec, "accepted", jid=f"pog-{sec}").model_copy(
            update={"verified_gpu": gpu_class, "workload": "gpu_matmul_bench"})

    _, out = fold([*cards, verified(5, "NVIDIA RTX 4090")])
    last = [m for m in out if isinstance(m, ComputeScoreComputed)][-1]
    # names say H100; the proof delivered an RTX 4090's throughput: ranked as two 4090s
    assert last.score == pytest.approx(2 * 0.68 * 50 / 32) and last.components["verified"] == 1
    _, out = fold([*cards, verified(5, "")])  # no listed GPU's throughput at all
    assert [m for m in out if isinstance(m, ComputeScoreComputed)][-1].score == 0.0


def test_endpoint_score_is_seed_004_weighting() -> None:
    e = sample(EndpointHealthObserved, quality=1.0, speed=0.5, availability=1.0,
               participation=0.0)
    assert endpoint_metric(e).score == pytest.approx(0.4 + 0.15 + 0.2)


# -- alerts ---------------------------------------------------------------------------------

AP = AlertParams(cooldown_s=60, offline_intervals=3, asic_poll_s=10, feed_stale_s=10)


def grid(sec: float, hz: float) -> GridMeasured:
    return GridMeasured(site="site-1", device_id="meter", ts=at(sec), source="t",
                        frequency_hz=hz, voltage_v=400, active_power_kw=0,
                        reactive_power_kvar=0)


def asic(sec: float, dev: str = "a0", temp: float = 70.0,
         state: str = "running") -> AsicTelemetryObserved:
    return AsicTelemetryObserved(
        site="site-1", device_id=dev, ts=at(sec), source="t", state=state,  # type: ignore[arg-type]
        hashrate_ths=100, hashrate_avg_ths=100, power_w=3000, temp_chip_c=temp, accepted=0,
        rejected=0, stale=0, hardware_errors=0, elapsed_s=1)


def kinds(out: list[AlertFired | AlertResolved]) -> list[tuple[str, str, str]]:
    return [(type(a).__name__[5:], a.rule, a.severity) for a in out]


def test_frequency_alert_fires_escalates_and_resolves_once() -> None:
    _, out = alert_fold([grid(0, 50.0), grid(1, 49.75), grid(2, 49.7), grid(3, 49.4),
                         grid(4, 49.45), grid(5, 50.0), grid(6, 50.0)], AP)
    assert kinds(out) == [("Fired", "grid_frequency_low", "warning"),
                          ("Fired", "grid_frequency_low", "critical"),
                          ("Resolved", "grid_frequency_low", "critical")]
    assert len({a.dedup_key for a in out}) == 1


def test_cooldown_suppresses_a_refire_after_resolve() -> None:
    _, out = alert_fold([grid(0, 49.7), grid(1, 50), grid(30, 49.7), grid(31, 50),
                         grid(100, 49.7)], AP)
    assert [(type(a).__name__, a.ts) for a in out] == [
        ("AlertFired", at(0)), ("AlertResolved", at(1)), ("AlertFired", at(100))]


def test_over_temperature_and_load_near_supply() -> None:
    _, out = alert_fold([asic(0, temp=97), asic(10, temp=80), headroom(11, 2, load=98),
                         headroom(12, -1, load=101), headroom(13, 30, load=70)], AP)
    assert kinds(out) == [("Fired", "over_temperature", "warning"),
                          ("Resolved", "over_temperature", "warning"),
                          ("Fired", "load_near_supply", "warning"),
                          ("Fired", "load_near_supply", "critical"),
                          ("Resolved", "load_near_supply", "critical")]


def test_miner_offline_after_n_missed_polls_judged_on_the_site_clock() -> None:
    events = [asic(0), grid(10, 50), grid(29, 50), grid(31, 50), asic(40), grid(41, 50)]
    _, out = alert_fold(events, AP)
    assert [(type(a).__name__, a.device_id, a.ts) for a in out] == [
        ("AlertFired", "a0", at(31)), ("AlertResolved", "a0", at(40))]


def test_miner_reporting_error_is_offline_and_a_feed_going_silent_alerts() -> None:
    feed = FeedPowerMeasured(site="site-1", device_id="f1", ts=at(0), source="t",
                             feed_id="f1", voltage_v=400, current_a=1, power_kw=1)
    _, out = alert_fold([asic(0, state="error"), feed, grid(5, 50), grid(11, 50)], AP)
    # the only feed silent: the supply is unknown (no decisions), critical
    assert kinds(out) == [("Fired", "miner_offline", "critical"),
                          ("Fired", "feed_silent", "warning"),
                          ("Fired", "supply_unknown", "critical")]
    _, out = alert_fold([feed, grid(11, 50), feed.model_copy(update={"ts": at(12)})], AP)
    assert kinds(out)[-2:] == [("Resolved", "feed_silent", "warning"),
                               ("Resolved", "supply_unknown", "critical")]


def test_reject_spike_on_closed_minute_with_enough_shares() -> None:
    def ratio(sec: float, acc: int, rej: int, final: bool = True) -> ShareRatioComputed:
        return sample(ShareRatioComputed, ts=at(sec), scope="worker", subject="w1",
                      window_s=60, final=final, accepted=acc, rejected=rej, stale=0,
                      accepted_pct=100 * acc / (acc + rej), rejected_pct=100 * rej / (acc + rej),
                      stale_pct=0.0)
    _, out = alert_fold([ratio(0, 2, 2), ratio(60, 90, 10, final=False), ratio(61, 90, 10),
                         ratio(121, 99, 1)], AP)
    assert kinds(out) == [("Fired", "reject_ratio_high", "warning"),
                          ("Resolved", "reject_ratio_high", "warning")]
    assert out[0].value == 10.0 and out[0].threshold == 5.0


def test_uplink_down_after_consecutive_failures_and_job_failures_in_window() -> None:
    up = [UplinkStatusObserved(site="site-1", device_id="uplink", ts=at(s), source="t",
                               target="x", up=u) for s, u in [(0, False), (5, True), (10, False),
                                                              (15, False), (20, True)]]
    _, out = alert_fold(up, AP)
    assert [(type(a).__name__, a.ts) for a in out] == [("AlertFired", at(15)),
                                                        ("AlertResolved", at(20))]
    jobs = [job(0, "failed"), job(10, "failed", jid="j2"), job(20, "rejected", jid="j3"),
            job(2000, "accepted", jid="j4")]
    _, out = alert_fold(jobs, AP)
    assert [(type(a).__name__, a.ts) for a in out] == [("AlertFired", at(20)),
                                                        ("AlertResolved", at(2000))]


def test_duplicate_events_fire_once() -> None:
    g = grid(0, 49.6)
    _, out = alert_fold([g, g, g], AP)
    assert len(out) == 1


def test_applied_sleep_without_effect_alerts_and_resolves_when_the_miner_complies() -> None:
    from schemas.commands import CommandAcknowledged

    def acked(sec: float, kind: str = "SleepAsic") -> CommandAcknowledged:
        return CommandAcknowledged(site="site-1", device_id="a0", ts=at(sec), source="act",
                                   command_id=UUID(int=int(sec)), command_kind=kind,
                                   status="applied", latency_ms=5, actuator="t")

    def read(sec: float, watts: float, state: str = "running") -> AsicTelemetryObserved:
        return asic(sec, state=state).model_copy(update={
            "power_w": watts, "hashrate_ths": 0.0 if watts < 200 else 100.0})

    p = AlertParams(confirm_s=30, cooldown_s=0)
    _, out = alert_fold([acked(0), read(10, 3000), read(40, 3000), read(50, 12, "sleeping")], p)
    assert kinds(out) == [("Fired", "command_without_effect", "warning"),
                          ("Resolved", "command_without_effect", "warning")]
    assert out[0].ts == at(40) and "3000 W" in out[0].message
    _, out = alert_fold([acked(0, "WakeAsic"), read(5, 12, "sleeping"), read(20, 900, "waking")],
                        p)
    assert out == []  # rising within the confirmation window: nothing to say


def test_a_meter_dead_letter_is_a_critical_meter_fault_and_clears_after_quiet() -> None:
    letter = sample(RecordDeadLettered, device_id="grid-meter", ts=at(0),
                    source_topic="modbus://10.0.0.5:502",
                    reason="frequency 0.000 Hz is not a grid frequency")
    miner = sample(RecordDeadLettered, device_id="a1", ts=at(1),
                   source_topic="cgminer://10.0.0.9:4028", reason="not CGMiner JSON")
    quiet = grid(400, 50.0)
    _, alerts = alert_fold([letter, miner, quiet], AlertParams(fault_clear_s=300))
    fired = {a.dedup_key: a for a in alerts if isinstance(a, AlertFired)}
    assert fired["meter_fault/grid-meter"].severity == "critical"
    assert "never move the band" in fired["meter_fault/grid-meter"].message
    assert fired["device_fault/a1"].severity == "warning"
    resolved = {a.dedup_key for a in alerts if isinstance(a, AlertResolved)}
    assert {"meter_fault/grid-meter", "device_fault/a1"} <= resolved


def test_a_refused_login_is_a_critical_alert_until_the_miner_takes_a_command() -> None:
    from schemas.commands import CommandAcknowledged

    def ack(sec: float, status: str, detail: str) -> CommandAcknowledged:
        return sample(CommandAcknowledged, device_id="a7", ts=at(sec), status=status,
                      detail=detail, command_kind="SleepAsic")

    _, alerts = alert_fold([
        ack(0, "rejected", "authentication failed: web login refused for user 'root'"),
        ack(5, "rejected", "antminer: Antminer stock firmware has work modes"),
        ack(9, "applied", "set_miner_conf: OK!")])
    fired = [a for a in alerts if isinstance(a, AlertFired)]
    resolved = [a for a in alerts if isinstance(a, AlertResolved)]
    assert [(a.dedup_key, a.severity) for a in fired] == [
        ("device_login_refused/a7", "critical")]
    assert [a.dedup_key for a in resolved] == ["device_login_refused/a7"]
