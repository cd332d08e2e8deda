"""quantization.calibration: DICOM folders become calibration and held-back slices, deterministically.

Real phantom CT studies from sdk.testing, pydicom's bundled MR files, and
broken files written into the folder; the real preprocessing runs throughout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from quantization.calibration import (
    SkipReason,
    find_instances,
    labels_from_phantom_truth,
    load_calibration,
    read_labels_csv,
    scan_folder,
    write_labels_csv,
)
from quantization.errors import CalibrationError
from sdk.errors import ConfigError
from sdk.input_statistics import DRIFT_THRESHOLD, drift_score, input_statistics
from sdk.model_config import ModelConfig
from sdk.preprocess_spec import Normalization, Window
from sdk.preprocessing import preprocess
from sdk.testing import PhantomSpec, generate_studies

PHANTOM = PhantomSpec(slices=8, rows=96, columns=96, pixel_spacing_mm=3.75)
STUDIES = 5


def _config(size: tuple[int, int] = (64, 64)) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": "test-nodule",
            "version": "1.0.0",
            "task": "classification",
            "labels": ["nodule"],
            "thresholds": {"nodule": 0.5},
            "input": {"name": "image"},
            "outputs": {"scores": "prob"},
            "preprocessing": {
                "modalities": ["CT"],
                "window": {"center": -600, "width": 1500},
                "size": list(size),
            },
        }
    )


CONFIG = _config()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five single-series phantom studies of eight slices (read-only: copy before changing)."""
    folder = tmp_path_factory.mktemp("phantoms")
    generate_studies(folder, STUDIES, PHANTOM, seed=11)
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _mr_file() -> Path:
    path = get_testdata_file("MR_small.dcm", download=False)
    assert path is not None, "pydicom's MR_small.dcm is not installed"
    return Path(path)


# --- finding files ----------------------------------------------------------------------------------------------------


def test_find_instances_by_magic_not_extension(phantoms: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    (folder / "deep" / "er").mkdir(parents=True)
    source = find_instances(phantoms)[0]
    shutil.copy(source, folder / "deep" / "er" / "IM0001")  # no extension
    shutil.copy(source, folder / "slice.DCM")
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.dcm").write_bytes(b"\0" * 200)  # right extension, no DICM magic
    shutil.copy(source, folder / "DICOMDIR")

    scan = scan_folder(folder)

    assert [p.relative_to(folder).as_posix() for p in scan.instances] == ["deep/er/IM0001", "slice.DCM"]
    assert scan.skipped == {SkipReason.NOT_DICOM: 2, SkipReason.DICOMDIR: 1}
    assert len(find_instances(phantoms)) == STUDIES * PHANTOM.slices


# --- the set and its split --------------------------------------------------------------------------------------------


def test_set_is_split_by_series(phantoms: Path) -> None:
    result = load_calibration(phantoms, CONFIG, min_instances=10)

    assert result.calibration.shape[1:] == (1, 64, 64) and result.calibration.dtype == np.float32
    assert result.size == STUDIES * PHANTOM.slices == result.instances
    assert len(result.calibration) == len(result.calibration_ids) and len(result.evaluation) == len(
        result.evaluation_ids
    )
    assert result.calibration_series and result.evaluation_series
    assert not set(result.calibration_series) & set(result.evaluation_series)
    assert not set(result.calibration_ids) & set(result.evaluation_ids)
    # about a quarter held back, in whole series of eight
    assert len(result.evaluation) == PHANTOM.slices
    assert result.modalities == {"CT": STUDIES * PHANTOM.slices}
    assert result.skipped == {SkipReason.NOT_DICOM: STUDIES + 1}  # the truth.json files
    assert result.record("minmax").size == len(result.calibration)
    # the slices are exactly what the runtime's preprocessing makes of each instance
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in find_instances(phantoms)}
    ds = pydicom.dcmread(by_uid[result.evaluation_ids[3]])
    np.testing.assert_array_equal(result.evaluation[3], preprocess(ds, CONFIG.preprocessing)[0])


def test_series_of_each_side_are_whole(phantoms: Path) -> None:
    result = load_calibration(phantoms, CONFIG, min_instances=10, eval_fraction=0.5, seed=3)
    series_of = {}
    for path in find_instances(phantoms):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series_of[ds.SOPInstanceUID] = ds.SeriesInstanceUID
    assert {series_of[i] for i in result.calibration_ids} == set(result.calibration_series)
    assert {series_of[i] for i in result.evaluation_ids} == set(result.evaluation_series)
    assert len(result.evaluation_series) in (2, 3)


def test_hash_ignores_file_layout_and_follows_content(phantoms: Path, tmp_path: Path) -> None:
    reference = load_calibration(phantoms, CONFIG, min_instances=10)

    flat = tmp_path / "flat"
    flat.mkdir()
    for index, path in enumerate(reversed(find_instances(phantoms))):
        shutil.copy(path, flat / f"{index:03d}_{path.stem}")
    relaid = load_calibration(flat, CONFIG, min_instances=10)
    assert relaid.sha256 == reference.sha256
    assert relaid.evaluation_ids == reference.evaluation_ids
    np.testing.assert_array_equal(relaid.calibration, reference.calibration)

    victim = flat / next(p.name for p in sorted(flat.iterdir()))
    ds = pydicom.dcmread(victim)
    pixels = ds.pixel_array.copy()
    pixels[40:50, 40:50] += 300
    ds.PixelData = pixels.tobytes()
    ds.save_as(victim)
    assert load_calibration(flat, CONFIG, min_instances=10).sha256 != reference.sha256
    assert load_calibration(phantoms, CONFIG, min_instances=10, seed=1).sha256 != reference.sha256


def test_max_instances_spreads_over_series(phantoms: Path) -> None:
    seen: list[tuple[int, int]] = []
    result = load_calibration(
        phantoms, CONFIG, min_instances=10, max_instances=15, progress=lambda done, total: seen.append((done, total))
    )
    assert result.size == 15
    assert result.skipped[SkipReason.BEYOND_MAX] == STUDIES * PHANTOM.slices - 15
    assert len(result.calibration_series) + len(result.evaluation_series) == STUDIES  # three from each series
    assert seen[-1] == (15, 15)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_single_multiframe_series_is_split_within(phantoms: Path, tmp_path: Path) -> None:
    frames = [pydicom.dcmread(p) for p in find_instances(phantoms)[: PHANTOM.slices]]
    ds = frames[0]
    ds.NumberOfFrames = len(frames)
    ds.PixelData = b"".join(f.PixelData for f in frames)
    folder = tmp_path / "multiframe"
    folder.mkdir()
    ds.save_as(folder / "enhanced.dcm")

    result = load_calibration(folder, CONFIG, min_instances=4)

    assert result.instances == 1 and result.size == PHANTOM.slices
    assert result.evaluation_ids == [f"{ds.SOPInstanceUID}#{k}" for k in (7, 8)]
    assert any("one series" in note for note in result.notes)


# --- what is skipped and what is fatal --------------------------------------------------------------------------------


def test_broken_files_are_skipped_with_reasons(phantoms: Path, tmp_path: Path) -> None:
    folder = _copy(phantoms, tmp_path / "broken")
    (folder / "readme.dcm").write_text("these are phantom studies\n")
    victim = find_instances(folder)[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # cut inside the pixel data
    header_cut = find_instances(folder)[1]
    header_cut.write_bytes(header_cut.read_bytes()[:300])  # cut inside the header

    result = load_calibration(folder, CONFIG, min_instances=10)

    assert result.size == STUDIES * PHANTOM.slices - 2
    assert result.skipped[SkipReason.NOT_DICOM] == STUDIES + 2
    failed = {reason: count for reason, count in result.skipped.items() if reason in result.failures}
    assert sum(failed.values()) == 2
    assert any(str(victim) in message for message in result.failures.values())


def test_a_failed_instance_is_replaced_by_the_next(phantoms: Path, tmp_path: Path) -> None:
    folder = _copy(phantoms, tmp_path / "replace")
    first = load_calibration(folder, CONFIG, min_instances=4, max_instances=6)
    chosen = set(first.calibration_ids + first.evaluation_ids)
    victim = next(p for p in find_instances(folder) if pydicom.dcmread(p).SOPInstanceUID in chosen)
    uid = pydicom.dcmread(victim).SOPInstanceUID
    victim.write_bytes(victim.read_bytes()[:-4000])

    again = load_calibration(folder, CONFIG, min_instances=4, max_instances=6)

    assert again.size == 6 and uid not in again.calibration_ids + again.evaluation_ids
    assert again.skipped[SkipReason.CANNOT_PREPROCESS] == 1


def test_wrong_modality_names_what_the_folder_holds(tmp_path: Path) -> None:
    for index in range(3):
        ds = pydicom.dcmread(_mr_file())
        ds.SOPInstanceUID = f"1.2.3.4.{index}"
        ds.save_as(tmp_path / f"mr{index}.dcm")

    with pytest.raises(CalibrationError, match=r"holds 3 MR instance\(s\) but the model takes CT") as info:
        load_calibration(tmp_path, CONFIG)
    assert info.value.skipped == {"modality MR": 3}


def test_mr_instances_beside_ct_are_counted_not_used(phantoms: Path, tmp_path: Path) -> None:
    folder = _copy(phantoms, tmp_path / "mixed")
    shutil.copy(_mr_file(), folder / "mr.dcm")
    result = load_calibration(folder, CONFIG, min_instances=10)
    assert result.modalities == {"CT": STUDIES * PHANTOM.slices, "MR": 1}
    assert result.skipped["modality MR"] == 1


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "absent", CONFIG)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(CalibrationError, match=r"no DICOM files found in .* \(2 other file\(s\) skipped\)"):
        load_calibration(tmp_path, CONFIG)


def test_too_few_usable_slices_says_how_many_and_why(phantoms: Path, tmp_path: Path) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    paths = find_instances(phantoms)[:4]
    for path in paths:
        shutil.copy(path, folder / path.name.replace(".dcm", f"_{path.parent.name[-6:]}.dcm"))
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-5000])

    with pytest.raises(
        CalibrationError, match=r"only 3 usable slice\(s\) .* at least 20 are needed; 1 failed; first failure: "
    ):
        load_calibration(folder, CONFIG)


def test_arguments_are_checked(phantoms: Path) -> None:
    with pytest.raises(ConfigError, match="eval_fraction"):
        load_calibration(phantoms, CONFIG, eval_fraction=1.0)
    with pytest.raises(ConfigError, match="max_instances"):
        load_calibration(phantoms, CONFIG, min_instances=30, max_instances=10)


# --- labels -----------------------------------------------------------------------------------------------------------


def test_labels_from_phantom_truth_align_with_slices(phantoms: Path) -> None:
    truth = labels_from_phantom_truth(phantoms)
    assert len(truth) == STUDIES * PHANTOM.slices
    result = load_calibration(phantoms, CONFIG, min_instances=10, labels=truth)

    assert result.evaluation_labels is not None and result.calibration_labels is not None
    assert result.evaluation_labels.shape == (len(result.evaluation), 1)
    expected = [truth[uid]["nodule"] for uid in result.evaluation_ids]
    np.testing.assert_array_equal(result.evaluation_labels[:, 0], expected)
    assert labels_from_phantom_truth(phantoms / "nowhere") == {}


def test_labels_csv_round_trip_and_partial_labels(phantoms: Path, tmp_path: Path) -> None:
    truth = labels_from_phantom_truth(phantoms)
    partial = dict(sorted(truth.items())[::2])
    path = write_labels_csv(partial, tmp_path / "labels.csv")
    assert path.read_text().splitlines()[0] == "sop_instance_uid,nodule"
    assert read_labels_csv(path) == partial

    result = load_calibration(phantoms, CONFIG, min_instances=10, labels=read_labels_csv(path))
    labels = np.concatenate([result.calibration_labels, result.evaluation_labels])  # type: ignore[list-item]
    assert int(np.isnan(labels).sum()) == len(truth) - len(partial)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uid,nodule\n1.2,1\n", "must start with a header"),
        ("sop_instance_uid,nodule\n1.2,yes\n", "line 2: label values are 0 or 1"),
        ("sop_instance_uid,nodule\n1.2,1\n1.2,0\n", "line 3: instance 1.2 is listed twice"),
    ],
)
def test_bad_labels_csv(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_labels_csv(path)


# --- statistics and drift ---------------------------------------------------------------------------------------------


def test_statistics_describe_the_calibration_inputs(phantoms: Path) -> None:
    result = load_calibration(phantoms, CONFIG, min_instances=10)
    stats = result.statistics
    assert stats.range_source == "spec" and stats.bin_edges[0] == 0.0 and stats.bin_edges[-1] == 1.0
    assert len(stats.bin_edges) == 65 and stats.samples == len(result.calibration)
    (channel,) = stats.channels
    assert len(channel.histogram) == 64 and sum(channel.histogram) == pytest.approx(1.0)
    assert list(channel.percentiles) == ["1", "5", "50", "95", "99"]
    assert channel.mean == pytest.approx(float(result.calibration.mean()), rel=1e-5)
    assert 0.0 <= channel.percentiles["1"] <= channel.percentiles["50"] <= channel.percentiles["99"] <= 1.0

    unbounded = CONFIG.preprocessing.model_copy(update={"normalization": Normalization(mode="zscore")})
    data_stats = input_statistics(np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32), unbounded)
    assert data_stats.range_source == "data" and data_stats.bin_edges[0] < -2 < 2 < data_stats.bin_edges[-1]


def test_drift_is_low_for_held_back_ct_and_high_for_other_inputs(phantoms: Path) -> None:
    result = load_calibration(phantoms, CONFIG, min_instances=10)
    stats = result.statistics
    held_back = max(drift_score(stats, tensor) for tensor in result.evaluation)

    ds = pydicom.dcmread(find_instances(phantoms)[0])
    soft_tissue = CONFIG.preprocessing.model_copy(update={"window": Window(center=40, width=400)})
    rewindowed = drift_score(stats, preprocess(ds, soft_tissue))
    mr_spec = CONFIG.preprocessing.model_copy(update={"modalities": ["MR"]})
    mr = drift_score(stats, preprocess(pydicom.dcmread(_mr_file()), mr_spec))

    assert held_back < DRIFT_THRESHOLD < min(rewindowed, mr)
    assert drift_score(stats, result.calibration) < 0.05  # the calibration data against itself
