"""What the DICOM fuzzer (benchmarks/fuzz_dicom.py) found, each rebuilt by code and held to the designed outcome.

Every input here once escaped the path from received bytes to tensor with
something other than a DicomInputError or a PreprocessingError. Each test
builds the smallest input that shows the fault and checks both the function
that was fixed and the fuzzer's whole target (:func:`check_bytes`).
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from benchmarks.fuzz_dicom import check_bytes, fuzz_specs
from runtime.decode import read_instance
from sdk.errors import DicomInputError, PreprocessingError
from sdk.preprocess_spec import PreprocessSpec
from sdk.preprocessing import preprocess


def _ct(transfer_syntax: str, *, rows: int, columns: int, bits: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.3"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    return ds


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _rle_with_an_overlong_last_segment() -> Dataset:
    """An 8x8 16-bit RLE frame whose second segment decodes to 70 bytes where 64 fit.

    pylibjpeg-rle (Rust) panics on it (``index out of bounds``) instead of
    raising; pyo3 delivers the panic as ``PanicException``, a BaseException,
    which slipped past ``except Exception`` in preprocessing and would have
    ended the appliance's decode thread. Found by the fuzzer mutating the RLE
    phantom seed within a minute.
    """
    ds = _ct(RLELossless, rows=8, columns=8, bits=16)
    high = bytes([63]) + bytes(64)  # a literal run of 64 bytes: exactly one segment's worth
    low = bytes([59]) + bytes(60) + bytes([9]) + bytes(10)  # 60 + 10 bytes: crosses the end mid-run
    header = struct.pack("<16I", 2, 64, 64 + len(high), *([0] * 13))
    ds.PixelData = encapsulate([header + high + low])
    ds["PixelData"].VR = "OB"
    return ds


@pytest.fixture(scope="module")
def reference_spec() -> PreprocessSpec:
    return fuzz_specs()[0]


def test_a_decoder_panic_is_a_preprocessing_error(reference_spec: PreprocessSpec) -> None:
    ds = _rle_with_an_overlong_last_segment()
    with pytest.raises(PreprocessingError, match="pixel data cannot be decoded") as caught:
        preprocess(ds, reference_spec)
    assert caught.value.field == "PixelData"
    assert type(caught.value.__cause__).__name__ == "PanicException", "the fault is the decoder's panic"


def test_the_fuzz_target_refuses_the_panicking_rle_frame(tmp_path: Path) -> None:
    data = _part10(_rle_with_an_overlong_last_segment())
    assert check_bytes(data, tmp_path, fuzz_specs()) is None  # raises on anything but a designed refusal


def test_the_fuzz_target_turns_a_good_instance_into_a_tensor(tmp_path: Path) -> None:
    """The target must reach the tensor for a good input, or it would be fuzzing only its refusals."""
    ds = _ct(RLELossless, rows=8, columns=8, bits=16)
    ds.compress(RLELossless, np.arange(64, dtype=np.uint16).reshape(8, 8) * 40, generate_instance_uid=False)
    specs = fuzz_specs()
    data = _part10(ds)
    tensor = check_bytes(data, tmp_path, specs)
    assert tensor is not None
    assert tensor.shape == specs[len(data) % len(specs)].input_shape(1)


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.1.77", "1.2.840.10\xff08.1.2.1"])
def test_an_unknown_transfer_syntax_is_a_dicom_input_error(tmp_path: Path, transfer_syntax: str) -> None:
    """A transfer syntax pydicom does not know made ``UID.is_compressed`` raise ValueError in read_instance.

    Ingest's header walk accepts any transfer syntax encoded explicit VR little
    endian, so such a file reached the spool. Found by the fuzzer changing one
    character of a seed's Transfer Syntax UID.
    """
    ds = _ct(ExplicitVRLittleEndian, rows=8, columns=8, bits=16)
    ds.PixelData = bytes(128)
    data = bytearray(_part10(ds))
    at = data.index(ExplicitVRLittleEndian.encode())
    data[at : at + len(transfer_syntax)] = transfer_syntax.encode("latin-1")
    path = tmp_path / "unknown-ts.dcm"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd UID before we refuse it
        with pytest.raises(DicomInputError, match="transfer syntax") as caught:
            read_instance(path)
    assert caught.value.field == "TransferSyntaxUID"
    assert check_bytes(bytes(data), tmp_path, fuzz_specs()) is None


def test_an_unknown_value_representation_is_a_dicom_input_error(tmp_path: Path) -> None:
    """pydicom raises NotImplementedError for an unknown VR, lazily, on the element's first access.

    read_instance first read Samples per Pixel (``US`` changed to ``WS`` by one
    bit) and let that NotImplementedError out. Found by the fuzzer.
    """
    ds = _ct(ExplicitVRLittleEndian, rows=8, columns=8, bits=16)
    ds.PixelData = bytes(128)
    data = bytearray(_part10(ds))
    at = data.index(b"\x28\x00\x02\x00US")  # (0028,0002) Samples per Pixel, explicit VR
    data[at + 4 : at + 6] = b"WS"
    path = tmp_path / "unknown-vr.dcm"
    path.write_bytes(data)
    with pytest.raises(DicomInputError, match=r"\(0028,0002\) has an unknown value representation 'WS'"):
        read_instance(path)
    assert check_bytes(bytes(data), tmp_path, fuzz_specs()) is None


def test_an_unknown_value_representation_of_an_empty_element_is_a_dicom_input_error(tmp_path: Path) -> None:
    """pydicom's ``get_item`` converts an empty raw element on the spot, raising NotImplementedError for its VR.

    The first fix looked at raw elements with ``get_item`` and tripped over
    exactly what it looked for (Study Date, empty, ``DA`` changed to ``TA``).
    Found by the fuzzer.
    """
    ds = _ct(ExplicitVRLittleEndian, rows=8, columns=8, bits=16)
    ds.StudyDate = ""
    ds.PixelData = bytes(128)
    data = bytearray(_part10(ds))
    at = data.index(b"\x08\x00\x20\x00DA\x00\x00")  # (0008,0020) Study Date, explicit VR, empty
    data[at + 4 : at + 6] = b"TA"
    path = tmp_path / "unknown-vr-empty.dcm"
    path.write_bytes(data)
    with pytest.raises(DicomInputError, match=r"\(0008,0020\) has an unknown value representation 'TA'"):
        read_instance(path)
    assert check_bytes(bytes(data), tmp_path, fuzz_specs()) is None


def test_an_unknown_value_representation_in_the_file_meta_is_a_dicom_input_error(tmp_path: Path) -> None:
    """pydicom converts the File Meta Information Group Length while reading: NotImplementedError out of dcmread.

    Found by the fuzzer (``UL`` changed to ``RL``).
    """
    ds = _ct(ExplicitVRLittleEndian, rows=8, columns=8, bits=16)
    ds.PixelData = bytes(128)
    data = bytearray(_part10(ds))
    at = data.index(b"\x02\x00\x00\x00UL")  # (0002,0000) File Meta Information Group Length
    data[at + 4 : at + 6] = b"RL"
    path = tmp_path / "unknown-vr-meta.dcm"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on its way to the error
        with pytest.raises(DicomInputError, match="not a readable DICOM file: Unknown Value Representation 'RL'"):
            read_instance(path)
    assert check_bytes(bytes(data), tmp_path, fuzz_specs()) is None


def _modality_recoded_as_a_broken_sequence() -> bytes:
    """Modality (0008,0060) re-encoded with VR SQ around its two bytes ``CT``: no item tag can be read there.

    pydicom converts an element on first access, so ``ds.get("Modality")`` in
    preprocessing raised ``OSError`` ("No tag to read"); a damaged element may
    sit behind any attribute the pipeline reads.
    """
    ds = _ct(ExplicitVRLittleEndian, rows=8, columns=8, bits=16)
    ds.PixelData = np.zeros((8, 8), dtype=np.uint16).tobytes()
    raw = _part10(ds)
    element = b"\x08\x00\x60\x00CS\x02\x00CT"
    assert raw.count(element) == 1
    return raw.replace(element, b"\x08\x00\x60\x00SQ\x00\x00" + struct.pack("<I", 2) + b"CT")


def test_a_malformed_element_read_during_preprocessing_is_a_preprocessing_error(
    tmp_path: Path, reference_spec: PreprocessSpec
) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(_modality_recoded_as_a_broken_sequence())
    ds = read_instance(path)  # the header is fine: the damage is only met when Modality is read
    with pytest.raises(PreprocessingError, match="malformed element"):
        preprocess(ds, reference_spec)
    assert check_bytes(path.read_bytes(), tmp_path, fuzz_specs()) is None
