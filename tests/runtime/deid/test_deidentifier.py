"""The de-identifier on real files: pydicom's bundled instances and phantom CT series with PHI planted in them."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from runtime.deid import (
    Action,
    AttributeGroup,
    BurnedInAnnotationError,
    Deidentifier,
    DeidError,
    DeidOptions,
    SafePrivateTag,
    lookup,
    resolve,
)
from runtime.spool import is_valid_uid
from sdk.testing import PhantomSpec, generate_series

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
SPEC = PhantomSpec(rows=64, columns=64, slices=3, noise_hu=0, vessel_trees_per_lung=(0, 0))
REAL_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "test-SR.dcm", "liver_1frame.dcm")

PHI = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN99887766",
    "PatientBirthDate": "19510923",
    "PatientAddress": "42 Wallaby Way Sydney",
    "OtherPatientIDs": "ALTID4455",
    "AccessionNumber": "ACC55443322",
    "ReferringPhysicianName": "Hibbert^Julius",
    "PerformingPhysicianName": "Riviera^Nick",
    "OperatorsName": "Smithers^Waylon",
    "InstitutionName": "Springfield General Hospital",
    "InstitutionAddress": "742 Evergreen Terrace",
    "StationName": "SPRINGCT7",
    "DeviceSerialNumber": "SN-31337",
    "StudyDescription": "CT chest for Quincy followup",
    "SeriesDescription": "Lung Wallaby 2.5mm",
    "ImageComments": "Mrs Doe complained of chest pain",
    "StudyDate": "20240315",
    "SeriesDate": "20240315",
    "AcquisitionDate": "20240315",
    "ContentDate": "20240315",
    "InstanceCreationDate": "20240315",
    "AcquisitionDateTime": "20240315101112",
}
PRIVATE_DATE = "19770707"
PRIVATE_NOTE = "Quincy private note"
NESTED_NAME = "Burns^Montgomery"


def _phantom(seed: int = 7) -> list[Dataset]:
    """A CT series carrying every kind of PHI the profile must remove, at the top level and nested."""
    datasets = generate_series(SPEC, seed=seed).datasets
    for ds in datasets:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        block = ds.private_block(0x0009, "ACME PHI 1.0", create=True)
        block.add_new(0x01, "DA", PRIVATE_DATE)
        block.add_new(0x02, "LO", PRIVATE_NOTE)
        block.add_new(0x03, "DS", "3.5")
        purpose = Dataset()
        purpose.CodeValue = "121311"
        purpose.CodingSchemeDesignator = "DCM"
        purpose.CodeMeaning = "Localizer"
        purpose.PersonName = NESTED_NAME
        reference = Dataset()
        reference.ReferencedSOPClassUID = datasets[0].SOPClassUID
        reference.ReferencedSOPInstanceUID = datasets[0].SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = Sequence([purpose])
        ds.ReferencedImageSequence = Sequence([reference])
    return datasets


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _expected(tag: int, options: DeidOptions) -> Action | None:
    entry = lookup(tag)
    if entry is None:
        return None
    if options.retain_dates and entry.retain_full_dates:
        return resolve(entry.retain_full_dates)
    if options.clean_descriptors and entry.clean_descriptors:
        return Action.CLEAN
    return entry.action


def _check_table(original: Dataset, out: Dataset, options: DeidOptions) -> set[AttributeGroup]:
    """Assert every listed top-level attribute of ``original`` got its table action; return the groups seen."""
    seen: set[AttributeGroup] = set()
    report_groups = {item.path: item.group for item in Deidentifier(KEY, options).deidentify(original).report.actions}
    for elem in original:
        tag = int(elem.tag)
        if elem.tag.is_private or 0x5000 <= tag >> 16 <= 0x60FF:
            continue
        action = _expected(tag, options)
        if action is None:
            continue
        path = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        seen.add(report_groups[path])
        what = f"{elem.keyword} ({action})"
        if action is Action.REMOVE:
            assert elem.tag not in out, what
        elif action is Action.ZERO:
            assert elem.tag in out and out[elem.tag].is_empty, what
        elif action is Action.KEEP:
            assert out[elem.tag].value == elem.value, what
        elif action is Action.DUMMY:
            assert (elem.tag in out and not out[elem.tag].is_empty) or elem.is_empty, what
            if elem.VR not in ("SQ", "UI") and not elem.is_empty:
                assert out[elem.tag].value != elem.value, what
        elif action is Action.UID and elem.VR == "UI" and not elem.is_empty:
            assert str(out[elem.tag].value).startswith("2.25."), what
            assert out[elem.tag].value != elem.value, what
        elif action is Action.CLEAN and elem.tag in out and elem.VR != "SQ":
            # Cleaned words come from the original; with nothing left, the Basic Profile's action (a dummy).
            kept = set(str(out[elem.tag].value or "").split()) - {"ANONYMOUS"}
            assert kept <= set(str(elem.value).replace("^", " ").split()), what
    return seen


@pytest.mark.parametrize("name", REAL_FILES)
def test_bundled_files_follow_the_table(name: str) -> None:
    original = pydicom.dcmread(get_testdata_file(name))
    for options in (DeidOptions(), DeidOptions(retain_dates=True, clean_descriptors=True)):
        out = Deidentifier(KEY, options).apply(original)
        _check_table(original, out, options)
        assert not [elem for elem in out if elem.tag.is_private]
        _bytes(out)  # still encodes


def test_every_attribute_group_is_exercised_on_real_files() -> None:
    seen: set[AttributeGroup] = set()
    options = DeidOptions()
    for name in REAL_FILES:
        original = pydicom.dcmread(get_testdata_file(name))
        seen |= _check_table(original, Deidentifier(KEY, options).apply(original), options)
    phantom = _phantom()[0]
    seen |= _check_table(phantom, Deidentifier(KEY, options).apply(phantom), options)
    expected = set(AttributeGroup) - {AttributeGroup.PRIVATE, AttributeGroup.OVERLAYS, AttributeGroup.OTHER}
    assert expected <= seen


def test_no_phi_survives_anywhere_in_the_output() -> None:
    series = _phantom()
    original_uids = {
        str(value)
        for ds in series
        for value in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID)
    }
    deid = Deidentifier(KEY)
    for ds in series:
        result = deid.deidentify(ds)
        data = _bytes(result.dataset)
        for keyword, value in PHI.items():
            for part in value.split("^"):
                assert part.encode() not in data, f"{keyword}: {part!r} survived"
        for text in (PRIVATE_DATE, PRIVATE_NOTE, *NESTED_NAME.split("^"), *original_uids):
            assert text.encode() not in data, f"{text!r} survived"
        assert result.report.actions_for("PersonName") == [Action.DUMMY]  # the nested name, two levels down


def test_nested_attributes_get_the_table_action() -> None:
    ds = _phantom()[0]
    out = Deidentifier(KEY).apply(ds)
    reference = out.ReferencedImageSequence[0]  # X/Z/U*: kept, its UIDs replaced
    assert reference.ReferencedSOPClassUID == ds.SOPClassUID  # a class UID is not an identifier
    assert reference.ReferencedSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID
    purpose = reference.PurposeOfReferenceCodeSequence[0]  # not in the table: kept, recursed into
    assert purpose.CodeValue == "121311"
    assert purpose.PersonName == "ANONYMOUS"  # D, two levels down


def test_dates_follow_the_table_and_unlisted_dates_become_dummies() -> None:
    ds = _phantom()[0]
    out = Deidentifier(KEY).apply(ds)
    assert out.StudyDate == "" and out.StudyTime == ""  # Z
    assert out.AcquisitionDate == ""  # X/Z -> Z
    assert out.SeriesDate == "19000101" and out.ContentDate == "19000101"  # X/D, Z/D -> D
    assert out.AcquisitionDateTime == "19000101000000"  # X/Z/D -> D
    assert out.InstanceCreationDate == "19000101"  # not in the table: medge's rule
    assert out.PatientBirthDate == ""
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_retain_dates_keeps_exactly_the_temporal_attributes() -> None:
    ds = _phantom()[0]
    basic = Deidentifier(KEY).apply(ds)
    dated = Deidentifier(KEY, DeidOptions(retain_dates=True)).apply(ds)
    changed = {elem.keyword for elem in dated if elem.tag not in basic or basic[elem.tag].value != elem.value}
    changed |= {elem.keyword for elem in basic if elem.tag not in dated}
    temporal = {
        elem.keyword
        for elem in ds
        if ((entry := lookup(int(elem.tag))) is not None and entry.retain_full_dates) or elem.VR in ("DA", "TM", "DT")
    }
    markers = {
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "LongitudinalTemporalInformationModified",
    }
    assert changed - markers <= temporal
    assert {"StudyDate", "SeriesDate", "AcquisitionDateTime", "InstanceCreationDate", "StudyTime"} <= changed
    assert dated.StudyDate == "20240315" and dated.AcquisitionDateTime == "20240315101112"
    assert dated.PatientBirthDate == ""  # a birth date is identity, not longitudinal information
    assert dated.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [item.CodeValue for item in dated.DeidentificationMethodCodeSequence] == ["113100", "113106"]


def test_clean_descriptors_keeps_imaging_words_only() -> None:
    ds = _phantom()[0]
    basic = Deidentifier(KEY).apply(ds)
    clean = Deidentifier(KEY, DeidOptions(clean_descriptors=True)).apply(ds)
    assert "SeriesDescription" not in basic and "StudyDescription" not in basic
    assert clean.SeriesDescription == "Lung 2.5mm"
    assert clean.StudyDescription == "CT chest followup"
    assert clean.ProtocolName == "CHEST ROUTINE"  # X/D basic, C with the option
    assert basic.ProtocolName == "ANONYMOUS"
    assert clean.ImageComments == "of chest"  # the name went, the imaging words stayed
    assert "ImageComments" not in basic
    changed = {elem.keyword for elem in clean if elem.tag not in basic or basic[elem.tag].value != elem.value}
    markers = {"DeidentificationMethod", "DeidentificationMethodCodeSequence"}
    described = {elem.keyword for elem in ds if (entry := lookup(int(elem.tag))) and entry.clean_descriptors}
    assert changed - markers <= described
    assert [item.CodeValue for item in clean.DeidentificationMethodCodeSequence] == ["113100", "113105"]


def test_markers_and_file_meta() -> None:
    ds = _phantom()[0]
    out = Deidentifier(KEY).apply(ds)
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == "PS3.15 E.1 Basic Application Confidentiality Profile"
    (code,) = out.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert ds.PatientName == PHI["PatientName"]  # the input is untouched


def test_uids_are_consistent_across_a_study_and_differ_by_key() -> None:
    first, second = _phantom(seed=7), _phantom(seed=7)
    deid = Deidentifier(KEY)
    out = [deid.apply(ds) for ds in first]
    assert len({ds.StudyInstanceUID for ds in out}) == 1
    assert len({ds.SeriesInstanceUID for ds in out}) == 1
    assert len({ds.FrameOfReferenceUID for ds in out}) == 1
    assert len({ds.SOPInstanceUID for ds in out}) == len(out)
    for ds in out:
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
            assert is_valid_uid(str(uid)) and str(uid).startswith("2.25.")
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out[0].SOPInstanceUID
    again = [Deidentifier(KEY).apply(ds) for ds in second]  # a new run, the same key
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in out]
    other = Deidentifier(OTHER_KEY).apply(first[0])
    assert other.StudyInstanceUID != out[0].StudyInstanceUID
    assert other.SOPInstanceUID != out[0].SOPInstanceUID


def test_uids_of_the_dicom_root_are_kept() -> None:
    deid = Deidentifier(KEY)
    assert deid.map_uid("1.2.840.10008.1.4.1.1") == "1.2.840.10008.1.4.1.1"
    assert deid.map_uid("1.2.3.4") == deid.map_uid("1.2.3.4\x00") != "1.2.3.4"
    with pytest.raises(DeidError, match="16"):
        Deidentifier(b"short")


def test_private_tags_are_removed_unless_safe_listed() -> None:
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert any(elem.tag.is_private for elem in original)
    out = Deidentifier(KEY).apply(original)
    assert not any(elem.tag.is_private for elem in out)
    phantom = _phantom()[0]
    keep = DeidOptions(keep_private=(SafePrivateTag.parse("ACME PHI 1.0:03"),))
    result = Deidentifier(KEY, keep).deidentify(phantom)
    block = result.dataset.private_block(0x0009, "ACME PHI 1.0")
    assert block[0x03].value == "3.5"
    assert block.block_start + 0x01 not in result.dataset and block.block_start + 0x02 not in result.dataset
    assert {item.rule for item in result.report.actions if item.group is AttributeGroup.PRIVATE} == {
        "private",
        "safe-listed private",
    }
    nested = pydicom.dcmread(get_testdata_file("nested_priv_SQ.dcm"))
    assert not [elem for elem in Deidentifier(KEY).apply(nested) if elem.tag.is_private]


@pytest.mark.parametrize("text", ["ACME:0x", "noelement", ":10", "ACME:0010,10"])
def test_bad_private_safe_list_entries_are_refused(text: str) -> None:
    with pytest.raises(DeidError, match="--keep-private"):
        SafePrivateTag.parse(text)


def test_overlays_and_curves_are_removed_whole() -> None:
    original = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"))
    assert any(elem.tag.group == 0x6000 for elem in original)
    original.add_new(0x50000005, "US", 2)  # a retired curve plane
    original.add_new(0x50003000, "OW", b"\x00\x01" * 4)
    result = Deidentifier(KEY).deidentify(original)
    assert not [elem for elem in result.dataset if 0x5000 <= elem.tag.group <= 0x60FF]
    assert result.report.by_group()[AttributeGroup.OVERLAYS][Action.REMOVE] >= 3


def test_burned_in_annotation_is_refused_or_flagged() -> None:
    ultrasound = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    assert ultrasound.Modality == "US" and "BurnedInAnnotation" not in ultrasound
    with pytest.raises(BurnedInAnnotationError, match="US image"):
        Deidentifier(KEY).apply(ultrasound)
    allowed = Deidentifier(KEY, DeidOptions(allow_burned_in=True)).deidentify(ultrasound)
    assert allowed.report.burned_in and "US" in allowed.report.burned_in
    ultrasound.BurnedInAnnotation = "NO"
    assert Deidentifier(KEY).deidentify(ultrasound).report.burned_in is None
    ct = _phantom()[0]
    ct.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="YES"):
        Deidentifier(KEY).apply(ct)
    capture = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    with pytest.raises(BurnedInAnnotationError, match="secondary capture"):
        Deidentifier(KEY).apply(capture)


def _dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    return {line.strip() for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
@pytest.mark.parametrize("options", [DeidOptions(), DeidOptions(retain_dates=True, clean_descriptors=True)])
def test_dciodvfy_finds_no_new_errors(tmp_path: Path, options: DeidOptions) -> None:
    ds = generate_series(SPEC, seed=11).datasets[0]
    ds.OperatorsName = "Smithers^Waylon"
    ds.InstitutionAddress = "742 Evergreen Terrace"
    before, after = tmp_path / "before.dcm", tmp_path / "after.dcm"
    ds.save_as(before, enforce_file_format=True)
    after.write_bytes(_bytes(Deidentifier(KEY, options).apply(ds)))
    assert _dciodvfy_errors(after) - _dciodvfy_errors(before) == set()
