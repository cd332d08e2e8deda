"""Folder exports and ``medge deid`` end to end: layout, outcomes, key file, refusals."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from runtime.deid import Deidentifier, DeidError, DeidExport, load_key, load_or_create_key
from sdk.cli.console import MedgeTyper
from sdk.cli.deid import deid_command
from sdk.testing import PhantomSpec, write_study

SPEC = PhantomSpec(rows=64, columns=64, slices=3, noise_hu=0, vessel_trees_per_lung=(0, 0))
PATIENT = "PHANTOM-SECRET-42"


def _app() -> MedgeTyper:
    app = MedgeTyper()
    app.command("deid")(deid_command)
    app.command("other")(lambda: None)  # two commands keep "deid" a sub-command, as in medge's app
    return app


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A study of two series, an ultrasound image (refused), a truncated file, a note and a DICOMDIR."""
    folder = tmp_path / "in"
    write_study(folder, SPEC, seed=5, patient_id=PATIENT, n_series=2)
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), folder / "us.dcm")
    whole = next(folder.rglob("0001.dcm")).read_bytes()
    (folder / "cut.dcm").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "DICOMDIR").write_bytes(whole)
    return folder


def test_cli_exports_a_folder(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "config"))
    out = tmp_path / "out"
    run = CliRunner().invoke(_app(), ["deid", str(source), str(out)])
    assert run.exit_code == 1, run.output  # the ultrasound was refused, the cut file unreadable
    assert "made a new de-identification key" in run.output
    assert "written 6" in run.output and "refused 1" in run.output and "unreadable 1" in run.output
    assert "skipped 3" in run.output  # notes.txt, the phantom's truth.json and the DICOMDIR
    key_file = tmp_path / "config" / "deid.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 6
    studies = {path.relative_to(out).parts[0] for path in written}
    series = {path.relative_to(out).parts[1] for path in written}
    assert len(studies) == 1 and len(series) == 2
    for path in written:
        ds = pydicom.dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert path.parent.name == ds.SeriesInstanceUID and path.parent.parent.name == ds.StudyInstanceUID
        data = path.read_bytes()
        assert PATIENT.encode() not in data and b"Phantom^Chest" not in data
        assert b"medge phantom site" not in data
    originals = {str(pydicom.dcmread(path).SOPInstanceUID) for path in source.rglob("00*.dcm")}
    assert not any(uid in str(path) for path in written for uid in originals)

    again = tmp_path / "again"
    second = CliRunner().invoke(_app(), ["deid", str(source), str(again), "--key-file", str(key_file)])
    assert second.exit_code == 1 and "made a new" not in second.output
    assert sorted(path.relative_to(again) for path in again.rglob("*.dcm")) == [
        path.relative_to(out) for path in written
    ]


def test_cli_allows_burned_in_and_flags_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "config"))
    image = tmp_path / "us.dcm"
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), image)
    run = CliRunner().invoke(_app(), ["deid", str(image), str(tmp_path / "out"), "--allow-burned-in"])
    assert run.exit_code == 0, run.output
    assert "burned-in" in run.output and "written 1" in run.output


def test_cli_refuses_output_inside_input_and_bad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "config"))
    folder = tmp_path / "in"
    folder.mkdir()
    inside = CliRunner().invoke(_app(), ["deid", str(folder), str(folder / "out")])
    assert inside.exit_code == 2 and "inside the input" in inside.output
    same = CliRunner().invoke(_app(), ["deid", str(folder), str(folder)])
    assert same.exit_code == 2
    bad = CliRunner().invoke(_app(), ["deid", str(folder), str(tmp_path / "out"), "--keep-private", "nonsense"])
    assert bad.exit_code == 2 and "--keep-private" in bad.output


def test_export_keeps_folder_names_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "positives"
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(folder / "a.dcm")
    before = (folder / "a.dcm").read_bytes()
    export = DeidExport(tmp_path / "in", tmp_path / "out", Deidentifier(b"k" * 32), keep_folder_names=True)
    summary = export.run()
    (item,) = summary.of("written")
    assert item.output is not None and item.output.parent == (tmp_path / "out" / "positives").resolve()
    assert (folder / "a.dcm").read_bytes() == before  # the input is untouched


def test_key_file_is_made_once_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "deid.key"
    key, created = load_or_create_key(path)
    assert created and len(key) == 32
    assert load_or_create_key(path) == (key, False)
    path.write_text("not hex")
    with pytest.raises(DeidError, match="not a de-identification key"):
        load_key(path)
    path.write_text("abcd")
    with pytest.raises(DeidError, match="at least 16"):
        load_key(path)
