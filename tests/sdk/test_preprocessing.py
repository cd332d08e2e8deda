"""sdk.preprocessing: one exact, deterministic path from DICOM pixels to a model tensor.

Real pydicom test files and real codecs (RLE, JPEG-LS, JPEG 2000, deflate,
big endian); small synthetic datasets where the expected numbers are worked
out by hand.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels import apply_windowing
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from sdk.errors import PreprocessingError
from sdk.preprocess_spec import Normalization, PreprocessSpec, Window
from sdk.preprocessing import check_input, preprocess

CT_WINDOW = Window(center=40, width=400)


def _read(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not installed"
    return pydicom.dcmread(path)


def _roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, so the test sees what a receiver would."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _reencoded_ct(syntax: UID, **options: Any) -> Dataset:
    """CT_small.dcm written in another transfer syntax (pydicom bundles no CT variants)."""
    ds = _read("CT_small.dcm")
    if syntax.is_compressed:
        ds.compress(syntax, **options)
        return _roundtrip(ds)
    if syntax == ExplicitVRBigEndian:
        ds.PixelData = ds.pixel_array.astype(">i2").tobytes()  # pydicom leaves OW byte order to the caller
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, implicit_vr=False, little_endian=False, force_encoding=True)
        buffer.seek(0)
        return pydicom.dcmread(buffer)
    ds.file_meta.TransferSyntaxUID = syntax
    return _roundtrip(ds)


def _synthetic(pixels: Any, *, modality: str = "CT", photometric: str = "MONOCHROME2", **elements: Any) -> Dataset:
    """An in-memory image with ``pixels`` (2-D, or 3-D for multi-frame) and extra elements."""
    arr = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = modality
    ds.set_pixel_data(arr, photometric, arr.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _spec(**fields: Any) -> PreprocessSpec:
    fields.setdefault("modalities", ["CT"])
    return PreprocessSpec(**fields)


def _flat(ds: Dataset, **fields: Any) -> np.ndarray:
    """Run preprocess with a (1, 1, H, W) result and return the (H, W) plane."""
    out = preprocess(ds, _spec(**fields))
    assert out.shape[:2] == (1, 1)
    return out[0, 0]


# --- the same image in every encoding gives the same tensor -----------------------------------------------------

MR_LOSSLESS = [
    "MR_small_implicit.dcm",
    "MR_small_expb.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


@pytest.mark.parametrize("name", MR_LOSSLESS)
def test_lossless_mr_encodings_give_identical_tensors(name: str) -> None:
    spec = PreprocessSpec(modalities=["MR"], window="voi_lut", size=(48, 80), channels=3)
    reference = preprocess(_read("MR_small.dcm"), spec)
    assert reference.min() < 0.25 and reference.max() == 1.0  # a real picture, not a flat field
    assert np.array_equal(preprocess(_read(name), spec), reference)


def test_padded_pixel_data_gives_the_same_tensor() -> None:
    spec = PreprocessSpec(modalities=["MR"], window="voi_lut", size=(64, 64))
    with pytest.warns(UserWarning, match="excess padding"):
        padded = preprocess(_read("MR_small_padded.dcm"), spec)
    assert np.array_equal(padded, preprocess(_read("MR_small.dcm"), spec))


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ],
    ids=lambda uid: uid.name,
)
def test_lossless_ct_encodings_give_identical_tensors(syntax: UID) -> None:
    spec = _spec(window=CT_WINDOW, size=(96, 96))
    variant = _reencoded_ct(syntax)
    assert variant.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(preprocess(variant, spec), preprocess(_read("CT_small.dcm"), spec))


@pytest.mark.parametrize(
    ("syntax", "options"),
    [(JPEGLSNearLossless, {"jls_error": 3}), (JPEG2000, {"j2k_cr": [20]})],
    ids=["jpeg-ls-near-lossless", "jpeg2000-lossy"],
)
def test_lossy_ct_encodings_stay_within_the_pixel_error_bound(syntax: UID, options: dict[str, Any]) -> None:
    # Every step is 1-Lipschitz in the max norm except rescale (x slope) and the window (/ width), so the
    # tensor moves by at most max|raw error| * slope / width: the tolerance follows from the codec's error.
    original, lossy = _read("CT_small.dcm"), _reencoded_ct(syntax, **options)
    raw_error = int(np.abs(lossy.pixel_array.astype(np.int64) - original.pixel_array).max())
    assert raw_error > 0, "the lossy codec changed nothing: this test would prove nothing"
    spec = _spec(window=CT_WINDOW, size=(96, 96))
    bound = raw_error * float(original.RescaleSlope) / CT_WINDOW.width
    difference = np.abs(preprocess(lossy, spec) - preprocess(original, spec)).max()
    assert difference <= bound + 1e-6


@pytest.mark.parametrize("name", ["rtdose_rle.dcm", "rtdose_expb.dcm"])
def test_multiframe_encodings_give_identical_tensors(name: str) -> None:
    spec = PreprocessSpec(modalities=["RTDOSE"], size=(12, 8))
    reference = preprocess(_read("rtdose.dcm"), spec)
    assert reference.shape == (15, 1, 12, 8)
    assert np.array_equal(preprocess(_read(name), spec), reference)


# --- shape, dtype, layout --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_shape_dtype_and_layout(layout: str, channels: int) -> None:
    spec = _spec(window=CT_WINDOW, size=(64, 48), channels=channels, layout=layout)
    out = preprocess(_read("CT_small.dcm"), spec)
    assert out.shape == spec.input_shape(1)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    planes = out[0] if layout == "NCHW" else np.moveaxis(out[0], -1, 0)
    for plane in planes[1:]:
        assert np.array_equal(plane, planes[0])
    single = preprocess(_read("CT_small.dcm"), _spec(window=CT_WINDOW, size=(64, 48)))
    assert np.array_equal(planes[0], single[0, 0])


def test_dataset_and_its_cached_pixels_are_left_alone() -> None:
    ds = _read("CT_small.dcm")
    before = ds.pixel_array.copy()
    spec = _spec(rescale=False, size=(128, 128), normalization=Normalization(mode="none"))
    first = preprocess(ds, spec)
    assert np.array_equal(first[0, 0], before)  # identity size, no window, no normalization: the stored values
    assert np.array_equal(ds.pixel_array, before)
    assert np.array_equal(preprocess(ds, spec), first)


# --- window and VOI maths --------------------------------------------------------------------------------------


def test_explicit_window_on_rescaled_values() -> None:
    # raw * 2 - 100 = HU [-100, 0, 100, 150, 200, 250, 300, 500]; window [50, 250] maps linearly onto [0, 1].
    ds = _synthetic(
        np.array([[0, 50, 100, 125, 150, 175, 200, 300]], dtype=np.int16), RescaleSlope=2, RescaleIntercept=-100
    )
    out = _flat(ds, window=Window(center=150, width=200), size=(1, 8))
    assert out.tolist() == [[0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]]


def test_explicit_window_on_stored_values_when_rescale_is_off() -> None:
    ds = _synthetic(
        np.array([[0, 50, 100, 125, 150, 175, 200, 300]], dtype=np.int16), RescaleSlope=2, RescaleIntercept=-100
    )
    out = _flat(ds, rescale=False, window=Window(center=150, width=200), size=(1, 8))
    assert out.tolist() == [[0.0, 0.0, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0]]


def test_dataset_linear_window_by_hand() -> None:
    # DICOM LINEAR: centre 100, width 201 -> ((x - 99.5) / 200 + 0.5), clipped to [0, 1].
    ds = _synthetic(np.array([[-1, 0, 99, 100, 199, 200]], dtype=np.int16), WindowCenter=100, WindowWidth=201)
    out = _flat(ds, window="voi_lut", size=(1, 6))
    np.testing.assert_allclose(out, [[0.0, 0.0025, 0.4975, 0.5025, 0.9975, 1.0]], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("function", "center", "width"),
    [
        ("LINEAR", [100, 40], [201, 80]),  # multi-valued: the first view is used
        ("LINEAR", 50, 1),  # a width of 1 is a threshold
        ("LINEAR_EXACT", 37.5, 120.0),
        ("SIGMOID", 60, 90),
    ],
)
def test_dataset_window_matches_pydicom_scaled_to_unit(function: str, center: Any, width: Any) -> None:
    pixels = np.arange(-200, 400, dtype=np.int16).reshape(6, 100)
    ds = _synthetic(pixels, WindowCenter=center, WindowWidth=width, VOILUTFunction=function)
    out = _flat(ds, window="voi_lut", size=(6, 100))
    # pydicom maps onto the full stored range [-32768, 32767] for a signed 16-bit image.
    expected = (apply_windowing(pixels, ds) + 32768) / 65535
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0


def _voi_lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


@pytest.mark.parametrize("bits", [8, 12])
def test_voi_lut_sequence_maps_its_output_range_onto_unit(bits: int) -> None:
    # 4 entries from stored value 10: <=10 -> 0, 11 -> 1/3, 12 -> 2/3, >=13 -> 1 of the 2**bits - 1 output range.
    top = 2**bits - 1
    ds = _synthetic(
        np.array([[5, 10, 11, 12, 13, 40]], dtype=np.int16),
        VOILUTSequence=DicomSequence([_voi_lut_item([4, 10, bits], [0, top // 3, 2 * top // 3, top])]),
    )
    out = _flat(ds, window="voi_lut", size=(1, 6))
    np.testing.assert_allclose(out, [[0, 0, 1 / 3, 2 / 3, 1, 1]], rtol=0, atol=1e-7)


def test_voi_lut_sequence_after_rescale_and_beyond_16_bits() -> None:
    # Rescaled values are floats and can exceed 65535: 65535 + 12 = 65547 is entry 65537 past the first mapped
    # value 10, and must clip to the last entry rather than wrap around to entry 1 in a 16-bit index.
    ds = _synthetic(
        np.array([[0, 1, 65535]], dtype=np.uint16),
        RescaleSlope=1,
        RescaleIntercept=12,
        VOILUTSequence=DicomSequence([_voi_lut_item([4, 10, 8], [0, 85, 170, 255])]),
    )
    out = _flat(ds, window="voi_lut", size=(1, 3))
    np.testing.assert_allclose(out, [[2 / 3, 1, 1]], rtol=0, atol=1e-7)


def test_missing_voi_raises() -> None:
    with pytest.raises(PreprocessingError, match="no VOI LUT Sequence, no Window Center/Width") as caught:
        preprocess(_read("CT_small.dcm"), _spec(window="voi_lut", size=(64, 64)))
    assert caught.value.field == "WindowCenter"
    assert "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322" in str(caught.value)


def test_dataset_window_without_rescale_refuses_rescaled_images() -> None:
    ds = _synthetic(
        np.zeros((4, 4), dtype=np.int16), RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    with pytest.raises(PreprocessingError, match="rescale = false"):
        preprocess(ds, _spec(rescale=False, window="voi_lut", size=(4, 4)))


def test_invalid_dataset_window_raises() -> None:
    ds = _synthetic(np.zeros((4, 4), dtype=np.int16), WindowCenter=40, WindowWidth=0.5)
    with pytest.raises(PreprocessingError, match="Window Width") as caught:
        preprocess(ds, _spec(window="voi_lut", size=(4, 4)))
    assert caught.value.field == "WindowWidth"
    ds.WindowWidth, ds.VOILUTFunction = 400, "GAMMA"
    with pytest.raises(PreprocessingError, match="'GAMMA' is not supported"):
        preprocess(ds, _spec(window="voi_lut", size=(4, 4)))


# --- MONOCHROME1 ------------------------------------------------------------------------------------------------


def test_monochrome1_is_inverted_after_the_window() -> None:
    pixels = np.array([[0, 50, 100, 150, 200, 300]], dtype=np.int16)
    mono2 = _flat(_synthetic(pixels), window=Window(center=150, width=200), size=(1, 6))
    mono1 = _synthetic(pixels, photometric="MONOCHROME1")
    assert np.array_equal(_flat(mono1, window=Window(center=150, width=200), size=(1, 6)), 1.0 - mono2)
    kept = _flat(mono1, window=Window(center=150, width=200), size=(1, 6), invert_monochrome1=False)
    assert np.array_equal(kept, mono2)


def test_monochrome1_without_window_is_reflected_within_its_range() -> None:
    mono1 = _synthetic(np.array([[10, 20, 40, 110]], dtype=np.int16), photometric="MONOCHROME1")
    raw = _flat(mono1, rescale=False, size=(1, 4), normalization=Normalization(mode="none"))
    assert raw.tolist() == [[110.0, 100.0, 80.0, 10.0]]  # min + max - x
    unit = _flat(mono1, rescale=False, size=(1, 4))
    np.testing.assert_allclose(unit, [[1.0, 0.9, 0.7, 0.0]], rtol=0, atol=1e-7)


# --- resize -----------------------------------------------------------------------------------------------------


def _raw_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    spec = _spec(rescale=False, size=size, normalization=Normalization(mode="none"))
    return preprocess(_synthetic(pixels), spec)[0, 0]


def test_resize_upsampling_by_hand() -> None:
    # 2 -> 4 with half-pixel centres samples at -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1):
    # weights [0, 0.25, 0.75, 1] between the two pixels, separably on rows and columns.
    out = _raw_resize(np.array([[0, 4], [8, 12]], dtype=np.int16), (4, 4))
    ramp = np.array([0.0, 0.25, 0.75, 1.0])
    assert np.array_equal(out, 8 * ramp[:, None] + 4 * ramp[None, :])


def test_resize_downsampling_by_hand() -> None:
    # 4 -> 2 samples at 0.5 and 2.5: the mean of each 2x2 block (no antialiasing beyond that).
    out = _raw_resize(np.arange(16, dtype=np.int16).reshape(4, 4), (2, 2))
    assert out.tolist() == [[2.5, 4.5], [10.5, 12.5]]
    # 3 -> 2 samples at 0.25 and 1.75; the row axis (1 -> 1) is left alone.
    assert _raw_resize(np.array([[0, 4, 8]], dtype=np.int16), (1, 2)).tolist() == [[1.0, 7.0]]


def test_resize_identity_returns_the_pixels() -> None:
    pixels = np.random.default_rng(7).integers(-1000, 3000, size=(37, 53), dtype=np.int16)
    assert np.array_equal(_raw_resize(pixels, (37, 53)), pixels.astype(np.float32))


@pytest.mark.parametrize(("shape", "size"), [((37, 53), (64, 20)), ((128, 96), (45, 45)), ((5, 7), (5, 30))])
def test_resize_matches_torch_bilinear(shape: tuple[int, int], size: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    pixels = np.random.default_rng(11).integers(0, 256, size=shape, dtype=np.int16)
    ours = _raw_resize(pixels, size)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(pixels.astype(np.float32))[None, None],
        size=size,
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )[0, 0].numpy()
    # torch computes source coordinates in float32 (ours in float64): allow 1e-5 of the 0..255 range.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=255 * 1e-5)


# --- normalization ----------------------------------------------------------------------------------------------


def test_unit_normalization_without_window_uses_each_frames_range() -> None:
    frames = np.stack([np.arange(12).reshape(3, 4) * 3, np.arange(12).reshape(3, 4) + 100, np.full((3, 4), 7)])
    ds = _synthetic(frames.astype(np.int16))
    out = preprocess(ds, _spec(size=(3, 4)))[:, 0]
    expected = np.arange(12, dtype=np.float32).reshape(3, 4) / 11
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out[1], expected, rtol=0, atol=1e-7)
    assert np.array_equal(out[2], np.zeros((3, 4), dtype=np.float32))  # a flat frame: zeros, not NaN


def test_zscore_and_spec_mean_std() -> None:
    ct = _read("CT_small.dcm")
    z = preprocess(ct, _spec(size=(100, 90), normalization=Normalization(mode="zscore")))[0, 0]
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1.0) < 1e-5
    unit = preprocess(ct, _spec(window=CT_WINDOW, size=(100, 90)))[0, 0]
    shifted = preprocess(
        ct, _spec(window=CT_WINDOW, size=(100, 90), normalization=Normalization(mode="unit", mean=0.5, std=0.25))
    )[0, 0]
    np.testing.assert_allclose(shifted, (unit - 0.5) / 0.25, rtol=0, atol=1e-6)


# --- multi-frame ------------------------------------------------------------------------------------------------


def test_multiframe_all_frames_and_a_selection() -> None:
    spec = PreprocessSpec(modalities=["RTDOSE"], size=(10, 10), normalization=Normalization(mode="none"))
    ds = _read("rtdose.dcm")
    everything = preprocess(ds, spec)
    assert everything.shape == (15, 1, 10, 10)
    assert np.array_equal(everything[:, 0], ds.pixel_array.astype(np.float32))
    assert np.array_equal(preprocess(ds, spec, frames=[3, 0, 3]), everything[[3, 0, 3]])
    # compressed: only the frames asked for are decoded, with the same result
    assert np.array_equal(preprocess(_read("rtdose_rle.dcm"), spec, frames=[14, 2]), everything[[14, 2]])
    with pytest.raises(PreprocessingError, match=r"frame indices \[15\] are out of range"):
        preprocess(ds, spec, frames=[0, 15])


def _functional_group(keyword: str, **values: Any) -> Dataset:
    inner = Dataset()
    for name, value in values.items():
        setattr(inner, name, value)
    group = Dataset()
    setattr(group, keyword, DicomSequence([inner]))
    return group


def test_enhanced_multiframe_uses_per_frame_then_shared_functional_groups() -> None:
    pixels = np.tile(np.array([[0, 100, 200, 300]], dtype=np.int16), (3, 1, 1))
    per_frame = [Dataset(), Dataset(), Dataset()]  # frame 0: the shared rescale (intercept 0) applies
    per_frame[1].PixelValueTransformationSequence = _functional_group(
        "PixelValueTransformationSequence", RescaleSlope=1, RescaleIntercept=100
    ).PixelValueTransformationSequence
    per_frame[2].PixelValueTransformationSequence = _functional_group(
        "PixelValueTransformationSequence", RescaleSlope=1, RescaleIntercept=200
    ).PixelValueTransformationSequence
    per_frame[2].FrameVOILUTSequence = _functional_group(
        "FrameVOILUTSequence", WindowCenter=400, WindowWidth=400, VOILUTFunction="LINEAR_EXACT"
    ).FrameVOILUTSequence
    shared = _functional_group("PixelValueTransformationSequence", RescaleSlope=1, RescaleIntercept=0)
    shared.FrameVOILUTSequence = _functional_group(
        "FrameVOILUTSequence", WindowCenter=200, WindowWidth=400, VOILUTFunction="LINEAR_EXACT"
    ).FrameVOILUTSequence
    ds = _synthetic(
        pixels,
        PerFrameFunctionalGroupsSequence=DicomSequence(per_frame),
        SharedFunctionalGroupsSequence=DicomSequence([shared]),
    )
    out = preprocess(ds, _spec(window="voi_lut", size=(1, 4)))[:, 0, 0]
    assert out.tolist() == [[0.0, 0.25, 0.5, 0.75], [0.25, 0.5, 0.75, 1.0], [0.0, 0.25, 0.5, 0.75]]


# --- refused input ----------------------------------------------------------------------------------------------


def test_modality_mismatch_names_both() -> None:
    ds = _read("MR_small.dcm")
    with pytest.raises(PreprocessingError) as caught:
        check_input(ds, _spec(modalities=["CT", "CR"], size=(64, 64)))
    message = str(caught.value)
    assert "'MR'" in message and "'CT'" in message and "'CR'" in message
    assert caught.value.field == "Modality"
    assert ds.SOPInstanceUID in message
    assert str(caught.value.path) == ds.filename
    with pytest.raises(PreprocessingError, match="'MR' is not accepted"):
        preprocess(ds, _spec(size=(64, 64)))


@pytest.mark.parametrize(
    ("name", "photometric"), [("SC_rgb_small_odd.dcm", "RGB"), ("examples_palette.dcm", "PALETTE COLOR")]
)
def test_colour_images_are_refused(name: str, photometric: str) -> None:
    ds = _read(name)
    with pytest.raises(PreprocessingError, match="greyscale images only") as caught:
        preprocess(ds, _spec(modalities=[ds.Modality], size=(32, 32)))
    assert photometric in str(caught.value)
    assert caught.value.field == "PhotometricInterpretation"


def test_samples_per_pixel_other_than_one_is_refused() -> None:
    ds = _synthetic(np.zeros((4, 4), dtype=np.int16))
    ds.SamplesPerPixel = 3
    with pytest.raises(PreprocessingError, match="3 samples per pixel"):
        check_input(ds, _spec(size=(4, 4)))


def test_missing_pixel_data_is_refused() -> None:
    ds = _read("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(PreprocessingError, match="has no pixel data"):
        preprocess(ds, _spec(size=(64, 64)))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_truncated_pixel_data_is_a_preprocessing_error(name: str) -> None:
    ds = _read(name)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(PreprocessingError, match="pixel data cannot be decoded") as caught:
        preprocess(ds, _spec(modalities=[ds.Modality], size=(32, 32)))
    assert ds.SOPInstanceUID in str(caught.value)
    assert caught.value.field == "PixelData"
    assert caught.value.__cause__ is not None


def test_truncated_file_is_a_preprocessing_error() -> None:
    ds = _read("MR_truncated.dcm")
    with pytest.raises(PreprocessingError, match="less than expected") as caught:
        preprocess(ds, PreprocessSpec(modalities=["MR"], size=(32, 32)))
    assert isinstance(caught.value.__cause__, ValueError)


def test_dataset_without_transfer_syntax_is_a_preprocessing_error() -> None:
    ds = _read("MR_small.dcm")
    del ds.file_meta
    with pytest.raises(PreprocessingError, match="Transfer Syntax UID"):
        preprocess(ds, PreprocessSpec(modalities=["MR"], size=(32, 32)))
