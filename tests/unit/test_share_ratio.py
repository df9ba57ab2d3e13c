"""The share-ratio step function, fed plain lists."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

from agents.share_ratio import Counts, SubjectState, WindowState, fold, step
from schemas.events import ShareCountsObserved
from tests.factories import T0  # 12:00:00 UTC, a window boundary


def shares(sec: float, a: int, r: int = 0, s: int = 0, worker: str = "w1",
           **kw: object) -> ShareCountsObserved:
    return ShareCountsObserved(
        site="site-1", device_id=worker, ts=T0 + timedelta(seconds=sec), source="test",
        worker=worker, accepted=a, rejected=r, stale=s, interval_s=5,
        difficulty_accepted=a * 10.0, difficulty_rejected=r * 10.0, **kw)  # type: ignore[arg-type]


def test_ratios_within_one_window() -> None:
    _, out = fold([shares(1, 95, 5), shares(10, 90, 8, 2)])
    last = out[-1]
    assert (last.accepted, last.rejected, last.stale, last.events) == (185, 13, 2, 2)
    assert last.accepted_pct == 92.5 and last.rejected_pct == 6.5 and last.stale_pct == 1.0
    assert last.shares_per_s == 200 / 60 and not last.final
    assert last.window_start == T0 and last.window_end == T0 + timedelta(seconds=60)
    assert last.difficulty_accepted == 1850.0 and last.difficulty_rejected == 130.0


def test_zero_shares_give_zero_ratios_not_errors() -> None:
    _, out = fold([shares(1, 0)])
    assert (out[0].accepted_pct, out[0].rejected_pct, out[0].shares_per_s) == (0.0, 0.0, 0.0)


def test_window_closes_final_after_grace() -> None:
    state, out = fold([shares(5, 10), shares(65, 20), shares(89, 1), shares(91, 1)],
                      windows=(60,), grace_s=30)
    finals = [m for m in out if m.final]
    assert len(finals) == 1 and finals[0].window_start == T0 and finals[0].accepted == 10
    assert out.index(finals[0]) == 3  # emitted by the event at 91 s, not before
    assert list(state["worker/w1"].windows[60].windows) == [
        int((T0 + timedelta(seconds=60)).timestamp())]


def test_out_of_order_within_grace_is_counted_later_is_dropped() -> None:
    state, out = fold([shares(70, 5), shares(30, 7), shares(200, 1), shares(40, 100)],
                      windows=(60,), grace_s=30)
    first = [m for m in out if m.window_start == T0]
    assert first[-1].final and first[-1].accepted == 7
    assert all(m.accepted != 107 for m in out)  # the event at 40 s came after the close
    assert state["worker/w1"].late == 1


def test_duplicate_event_ids_are_folded_once() -> None:
    e = shares(1, 10)
    _state, out = fold([e, e, shares(2, 1), e])
    assert out[-1].accepted == 11 and len(out) == 2


def test_workers_are_independent() -> None:
    state, out = fold([shares(1, 10, worker="a"), shares(2, 3, 3, worker="b")])
    assert {m.subject: m.accepted for m in out} == {"a": 10, "b": 3}
    assert set(state) == {"worker/a", "worker/b"}


def test_output_ids_are_deterministic_for_replay() -> None:
    events = [shares(1, 10), shares(70, 2), shares(100, 1)]
    _, a = fold(events)
    _, b = fold(events)
    assert [m.event_id for m in a] == [m.event_id for m in b]
    assert len({m.event_id for m in a}) == len(a)


def test_state_survives_the_table_round_trip() -> None:
    s, _ = step(SubjectState(), shares(1, 4, 1), windows=(60, 900))
    s, _ = step(s, shares(2, 1), windows=(60, 900))
    back = SubjectState.from_primitive(s.to_primitive())
    assert back == s
    assert back.windows[60].windows[int(T0.timestamp())] == Counts(5, 1, 0, 50.0, 10.0, 2)
    assert SubjectState.from_primitive(None) == SubjectState()
    assert isinstance(back.windows[900], WindowState)


def test_step_does_not_mutate_its_input() -> None:
    s0, _ = step(SubjectState(), shares(1, 4))
    before = s0.to_primitive()
    step(s0, shares(2, 9, event_id=uuid4()))
    assert s0.to_primitive() == before


def test_every_window_length_is_folded_and_closed_on_its_own_edge() -> None:
    events = [shares(t, 10, 1) for t in range(0, 1000, 10)]  # watermark 990 s
    _, out = fold(events, windows=(60, 900, 3600), grace_s=30, update_s=0)
    finals = {w: [m for m in out if m.final and m.window_s == w] for w in (60, 900, 3600)}
    assert len(finals[60]) == 16  # starts 0..900: each closed at start + 60 + 30 <= 990
    assert [(m.accepted, m.rejected, m.events) for m in finals[900]] == [(900, 90, 90)]
    assert finals[900][0].shares_per_s == 990 / 900 and finals[3600] == []


def test_provisional_revisions_are_throttled_by_event_time_finals_are_not() -> None:
    events = [shares(t, 1) for t in range(0, 60, 5)] + [shares(95, 1)]
    _, out = fold(events, windows=(60,), grace_s=30, update_s=20)
    assert [(m.ts - T0).seconds for m in out if not m.final] == [20, 40, 95]
    final = [m for m in out if m.final]
    assert len(final) == 1 and final[0].accepted == 12  # every event counted


def test_scopes_fold_the_same_event_into_worker_device_pool_and_site() -> None:
    e1 = shares(1, 10, 1, worker="acct.asic1", pool="stratum+tcp://p:3333")
    e2 = shares(2, 5, 0, worker="acct.asic2", pool="stratum+tcp://p:3333")
    states, out = fold([e1, e2], scopes=("worker", "device", "pool", "site"))
    assert set(states) == {"worker/acct.asic1", "worker/acct.asic2", "device/acct.asic1",
                           "device/acct.asic2", "pool/stratum+tcp://p:3333", "site/site-1"}
    site = [m for m in out if m.scope == "site"][-1]
    assert (site.subject, site.accepted, site.rejected) == ("site-1", 15, 1)


def test_counter_reset_delta_is_counted_like_any_other() -> None:
    _, out = fold([shares(1, 100), shares(11, 3, counter_reset=True)])
    assert out[-1].accepted == 103


def test_clock_skew_far_ahead_closes_windows_and_later_true_time_is_late() -> None:
    states, out = fold([shares(1, 5), shares(3600, 1), shares(2, 7)], windows=(60,))
    assert [m.accepted for m in out if m.final] == [5]
    assert states["worker/w1"].late == 1  # the skewed clock made the honest event late


def test_kafka_redelivery_is_skipped_by_position_at_any_distance() -> None:
    s = SubjectState()
    for off in range(100):  # far more than the id memory
        s, _ = step(s, shares(off % 50, 1), position=(3, off))
    again, out = step(s, shares(10, 1), position=(3, 42))  # a redelivered record, new id
    assert out == [] and again is s
    _, out = step(s, shares(60, 1), position=(4, 0))  # another partition is its own sequence
    assert out


def test_a_log_begun_again_is_folded_and_its_redeliveries_are_not() -> None:
    """A broker that came back empty numbers its records from 0 again: a record at or before
    a folded position but newer than anything folded is new; the positions go on from it."""
    s = SubjectState()
    for off in range(100, 110):
        s, _ = step(s, shares(off - 100, 1), position=(3, off), windows=(60,))
    s, out = step(s, shares(20, 4), position=(3, 0), windows=(60,))  # the new log's first
    assert [m.accepted for m in out] == [14] and s.offsets == {3: 0}
    for sec in (20, 5):  # redelivered: the new log's first again (another id: a re-send
        again, out = step(s, shares(sec, 9), position=(3, 0), windows=(60,))  # too); an
        assert out == [] and again is s  # older time at a folded position
    s, out = step(s, shares(21, 1), position=(3, 1), windows=(60,))
    assert [m.accepted for m in out] == [15]
