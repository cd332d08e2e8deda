"""Sequence-gap bookkeeping (dashboard/store/sequence.py)."""

from __future__ import annotations

import random

import pytest

from dashboard.store.sequence import apply_sequence_numbers


@pytest.mark.parametrize(
    ("gaps", "max_seq", "seqs", "expected_gaps", "expected_max", "delta"),
    [
        ([], None, [0, 1, 2], [], 2, 0),
        ([], None, [2], [(0, 1)], 2, 2),
        ([], None, [0, 1, 2, 5, 6, 9], [(3, 4), (7, 8)], 9, 4),
        ([(3, 4), (7, 8)], 9, [3], [(4, 4), (7, 8)], 9, -1),
        ([(3, 7)], 9, [5], [(3, 4), (6, 7)], 9, -1),
        ([(3, 7)], 9, [3, 4, 5, 6, 7], [], 9, -5),
        ([(3, 4)], 9, [1, 9], [(3, 4)], 9, 0),  # duplicates change nothing
        ([(3, 4)], 9, [12, 4], [(3, 3), (10, 11)], 12, 1),
        ([], 5, [6], [], 6, 0),
    ],
)
def test_cases(
    gaps: list[tuple[int, int]],
    max_seq: int | None,
    seqs: list[int],
    expected_gaps: list[tuple[int, int]],
    expected_max: int,
    delta: int,
) -> None:
    update = apply_sequence_numbers(gaps, max_seq, seqs)
    assert (update.gaps, update.max_seq, update.missing_delta) == (expected_gaps, expected_max, delta)


def test_matches_the_set_of_missing_numbers_in_any_arrival_order() -> None:
    generator = random.Random(7)
    numbers = [seq for seq in range(300) if generator.random() < 0.7]
    generator.shuffle(numbers)
    gaps: list[tuple[int, int]] = []
    max_seq = None
    missing = 0
    for start in range(0, len(numbers), 17):
        update = apply_sequence_numbers(gaps, max_seq, numbers[start : start + 17])
        gaps, max_seq, missing = update.gaps, update.max_seq, missing + update.missing_delta
    expected = set(range(max(numbers) + 1)) - set(numbers)
    assert {seq for first, last in gaps for seq in range(first, last + 1)} == expected
    assert missing == len(expected)


def test_negative_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        apply_sequence_numbers([], None, [-1])
