"""Part 10 framing: identity without decoding, truncation caught where pydicom reads on, file meta written."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import data_element_generator

from runtime.ingest import file_meta_bytes, read_header
from sdk.errors import DicomInputError

SAMPLES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated
    "JPEG2000.dcm",  # encapsulated
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg.dcm",  # labelled explicit VR, encoded implicit: pydicom reads it, so must we
]


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


@pytest.mark.parametrize("name", SAMPLES)
def test_identity_matches_pydicom(name: str) -> None:
    data = bundled(name).read_bytes()
    header = read_header(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom says so when it switches a mislabelled dataset to implicit VR
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)

    assert header.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert header.sop_class_uid == ds.get("SOPClassUID")
    assert header.sop_instance_uid == ds.get("SOPInstanceUID")
    assert header.study_instance_uid == ds.get("StudyInstanceUID")
    assert header.series_instance_uid == ds.get("SeriesInstanceUID")


def _element_ends(data: bytes, *, implicit: bool, little: bool) -> set[int]:
    """Offsets where a top-level element ends: a cut there leaves a well-formed, shorter dataset."""
    fp = io.BytesIO(data)
    fp.seek(132)
    ends = {fp.tell() for _ in data_element_generator(fp, False, True, stop_when=lambda tag, *_: tag.group != 2)}
    return ends | {fp.tell() for _ in data_element_generator(fp, implicit, little)}


@pytest.mark.parametrize(
    ("name", "implicit", "little"),
    [
        ("CT_small.dcm", False, True),
        ("MR_small_implicit.dcm", True, True),
        ("MR_small_bigendian.dcm", False, False),
        ("JPEG2000.dcm", False, True),
        ("MR_small_RLE.dcm", False, True),
    ],
)
def test_every_cut_inside_an_element_is_caught(name: str, implicit: bool, little: bool) -> None:
    data = bundled(name).read_bytes()
    ends = _element_ends(data, implicit=implicit, little=little)
    passed = []
    for cut in range(133, len(data), 7):
        try:
            read_header(data[:cut])
        except DicomInputError:
            continue
        passed.append(cut)
    assert passed and set(passed) <= ends


def test_a_cut_deflated_stream_is_caught() -> None:
    data = bundled("image_dfl.dcm").read_bytes()
    for cut in range(400, len(data), 97):
        with pytest.raises(DicomInputError):
            read_header(data[:cut])


def test_pydicom_reads_a_truncated_file_silently_but_ingest_does_not() -> None:
    data = bundled("MR_truncated.dcm").read_bytes()
    assert len(dcmread(io.BytesIO(data)).PixelData) < 8192  # pydicom: no error, just fewer bytes
    with pytest.raises(DicomInputError, match=r"truncated: element \(7FE0,0010\) declares 8192 bytes"):
        read_header(data)


def test_not_dicom_and_missing_transfer_syntax() -> None:
    with pytest.raises(DicomInputError, match="not a DICOM Part 10 file"):
        read_header(b"hello world" * 50)
    with pytest.raises(DicomInputError, match="Transfer Syntax UID"):
        read_header(bundled("meta_missing_tsyntax.dcm").read_bytes())


def test_a_bare_dataset_with_its_transfer_syntax() -> None:
    data = bundled("MR_small.dcm").read_bytes()
    ds = dcmread(io.BytesIO(data))
    offset = data.index(b"DICM") + 4
    meta_end = offset + 12 + struct.unpack_from("<I", data, offset + 8)[0]
    header = read_header(data[meta_end:], transfer_syntax_uid=ds.file_meta.TransferSyntaxUID)
    assert header.identity().sop_instance_uid == ds.SOPInstanceUID


def test_a_deflate_bomb_is_refused() -> None:
    data = bundled("image_dfl.dcm").read_bytes()
    with pytest.raises(DicomInputError, match="inflates beyond 1000 bytes"):
        read_header(data, max_inflated_bytes=1000)
    bomb_meta = file_meta_bytes(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        sop_instance_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1.99",
        implementation_class_uid="1.2.3.4",
    )
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = deflater.compress(b"\x00" * 50_000_000) + deflater.flush()
    with pytest.raises(DicomInputError, match="inflates beyond"):
        read_header(bomb_meta + bomb, max_inflated_bytes=10_000_000)


def test_deeply_nested_sequences_are_refused() -> None:
    item_start = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    sq = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF)
    dataset = (sq + item_start) * 40
    with pytest.raises(DicomInputError, match="nested deeper"):
        read_header(dataset, transfer_syntax_uid="1.2.840.10008.1.2.1")


def test_identity_names_every_unusable_uid() -> None:
    header = read_header(bundled("JPEGLSNearLossless_16.dcm").read_bytes())
    with pytest.raises(DicomInputError, match="StudyInstanceUID missing; SeriesInstanceUID missing"):
        header.identity()


def test_file_meta_reads_back_with_pydicom(tmp_path: Path) -> None:
    source = bundled("MR_small.dcm").read_bytes()
    ds = dcmread(io.BytesIO(source))
    head = file_meta_bytes(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version_name="MEDGE_1",
        source_ae_title="CT1",
    )
    offset = source.index(b"DICM") + 4
    body = source[offset + 12 + struct.unpack_from("<I", source, offset + 8)[0] :]
    path = tmp_path / "out.dcm"
    path.write_bytes(head + body)

    back = dcmread(path)
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.SourceApplicationEntityTitle == "CT1"
    assert back.file_meta.ImplementationVersionName == "MEDGE_1"
    assert back.file_meta.FileMetaInformationGroupLength == len(head) - 132 - 12
    assert back.PixelData == ds.PixelData

    with pytest.raises(DicomInputError, match="at most 16"):
        file_meta_bytes(
            sop_class_uid="1.2",
            sop_instance_uid="1.3",
            transfer_syntax_uid="1.2.840.10008.1.2",
            implementation_class_uid="1.4",
            source_ae_title="A" * 17,
        )
