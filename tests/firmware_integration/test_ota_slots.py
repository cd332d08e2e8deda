"""A/B slots, the journal and version order (firmware_integration/ota/slots.py, journal.py, versions.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firmware_integration.ota import Journal, OtaError, Slots
from sdk.model_versions import version_key


def _slots(tmp_path: Path) -> Slots:
    return Slots(tmp_path / "state" / "packages", tmp_path / "state" / "slots")


def test_a_plain_packages_folder_becomes_slot_a(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    slots.packages_dir.mkdir(parents=True)
    (slots.packages_dir / "m-1.0.0.medge").write_bytes(b"x")
    assert slots.ensure() == "A"
    assert os.readlink(slots.packages_dir) == "slots/A"
    assert [p.name for p in slots.packages_dir.iterdir()] == ["m-1.0.0.medge"]
    assert slots.path("B").is_dir() and slots.ensure() == "A"  # idempotent


def test_a_conversion_killed_after_its_rename_is_completed(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    slots.path("A").mkdir(parents=True)
    (slots.path("A") / "m-1.0.0.medge").write_bytes(b"x")  # renamed, the symlink not made yet
    (slots.path("A") / ".m-1.1.0.medge.tmp-123").write_bytes(b"half")  # a copy killed before its rename
    os.symlink("slots/B", slots.packages_dir.with_name(".packages.new"))  # a flip killed before its rename
    assert slots.ensure() == "A"
    assert sorted(p.name for p in slots.path("A").iterdir()) == ["m-1.0.0.medge"]
    assert not slots.packages_dir.with_name(".packages.new").is_symlink()


def test_the_switch_flips_the_symlink_and_the_live_slot_cannot_be_emptied(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    slots.ensure()
    slots.activate("B")
    assert slots.active() == "B" and os.readlink(slots.packages_dir) == "slots/B"
    with pytest.raises(OtaError, match="slot B is live"):
        slots.empty("B")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.remove(slots.packages_dir)
    os.symlink(elsewhere, slots.packages_dir)
    with pytest.raises(OtaError, match="not at a slot"):
        slots.active()


def test_an_unreadable_journal_is_set_aside(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    assert journal.read() is None
    journal.path.write_text("{not json")
    assert journal.read() is None
    assert (tmp_path / "journal.json.broken").exists() and not journal.path.exists()


@pytest.mark.parametrize(
    ("older", "newer"),
    [("1.9.2", "1.10.0"), ("1.2.0-rc1", "1.2.0"), ("1.2.0-rc1", "1.2.0-rc2"), ("0.9.0", "1.0.0"), ("1.2", "1.2.1")],
)
def test_versions_compare_as_numbers(older: str, newer: str) -> None:
    assert version_key(older) < version_key(newer)
    assert version_key("1.2") == version_key("1.2.0") == version_key("1.2.0+build7")


def test_the_package_exports_exactly_its_public_names() -> None:
    import types

    import firmware_integration.ota as ota

    names = vars(ota).items()
    public = {name for name, value in names if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public == set(ota.__all__)
