"""The SR of a finding: valid DICOM (dciodvfy), readable by highdicom, in the source study, stable UIDs."""

from __future__ import annotations

import io
import subprocess
from importlib.metadata import version
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from runtime.analyzer import Analysis
from runtime.findings import build_findings
from runtime.results import SR_SOP_CLASSES, StructuredReportError, build_sr, device_uid, encode_sr, sr_results
from sdk.appliance_config import PacsSection, PhiSection
from sdk.manifest import Manifest
from sdk.messages import Finding
from sdk.plugins import Classification
from sdk.testing import PhantomSpec, generate_studies

DCIODVFY = "/usr/bin/dciodvfy"


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("sr-phantom")
    truth = generate_studies(root, 1, PhantomSpec(slices=2, rows=64, columns=64), seed=3)[0]
    return pydicom.dcmread(root / str(truth.folder) / str(truth.series[0].slices[0].file))


def _finding(ds: Dataset, manifest: Manifest, sha: str, result: Classification, frame: int | None = None) -> Finding:
    (finding,) = build_findings(
        ds,
        [Analysis(frame, result)],
        manifest,
        sha,
        site="st-marys",
        device="ct-1",
        site_key=b"k" * 32,
        phi=PhiSection(),
        broker_tls=False,
    )
    return finding


def _negative() -> Classification:
    return Classification("nodule", 0.12, {"nodule": 0.12}, 0.35, False)


def _positive_at(row: float, column: float) -> Classification:
    return Classification("nodule", 0.91, {"nodule": 0.91}, 0.35, True, row, column)


def _verify(sr: Dataset, tmp_path: Path) -> tuple[Path, list[str]]:
    """Write the SR as Part 10, run dciodvfy: no errors allowed; the warnings are returned."""
    path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    path.write_bytes(encode_sr(sr))
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(lines)
    return path, [line for line in lines if line.startswith("Warning")]


def _equipment(sr: Dataset, purpose: str = "109102") -> Dataset:
    items = [
        item
        for item in sr.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == purpose and item.get("Manufacturer") == "medge"
    ]
    assert len(items) == 1, sr.ContributingEquipmentSequence
    return items[0]


def test_classification_finding_on_a_phantom_ct(package, phantom_ct: Dataset, tmp_path: Path) -> None:
    manifest, sha = package
    finding = _finding(phantom_ct, manifest, sha, _negative())
    sr = build_sr(phantom_ct, finding, manifest, sha)
    path, warnings = _verify(sr, tmp_path)
    # Only warnings medge knows about: its private label scheme, and Device UID in Contributing Equipment (IHE AIR)
    # which this dciodvfy's dictionary of the macro predates.
    assert all("99MEDGE" in w or "Device UID" in w or "Standard Extended" in w for w in warnings), warnings

    back = hd.sr.srread(path)
    assert isinstance(back, hd.sr.Comprehensive3DSR)
    assert back.SOPClassUID == SR_SOP_CLASSES["tid1500"]
    # Placed in the source study, in a series of its own; patient and study modules copied.
    assert back.StudyInstanceUID == phantom_ct.StudyInstanceUID
    assert back.SeriesInstanceUID != phantom_ct.SeriesInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate"):
        assert back.get(keyword) == phantom_ct.get(keyword), keyword
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.Modality == "SR" and back.CompletionFlag == "COMPLETE"
    # The source instance is referenced as evidence and from the content tree.
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == phantom_ct.SOPInstanceUID
    # The model's identity, as IHE AI Results asks.
    equipment = _equipment(back)
    assert equipment.ManufacturerModelName == manifest.model.name
    assert list(equipment.SoftwareVersions) == [manifest.model.version, f"medge {version('medge')}"]
    assert equipment.DeviceUID == device_uid(sha)
    # TID 1500: one measurement group naming the algorithm, the label, the decision and the score.
    groups = back.content.get_image_measurement_groups()
    assert len(groups) == 1 and not back.content.get_planar_roi_measurement_groups()
    group = groups[0]
    assert group.finding_type.value == "nodule"
    assert group.get_qualitative_evaluations()[0].value == hd.sr.CodedConcept("272519000", "SCT", "Absent")
    score = [m for m in group.get_measurements() if m.name.value == "122157"]
    assert len(score) == 1 and score[0].value == pytest.approx(finding.score)
    algorithm = {item.name.value: item.value for item in group[0].ContentSequence if item.name.value[:4] == "1110"}
    assert algorithm == {"111001": manifest.model.name, "111003": manifest.model.version}  # TID 4019
    assert group.source_images[0].referenced_sop_instance_uid == phantom_ct.SOPInstanceUID


def test_detection_finding_with_a_location_on_ct_small(package, tmp_path: Path) -> None:
    manifest, sha = package
    detection = manifest.model_copy(update={"model": manifest.model.model_copy(update={"task": "detection"})})
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    finding = _finding(source, detection, sha, _positive_at(30.0, 40.0))
    sr = build_sr(source, finding, detection, sha, manufacturer="Acme AI", device="1.2.3.4.5")
    path, _ = _verify(sr, tmp_path)
    back = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientName == source.PatientName and back.PatientID == source.PatientID
    assert back.SpecificCharacterSet == "ISO_IR 192"  # the source's ISO_IR 100 text, re-encoded as UTF-8
    equipment = [i for i in back.ContributingEquipmentSequence if i.get("Manufacturer") == "Acme AI"]
    assert len(equipment) == 1 and equipment[0].DeviceUID == "1.2.3.4.5"
    (group,) = back.content.get_planar_roi_measurement_groups()
    assert group.get_qualitative_evaluations()[0].value == hd.sr.CodedConcept("52101004", "SCT", "Present")
    # The point is on the source image, in DICOM's pixel coordinates (column, row from the first pixel's corner).
    assert group.roi.GraphicType == "POINT"
    assert list(group.roi.GraphicData) == pytest.approx([40.5, 30.5])
    region_source = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert region_source.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_uids_are_stable_per_finding_and_differ_between_findings(package, phantom_ct: Dataset) -> None:
    manifest, sha = package
    finding = _finding(phantom_ct, manifest, sha, _negative())
    first, again = build_sr(phantom_ct, finding, manifest, sha), build_sr(phantom_ct, finding, manifest, sha)
    assert first.SOPInstanceUID == again.SOPInstanceUID  # a rebuild after a crash: the same SR for the PACS
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert len(first.SOPInstanceUID) <= 64 and first.SOPInstanceUID.startswith("2.25.")
    other = finding.model_copy(update={"id": "another-finding"})
    second = build_sr(phantom_ct, other, manifest, sha)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID  # one SR series per study and package


def test_comprehensive_template_and_a_frame_of_a_multiframe_source(package, tmp_path: Path) -> None:
    manifest, sha = package
    source = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    assert int(source.NumberOfFrames) > 2
    finding = _finding(source, manifest, sha, _negative(), frame=2)
    sr = build_sr(source, finding, manifest, sha, template="comprehensive")
    path, _ = _verify(sr, tmp_path)
    back = hd.sr.srread(path)
    assert isinstance(back, hd.sr.ComprehensiveSR)
    assert back.SOPClassUID == SR_SOP_CLASSES["comprehensive"]
    (group,) = back.content.get_image_measurement_groups()
    assert group.source_images[0].referenced_frame_numbers == [3]  # frame index 2 is frame number 3
    # A single-component patient name (highdicom would warn) is copied exactly, and the source is left alone.
    assert "^" not in str(source.PatientName)
    assert back.PatientName == source.PatientName


def test_non_ascii_patient_names_survive(package, phantom_ct: Dataset, tmp_path: Path) -> None:
    manifest, sha = package
    source = Dataset()
    source.update(phantom_ct)
    source.file_meta = phantom_ct.file_meta
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = "Müller^Jörg"
    finding = _finding(source, manifest, sha, _negative())
    path, _ = _verify(build_sr(source, finding, manifest, sha), tmp_path)
    assert str(pydicom.dcmread(path).PatientName) == "Müller^Jörg"


def test_results_only_for_the_packages_named(package, phantom_ct: Dataset) -> None:
    manifest, sha = package
    finding = _finding(phantom_ct, manifest, sha, _negative())
    pacs = {"enabled": True, "host": "127.0.0.1", "ae_title": "PACS"}
    assert sr_results(phantom_ct, [finding], manifest, sha, PacsSection(**pacs, packages=["other-model"])) == []
    assert sr_results(phantom_ct, [finding], manifest, sha, PacsSection()) == []  # off
    (result,) = sr_results(phantom_ct, [finding], manifest, sha, PacsSection(**pacs, packages=[manifest.model.name]))
    assert result.finding_id == finding.id
    assert result.study_instance_uid == phantom_ct.StudyInstanceUID
    assert result.destination == "PACS@127.0.0.1:104"
    stored = pydicom.dcmread(io.BytesIO(result.data))
    assert stored.SOPInstanceUID == result.sop_instance_uid and stored.SOPClassUID == result.sop_class_uid


def test_a_source_without_its_uids_is_refused(package, phantom_ct: Dataset) -> None:
    manifest, sha = package
    finding = _finding(phantom_ct, manifest, sha, _negative())
    source = Dataset()
    source.update(phantom_ct)
    del source.StudyInstanceUID
    with pytest.raises(StructuredReportError, match="StudyInstanceUID"):
        build_sr(source, finding, manifest, sha)
