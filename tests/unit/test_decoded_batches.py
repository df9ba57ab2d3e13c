"""The worker's memory of decoded site-feed batches is bounded by the events it holds."""

from __future__ import annotations

from schemas.envelope import Event
from schemas.events import AsicTelemetryObserved
from streams.app import DecodedBatches
from tests.factories import sample


def _batch(n: int) -> tuple[bytes, list[Event]]:
    return bytes(n), [sample(AsicTelemetryObserved, device_id=f"asic{i:05d}") for i in range(n)]


def test_full_batches_are_kept_up_to_the_event_bound_newest_first() -> None:
    cache = DecodedBatches(batches=64, events=2_500)
    batches = [_batch(1000 + i) for i in range(5)]  # distinct values
    for value, events in batches:
        cache.put(value, events)
    assert [cache.get(v) is not None for v, _ in batches] == [False, False, False, True, True]
    assert cache.events == 2 * 1000 + 3 + 4


def test_small_batches_are_kept_up_to_the_batch_bound() -> None:
    cache = DecodedBatches(batches=3, events=10_000)
    batches = [_batch(i + 1) for i in range(5)]
    for value, events in batches:
        cache.put(value, events)
    assert [cache.get(v) for v, _ in batches][2:] == [e for _, e in batches[2:]]
    assert cache.get(batches[0][0]) is None and cache.events == 3 + 4 + 5


def test_a_batch_larger_than_the_bound_is_still_kept_alone() -> None:
    cache = DecodedBatches(batches=64, events=10)
    value, events = _batch(50)
    cache.put(value, events)
    assert cache.get(value) == events and cache.events == 50



def test_an_equal_value_held_by_another_object_is_not_taken_for_the_batch() -> None:
    cache = DecodedBatches()
    value, events = _batch(3000)
    cache.put(value, events)
    other = bytes(bytearray(value))  # equal, but another record's value
    assert other == value and other is not value and cache.get(other) is None
