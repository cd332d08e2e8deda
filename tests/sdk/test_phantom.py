"""The chest-CT phantom writes valid, self-consistent DICOM with a truthful answer key,
and the committed reference model separates fresh phantoms."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from sdk.model_config import load_model_config
from sdk.preprocessing import preprocess
from sdk.reference_model import config_path, onnx_path, training_record_path
from sdk.testing import PhantomSpec, StudyTruth, generate_series, generate_studies, load_truth, write_study

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StudyTruth]:
    out = tmp_path_factory.mktemp("phantom")
    # Every series gets nodules, so the answer key always has something to check.
    truth = write_study(out, PhantomSpec(empty_series_fraction=0.0), seed=11, n_series=2, patient_id="PAT-11")
    return out / str(truth.folder), truth


def _read_series(study_dir: Path, truth: StudyTruth, index: int) -> list[pydicom.Dataset]:
    series = truth.series[index]
    return [pydicom.dcmread(study_dir / str(s.file)) for s in series.slices]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC (ties half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


# --- DICOM validity -----------------------------------------------------------------------------------------------


def test_dciodvfy_finds_no_errors(study: tuple[Path, StudyTruth]) -> None:
    study_dir, truth = study
    files = [study_dir / str(truth.series[0].slices[k].file) for k in (0, 15, 31)]
    files.append(study_dir / str(truth.series[1].slices[7].file))
    for path in files:
        result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
        report = result.stdout + result.stderr
        assert "CTImage" in report, report  # dciodvfy recognised the IOD it validated against
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_file_meta_and_uids(study: tuple[Path, StudyTruth]) -> None:
    study_dir, truth = study
    sop_uids: set[str] = set()
    series_uids = set()
    for index in range(2):
        datasets = _read_series(study_dir, truth, index)
        for ds in datasets:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.StudyInstanceUID == truth.study_instance_uid
            assert ds.PatientID == "PAT-11"
            assert ds.SeriesInstanceUID == truth.series[index].series_instance_uid
            assert ds.FrameOfReferenceUID == truth.series[index].frame_of_reference_uid
            assert ds.Modality == "CT" and ds.PatientPosition == "HFS" and ds.BodyPartExamined == "CHEST"
            sop_uids.add(ds.SOPInstanceUID)
            series_uids.add(ds.SeriesInstanceUID)
        assert [s.sop_instance_uid for s in truth.series[index].slices] == [ds.SOPInstanceUID for ds in datasets]
    assert len(sop_uids) == 64
    assert len(series_uids) == 2
    assert truth.series[0].frame_of_reference_uid != truth.series[1].frame_of_reference_uid


def test_geometry_and_rescale(study: tuple[Path, StudyTruth]) -> None:
    study_dir, truth = study
    series_truth = truth.series[0]
    datasets = _read_series(study_dir, truth, 0)
    spec = truth.spec
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    np.testing.assert_allclose(np.diff(z), spec.slice_thickness_mm, atol=1e-3)
    np.testing.assert_allclose(z, [s.z_mm for s in series_truth.slices], atol=1e-3)
    np.testing.assert_allclose([float(ds.SliceLocation) for ds in datasets], z, atol=1e-3)
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 33))
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [spec.pixel_spacing_mm] * 2
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient[:2]], series_truth.origin_mm[:2], atol=1e-4
        )
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (256, 256, 16, 0)
        assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024 and ds.RescaleType == "HU"
        assert int(ds.pixel_array.max()) < 2**ds.BitsStored
    # The files hold the in-memory rendering of the same series seed, quantised to whole HU.
    regenerated = generate_series(spec, seed=series_truth.seed)
    hu_files = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    representable = (regenerated.hu > -1024) & (regenerated.hu < 3071)
    assert np.abs(hu_files - regenerated.hu)[representable].max() <= 0.5 + 1e-3
    air = hu_files[:, :8, :8]
    assert -1100 < air.mean() < -900  # outside the body is air


def test_truth_matches_a_bright_blob(study: tuple[Path, StudyTruth]) -> None:
    """Every clearly visible nodule is brighter at its stated centre than the lung around it."""
    study_dir, truth = study
    checked = 0
    for index, series_truth in enumerate(truth.series):
        datasets = _read_series(study_dir, truth, index)
        ps = series_truth.pixel_spacing_mm
        rows, cols = np.mgrid[0:256, 0:256]
        for ds, slice_truth in zip(datasets, series_truth.slices, strict=True):
            hu = ds.pixel_array.astype(np.float64) - 1024
            assert slice_truth.has_nodule == bool(slice_truth.nodules)
            for nod in slice_truth.nodules:
                assert nod.radius_mm >= truth.spec.visible_radius_mm
                if nod.radius_mm < 3.0:
                    continue
                r, c = round(nod.row), round(nod.column)
                centre = hu[r - 1 : r + 2, c - 1 : c + 2].mean()
                dist = np.hypot(rows - nod.row, cols - nod.column) * ps
                ring = hu[(dist > nod.radius_mm + 6) & (dist < nod.radius_mm + 10)]
                assert centre - np.median(ring) > 150, (slice_truth.instance_number, nod)
                if nod.radius_mm >= 5.0:  # smaller cross-sections are dimmed by partial volume
                    assert abs(centre - nod.hu) < 100
                checked += 1
    assert checked >= 3
    total = sum(s.has_nodule for series in truth.series for s in series.slices)
    assert 0 < total < 64


def test_truth_json_round_trips(study: tuple[Path, StudyTruth]) -> None:
    study_dir, truth = study
    assert load_truth(study_dir / "truth.json") == truth


# --- determinism and spec -----------------------------------------------------------------------------------------


def test_same_seed_same_series() -> None:
    spec = PhantomSpec(slices=6, rows=128, columns=128, pixel_spacing_mm=2.8)
    first, second = generate_series(spec, seed=42), generate_series(spec, seed=42)
    other = generate_series(spec, seed=43)
    assert [ds.PixelData for ds in first.datasets] == [ds.PixelData for ds in second.datasets]
    assert [ds.SOPInstanceUID for ds in first.datasets] == [ds.SOPInstanceUID for ds in second.datasets]
    assert first.truth == second.truth
    assert first.datasets[0].PixelData != other.datasets[0].PixelData
    assert first.truth.series_instance_uid != other.truth.series_instance_uid


def test_noise_level_is_what_the_spec_says() -> None:
    quiet = generate_series(PhantomSpec(slices=2, noise_hu=0.0), seed=5).hu
    noisy = generate_series(PhantomSpec(slices=2, noise_hu=30.0), seed=5).hu
    assert 25 < float(np.std(noisy - quiet)) < 35


def test_generate_studies_writes_an_index(tmp_path: Path) -> None:
    spec = PhantomSpec(slices=3, rows=96, columns=96, pixel_spacing_mm=3.75)
    truths = generate_studies(tmp_path, 2, spec, seed=7)
    index = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    assert [StudyTruth.model_validate(s) for s in index["studies"]] == truths
    assert truths[0].study_instance_uid != truths[1].study_instance_uid
    for truth in truths:
        files = sorted((tmp_path / str(truth.folder)).rglob("*.dcm"))
        assert len(files) == 3
        assert load_truth(tmp_path / str(truth.folder) / "truth.json") == truth


def test_spec_rejects_reversed_ranges() -> None:
    with pytest.raises(ValidationError, match="nodule_radius_mm"):
        PhantomSpec(nodule_radius_mm=(8.0, 3.0))


# --- the reference model ------------------------------------------------------------------------------------------


def test_reference_model_separates_fresh_phantoms() -> None:
    ort = pytest.importorskip("onnxruntime")
    config = load_model_config(config_path())
    record = json.loads(training_record_path().read_text(encoding="utf-8"))
    assert record["sha256"] == hashlib.sha256(onnx_path().read_bytes()).hexdigest()
    session = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == config.input.name
    assert list(model_input.shape[1:]) == list(config.preprocessing.input_shape()[1:])
    assert config.outputs.location is not None
    assert {o.name for o in session.get_outputs()} == {config.outputs.scores, config.outputs.location}

    # Seeds far from the training ranges (see training_record.json); every series has nodules.
    spec = PhantomSpec(empty_series_fraction=0.0)
    images, labels, truths = [], [], []
    for seed in (987_001, 987_002, 987_003, 987_004):
        series = generate_series(spec, seed=seed)
        for ds, slice_truth in zip(series.datasets, series.truth.slices, strict=True):
            images.append(preprocess(ds, config.preprocessing)[0])
            labels.append(int(slice_truth.has_nodule))
            truths.append(slice_truth)
    batch = np.stack(images)
    scores, locations = session.run([config.outputs.scores, config.outputs.location], {config.input.name: batch})
    assert scores.shape == (128, len(config.labels)) and locations.shape == (128, 2)
    assert np.all((scores >= 0) & (scores <= 1)) and np.all((locations >= 0) & (locations <= 1))
    y = np.array(labels)
    assert 10 <= y.sum() <= 118
    assert _auc(y, scores[:, 0]) > 0.9
    # Where the model is confident and right, it also points at a nodule.
    errors = []
    for slice_truth, score, location in zip(truths, scores[:, 0], locations, strict=True):
        if slice_truth.has_nodule and score >= config.thresholds["nodule"]:
            nearest = min(
                np.hypot(location[0] * 256 - (n.row + 0.5), location[1] * 256 - (n.column + 0.5))
                for n in slice_truth.nodules
            )
            errors.append(nearest)
    assert errors and float(np.median(errors)) < 12


def test_testing_package_exports_the_phantom_api() -> None:
    import sdk.testing
    import sdk.testing.phantom

    assert sdk.testing.__all__ == sdk.testing.phantom.__all__
    for name in sdk.testing.__all__:
        assert getattr(sdk.testing, name) is getattr(sdk.testing.phantom, name)
