"""The share-ratio step function, fed plain lists."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

from agents.share_ratio import Counts, WindowState, fold, step
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
                      window_s=60, grace_s=30)
    finals = [m for m in out if m.final]
    assert len(finals) == 1 and finals[0].window_start == T0 and finals[0].accepted == 10
    assert out.index(finals[0]) == 3  # emitted by the event at 91 s, not before
    assert list(state["w1"].windows) == [int((T0 + timedelta(seconds=60)).timestamp())]


def test_out_of_order_within_grace_is_counted_later_is_dropped() -> None:
    state, out = fold([shares(70, 5), shares(30, 7), shares(200, 1), shares(40, 100)],
                      window_s=60, grace_s=30)
    first = [m for m in out if m.window_start == T0]
    assert first[-1].final and first[-1].accepted == 7
    assert all(m.accepted != 107 for m in out)  # the event at 40 s came after the close
    assert state["w1"].late == 1


def test_duplicate_event_ids_are_folded_once() -> None:
    e = shares(1, 10)
    _state, out = fold([e, e, shares(2, 1), e])
    assert out[-1].accepted == 11 and len(out) == 2


def test_workers_are_independent() -> None:
    state, out = fold([shares(1, 10, worker="a"), shares(2, 3, 3, worker="b")])
    assert {m.subject: m.accepted for m in out} == {"a": 10, "b": 3}
    assert set(state) == {"a", "b"}


def test_output_ids_are_deterministic_for_replay() -> None:
    events = [shares(1, 10), shares(70, 2), shares(100, 1)]
    _, a = fold(events)
    _, b = fold(events)
    assert [m.event_id for m in a] == [m.event_id for m in b]
    assert len({m.event_id for m in a}) == len(a)


def test_state_survives_the_table_round_trip() -> None:
    s, _ = step(WindowState(), shares(1, 4, 1))
    s, _ = step(s, shares(2, 1))
    back = WindowState.from_primitive(s.to_primitive())
    assert back == s and back.windows[int(T0.timestamp())] == Counts(5, 1, 0, 50.0, 10.0, 2)
    assert WindowState.from_primitive(None) == WindowState()


def test_step_does_not_mutate_its_input() -> None:
    s0, _ = step(WindowState(), shares(1, 4))
    before = s0.to_primitive()
    step(s0, shares(2, 9, event_id=uuid4()))
    assert s0.to_primitive() == before
