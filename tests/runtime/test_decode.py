"""Hostile and broken instances are refused before pixel decoding (runtime/decode.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from runtime.decode import DecodeLimits, read_instance
from sdk.errors import DicomInputError
from sdk.testing import PhantomSpec, generate_series


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    ds = generate_series(PhantomSpec(slices=2), seed=3).datasets[0]
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_good_instance_reads(ct_file: Path) -> None:
    ds = read_instance(ct_file)
    assert ds.Modality == "CT"


def test_truncated_pixel_data(ct_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ct_file.read_bytes()[:-5000])
    with pytest.raises(DicomInputError) as caught:
        read_instance(cut)
    assert "truncated" in str(caught.value) or "cannot read" in str(caught.value)
    assert caught.value.path == cut


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [("Rows", 60000, "Rows 60000"), ("NumberOfFrames", 100000, "NumberOfFrames"), ("Columns", 0, "no image")],
)
def test_declared_sizes_over_the_limits_are_refused_before_decoding(
    ct_file: Path, tmp_path: Path, keyword: str, value: object, message: str
) -> None:
    import pydicom

    ds = pydicom.dcmread(ct_file)
    setattr(ds, keyword, value)
    hostile = tmp_path / "hostile.dcm"
    ds.save_as(hostile, enforce_file_format=True)
    with pytest.raises(DicomInputError, match=message):
        read_instance(hostile)


def test_pixel_budget(ct_file: Path) -> None:
    with pytest.raises(DicomInputError, match="pixels is over the limit"):
        read_instance(ct_file, DecodeLimits(max_pixels=1000))
    with pytest.raises(DicomInputError, match="bytes is over the limit"):
        read_instance(ct_file, DecodeLimits(max_bytes=100))


def test_not_dicom_and_dicomdir(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    with pytest.raises(DicomInputError, match="not a readable DICOM"):
        read_instance(text)
    dicomdir = Path(str(get_testdata_file("DICOMDIR", download=False)))
    with pytest.raises(DicomInputError, match="DICOMDIR"):
        read_instance(dicomdir)


def test_compressed_files_read(tmp_path: Path) -> None:
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        ds = read_instance(Path(str(get_testdata_file(name, download=False))))
        assert ds.Rows == 64
