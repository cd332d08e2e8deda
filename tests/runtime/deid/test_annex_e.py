"""The action table: complete rows, known actions, compound codes resolved as documented."""

from __future__ import annotations

import pytest
from pydicom.datadict import keyword_for_tag

from runtime.deid import PROFILE, Action, lookup, resolve


def test_table_has_every_row_of_the_source_with_known_codes() -> None:
    assert len(PROFILE) == 459  # + the "private attributes" row, handled by the safe-list
    for tag, entry in PROFILE.items():
        assert entry.tag == tag
        assert entry.action in Action
        assert entry.retain_full_dates in (None, "K")
        assert entry.clean_descriptors in (None, "C")
        if tag >> 16 not in (0x5000, 0x6000):
            assert keyword_for_tag(tag) == entry.keyword


@pytest.mark.parametrize(
    ("keyword", "basic", "full_dates", "clean"),
    [
        ("PatientName", "Z", None, None),
        ("PatientID", "Z", None, None),
        ("PatientBirthDate", "Z", None, None),
        ("PatientAddress", "X", None, None),
        ("StudyInstanceUID", "U", None, None),
        ("StudyDate", "Z", "K", None),
        ("SeriesDate", "X/D", "K", None),
        ("ContentDate", "Z/D", "K", None),
        ("AcquisitionDateTime", "X/Z/D", "K", None),
        ("InstitutionName", "X/Z/D", None, None),
        ("SeriesDescription", "X", None, "C"),
        ("ProtocolName", "X/D", None, "C"),
        ("ReferencedImageSequence", "X/Z/U*", None, None),
        ("DeviceSerialNumber", "X/Z/D", None, None),
    ],
)
def test_known_rows(keyword: str, basic: str, full_dates: str | None, clean: str | None) -> None:
    (entry,) = [entry for entry in PROFILE.values() if entry.keyword == keyword]
    assert (entry.basic, entry.retain_full_dates, entry.clean_descriptors) == (basic, full_dates, clean)


def test_compound_codes_resolve_to_the_least_destructive_valid_action() -> None:
    assert resolve("X/Z") is Action.ZERO
    assert resolve("X/D") is Action.DUMMY
    assert resolve("Z/D") is Action.DUMMY
    assert resolve("X/Z/D") is Action.DUMMY
    assert resolve("X/Z/U*") is Action.UID
    with pytest.raises(ValueError, match="unknown"):
        resolve("Q")


def test_repeating_groups_are_looked_up() -> None:
    assert lookup(0x60023000).keyword == "OverlayData"  # type: ignore[union-attr]
    assert lookup(0x601E4000).keyword == "OverlayComments"  # type: ignore[union-attr]
    assert lookup(0x50040010).keyword == "CurveData"  # type: ignore[union-attr]
    assert lookup(0x60010010) is None  # odd group: private, not an overlay
    assert lookup(0x00280010) is None  # Rows: not in the table, kept
