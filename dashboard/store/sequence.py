"""Sequence-gap bookkeeping: which of a device's finding numbers never arrived.

Appliances number their findings 0, 1, 2, ... (never re-used). The store keeps,
per device, the highest number seen and the runs of lower numbers still
missing, as closed ranges ``(first, last)``. A gap opens when a number arrives
beyond ``max + 1`` and closes (or splits) when a late one fills it; gaps stay
small in number however long the history, and duplicates change nothing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GapUpdate", "apply_sequence_numbers"]

Range = tuple[int, int]


@dataclass(frozen=True)
class GapUpdate:
    """The new state after some sequence numbers arrived.

    Attributes:
        gaps: every missing run at or above the lowest number applied, sorted.
        max_seq: the highest number seen.
        missing_delta: change in the count of missing numbers.
    """

    gaps: list[Range]
    max_seq: int | None
    missing_delta: int


def _size(ranges: Iterable[Range]) -> int:
    return sum(last - first + 1 for first, last in ranges)


def apply_sequence_numbers(gaps: Iterable[Range], max_seq: int | None, seqs: Iterable[int]) -> GapUpdate:
    """Apply arrived numbers ``seqs`` to ``gaps`` (sorted, disjoint) and ``max_seq`` (``None``: none seen yet).

    ``gaps`` need only hold the ranges that end at or above ``min(seqs)``:
    lower ones cannot change, and the caller keeps them as they are.
    """
    current = sorted(gaps)
    before = _size(current)
    highest = -1 if max_seq is None else max_seq
    for seq in sorted(set(seqs)):
        if seq < 0:
            raise ValueError(f"sequence number {seq} is negative")
        if seq > highest:
            if seq > highest + 1:
                current.append((highest + 1, seq - 1))
            highest = seq
            continue
        index = bisect_right(current, seq, key=lambda gap: gap[0]) - 1
        if index < 0:
            continue
        first, last = current[index]
        if not first <= seq <= last:
            continue  # received before (a re-send under another id): nothing missing here
        replacement = [(lo, hi) for lo, hi in ((first, seq - 1), (seq + 1, last)) if lo <= hi]
        current[index : index + 1] = replacement
    return GapUpdate(current, None if highest < 0 else highest, _size(current) - before)
