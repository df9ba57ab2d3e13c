"""Seed-000 rewards: the formula (with the seed's worked example) and the windowed fold."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents.rewards import fold, reward
from schemas.events import GpuTelemetryObserved, ShareCountsObserved
from tests.factories import T0


def shares(sec: float, worker: str, a: int, r: int = 0) -> ShareCountsObserved:
    return ShareCountsObserved(site="site-1", device_id=worker, ts=T0 + timedelta(seconds=sec),
                               source="test", worker=worker, accepted=a, rejected=r,
                               interval_s=5)


def gpu(sec: float, device: str, temp: float) -> GpuTelemetryObserved:
    return GpuTelemetryObserved(site="site-1", device_id=device, ts=T0 + timedelta(seconds=sec),
                                source="test", rig_id="rig01", gpu_index=0, card="RTX 4090",
                                power_w=300, power_limit_w=450, temp_c=temp,
                                core_clock_mhz=2500, mem_clock_mhz=10500)


@pytest.mark.parametrize(("rej", "acc", "worker", "cluster", "temp", "expected"), [
    (10, 95, 30, 100, 92, 84.5),     # seed 000's example: 100 - 10 - 2 - 5 * 0.7
    (0, 100, 50, 100, 80, 100.0),    # perfect and cool
    (0, 90, 0, 0, 85, 90.0),         # empty cluster: contribution taken as 1
    (0, 90, 100, 100, None, 100.0),  # the whole cluster: no acceptance penalty
    (60, 40, 1, 100, 120, 0.0),      # clamped at 0, never negative
])
def test_formula(rej: float, acc: float, worker: int, cluster: int, temp: float | None,
                 expected: float) -> None:
    assert reward(rej, acc, worker, cluster, temp) == pytest.approx(expected)


def test_t_max_is_a_parameter() -> None:
    assert reward(0, 100, 1, 1, 85, temp_max_c=80) == 95.0


def test_window_reward_uses_cluster_share_and_peak_temperature() -> None:
    # w1: 95 accepted / 5 rejected... ; w2: the rest of the cluster
    events = [shares(1, "w1", 19, 1), shares(2, "w2", 60, 0), gpu(3, "w1", 88), gpu(30, "w1", 93),
              gpu(40, "w1", 80), shares(50, "w1", 0, 0), shares(95, "w2", 1)]
    _, out = fold(events, windows=(60,), grace_s=30)
    by = {r.worker: r for r in out}
    assert set(by) == {"w1", "w2"} and all(r.window_start == T0 for r in out)
    w1 = by["w1"]
    assert (w1.worker_accepted, w1.cluster_accepted, w1.temp_c) == (19, 79, 93)
    assert w1.reward == pytest.approx(100 - 5 - 3 - 5 * (1 - 19 / 79))
    assert by["w2"].temp_c is None and by["w2"].reward == 100.0  # an ASIC: no GPU telemetry


def test_zero_shares_worker_gets_reward_from_the_formula_without_dividing_by_zero() -> None:
    _, out = fold([shares(1, "w1", 0, 0), shares(95, "w1", 1)], windows=(60,))
    assert out[0].accepted_pct == 0.0 and out[0].reward == 0.0  # 100 - 0 - 0 - 100 * 1


def test_duplicates_and_late_events_do_not_change_the_reward() -> None:
    e = shares(1, "w1", 10)
    _, out = fold([e, e, shares(95, "w1", 1), shares(2, "w1", 50)], windows=(60,))
    assert [r.worker_accepted for r in out] == [10]


def test_ids_are_deterministic() -> None:
    events = [shares(1, "w1", 10), shares(95, "w1", 1)]
    assert [r.event_id for r in fold(events)[1]] == [r.event_id for r in fold(events)[1]]
