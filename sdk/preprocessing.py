"""The one preprocessing implementation: a DICOM instance becomes a model input tensor.

Calibration (``quantization/``) and the runtime both call :func:`preprocess`,
so a model is quantized on exactly the tensors it will see on the appliance.
Every step is vectorised over all frames of an instance at once.

The steps, in order, and their exact definitions:

1. **Decode** the pixel data with pydicom (uncompressed, deflated, big endian,
   RLE, JPEG, JPEG-LS and JPEG 2000 through the installed plugins). Lossless
   encodings of one image therefore yield bit-identical tensors.
2. **Modality LUT** (``spec.rescale``): pydicom's ``apply_modality_lut``
   (Rescale Slope/Intercept in float64, or the Modality LUT Sequence). For
   enhanced multi-frame objects whose rescale lives only in the functional
   groups, the per-frame (else shared) Pixel Value Transformation is applied.
3. **Window**, producing values in [0, 1]:

   - :class:`~sdk.preprocess_spec.Window` ``(c, w)``: ``clip((x - c) / w + 0.5, 0, 1)``,
     i.e. [c - w/2, c + w/2] maps linearly onto [0, 1] (DICOM's LINEAR_EXACT).
   - ``"voi_lut"``: the dataset's own VOI, as DICOM PS3.3 C.11.2 defines it with
     an output range of [0, 1]: the first VOI LUT Sequence item if present
     (LUT output divided by ``2**bits - 1``), else the first Window Center/Width
     value with its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID), else the
     per-frame (or shared) Frame VOI LUT functional group.
   - ``None``: values pass unchanged.

   The dataset's own VOI is defined on modality-LUT output, so ``"voi_lut"``
   with ``rescale = false`` is refused for an image whose rescale is not the
   identity. From here on the arithmetic is float32 (exact for integer values
   below 2**24, such as HU).
4. **MONOCHROME1 inversion** (``spec.invert_monochrome1``): windowed data
   ``x -> 1 - x``; un-windowed data ``x -> min + max - x`` with each frame's own
   range, so the result has MONOCHROME2 polarity.
5. **Resize** to ``spec.size`` bilinearly with half-pixel centres
   (``align_corners=False``, no antialiasing: the same as OpenCV's
   ``INTER_LINEAR`` and torch's ``interpolate(mode="bilinear")``), rows first,
   then columns. Skipped along an axis whose size already matches.
6. **Normalization**, per frame, on the resized frame: ``unit`` is the identity on windowed data and
   ``(x - min) / (max - min)`` on un-windowed data; ``zscore`` is
   ``(x - mean(x)) / std(x)``; ``none`` is the identity. A constant frame
   becomes zeros rather than NaN. Then, in every mode, ``(x - spec.mean) /
   spec.std`` (a no-op with the defaults 0 and 1).
7. **Channels and layout**: the grey image is replicated into
   ``spec.channels`` channels and laid out as ``(F, C, H, W)`` (NCHW) or
   ``(F, H, W, C)`` (NHWC), float32, C-contiguous.
8. **Plugin** (``spec.plugin``): a device maker's preprocess hook
   (:mod:`sdk.plugins`) receives that tensor and returns one of the same
   shape, float32 and finite. Being part of this function, it runs in
   calibration exactly as on the appliance.

Only greyscale (MONOCHROME1/2, one sample per pixel) images are accepted;
colour and palette images are refused by :func:`check_input`.
"""

from __future__ import annotations

import functools
import logging
import operator
import struct
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.pixels import pixel_array as decode_frame

from sdk.errors import ConfigError, PreprocessingError
from sdk.plugins import PreprocessEvent, get_registry
from sdk.preprocess_spec import PreprocessSpec, Window

__all__ = ["check_input", "preprocess"]

logger = logging.getLogger(__name__)

_GREY = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check_input(ds: Dataset, spec: PreprocessSpec) -> None:
    """Refuse, before any decoding, an instance that ``spec`` cannot turn into a tensor.

    Raises:
        PreprocessingError: the modality is not one the model accepts, there is
            no pixel data, the image is not greyscale, or its size is missing.
    """
    modality = ds.get("Modality")
    if not modality:
        raise _error(ds, f"has no Modality; this model accepts {_names(spec.modalities)}", field="Modality")
    if modality not in spec.modalities:
        raise _error(
            ds,
            f"modality '{modality}' is not accepted by this model, which accepts {_names(spec.modalities)}",
            field="Modality",
        )
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise _error(ds, "has no pixel data", field="PixelData")
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in _GREY:
        raise _error(
            ds,
            f"photometric interpretation {photometric!r} is not supported: medge models take greyscale "
            "images only (MONOCHROME1 or MONOCHROME2)",
            field="PhotometricInterpretation",
        )
    samples = ds.get("SamplesPerPixel")
    if samples != 1:
        raise _error(ds, f"has {samples!r} samples per pixel; greyscale images have exactly 1", field="SamplesPerPixel")
    for keyword in ("Rows", "Columns"):
        value = ds.get(keyword)
        if not isinstance(value, int) or value < 1:
            raise _error(ds, f"{keyword} is {value!r}, not a positive number", field=keyword)


def preprocess(ds: Dataset, spec: PreprocessSpec, *, frames: Sequence[int] | None = None) -> np.ndarray:
    """Turn the frames of ``ds`` into the model input tensor that ``spec`` describes.

    The steps and their exact definitions are in this module's docstring.

    Args:
        ds: a DICOM instance with its file meta (the transfer syntax tells how
            to decode the pixel data).
        spec: the model's preprocessing spec.
        frames: zero-based indices of the frames to process, in the order
            wanted; all frames when ``None``. Only the frames asked for are
            decoded when the pixel data is compressed.

    Returns:
        A C-contiguous float32 array of shape ``spec.input_shape(F)``: ``(F, C, H, W)``
        for NCHW or ``(F, H, W, C)`` for NHWC, with F the number of frames.

    Raises:
        PreprocessingError: the instance fails :func:`check_input`, a frame index
            is out of range, the pixel data cannot be decoded (corrupt,
            truncated, unsupported encoding), the rescale or VOI attributes are
            unusable, or ``"voi_lut"`` is asked of a dataset that has no VOI
            (or, with ``rescale = false``, of one whose rescale is not the identity),
            or the spec's plugin is not installed, fails, or returns a tensor of
            another shape or dtype, or one with NaN or infinity.
    """
    try:
        return _preprocess(ds, spec, frames)
    except PreprocessingError:
        raise
    except _MALFORMED as exc:
        # pydicom converts elements when first read: a hostile file's damage surfaces here, element by element.
        raise _error(ds, f"has a malformed element ({type(exc).__name__}: {exc})") from exc


_MALFORMED = (OSError, ValueError, KeyError, IndexError, TypeError, OverflowError, NotImplementedError, struct.error)
"""What pydicom raises on a damaged element (a wrong VR, a cut sequence) when it is first converted."""


def _preprocess(ds: Dataset, spec: PreprocessSpec, frames: Sequence[int] | None) -> np.ndarray:
    check_input(ds, spec)
    n_frames = _number_of_frames(ds)
    indices = _frame_indices(ds, frames, n_frames)
    if spec.window == "voi_lut" and not spec.rescale and _has_modality_transform(ds, indices):
        raise _error(
            ds,
            "its VOI window applies to modality-LUT output (e.g. HU) but the spec has rescale = false, "
            "so the window would land on raw stored values",
            field="RescaleSlope",
        )
    pixels = _decode(ds, indices, n_frames)
    values = _modality(ds, pixels, indices) if spec.rescale else pixels

    x = values.astype(np.float32)  # a fresh buffer (never the dataset's cached array): later steps work in place

    windowed = spec.window is not None
    if isinstance(spec.window, Window):
        x = _window(ds, x, spec.window.center, spec.window.width, "LINEAR_EXACT")
    elif spec.window == "voi_lut":
        x = _dataset_voi(ds, x, indices)

    if spec.invert_monochrome1 and ds.PhotometricInterpretation == "MONOCHROME1":
        # Reflect within the range: [0, 1] after a window, else each frame's own min..max.
        low_plus_high = 1.0 if windowed else x.min(axis=(1, 2), keepdims=True) + x.max(axis=(1, 2), keepdims=True)
        np.subtract(low_plus_high, x, out=x)

    x = _resize(x, spec.size)
    x = _normalize(x, spec, windowed=windowed)
    out = _layout(x, spec)
    if spec.plugin is not None:
        out = _plugin(ds, out, spec, indices)
    logger.debug("preprocessed %s: %d frame(s) -> %s", ds.get("SOPInstanceUID"), len(indices), out.shape)
    return out


# --- decoding -----------------------------------------------------------------------------------------------------


def _number_of_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    try:
        n_frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise _error(ds, f"NumberOfFrames {value!r} is not a number", field="NumberOfFrames") from exc
    return max(n_frames, 1)


def _frame_indices(ds: Dataset, frames: Sequence[int] | None, n_frames: int) -> list[int]:
    if frames is None:
        return list(range(n_frames))
    indices = [operator.index(i) for i in frames]
    if not indices:
        raise _error(ds, "no frames were asked for", field="NumberOfFrames")
    bad = [i for i in indices if not 0 <= i < n_frames]
    if bad:
        raise _error(ds, f"frame indices {bad} are out of range: the instance has {n_frames} frame(s)")
    return indices


def _decode(ds: Dataset, indices: list[int], n_frames: int) -> np.ndarray:
    """Decode the frames asked for into an ``(F, rows, columns)`` array, translating decoder failures."""
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        compressed = bool(transfer_syntax is not None and transfer_syntax.is_compressed)  # unknown UID: ValueError
        if compressed and len(set(indices)) < n_frames:
            # Decode only what is needed: a 500-frame tomosynthesis stack must not be
            # decompressed whole to run one frame.
            decoded = {i: decode_frame(ds, index=i) for i in sorted(set(indices))}
            arr = np.stack([decoded[i] for i in indices])
        else:
            arr = ds.pixel_array
            if arr.ndim == 2:
                arr = arr[np.newaxis]
            if arr.shape[0] != n_frames:
                raise ValueError(f"decoded {arr.shape[0]} frame(s) but NumberOfFrames says {n_frames}")
            if indices != list(range(n_frames)):
                arr = arr[indices]
    except Exception as exc:  # any decoder failure is bad input, reported by instance
        raise _error(ds, f"pixel data cannot be decoded: {exc}", field="PixelData") from exc
    except BaseException as exc:
        # A decoder written in Rust (pylibjpeg-rle, through pyo3) turns a panic on hostile data into a
        # PanicException, which derives from BaseException: `except Exception` above misses it, and so would
        # the service's own guard. It is still this instance's bad pixel data.
        if type(exc).__name__ != "PanicException":
            raise
        raise _error(ds, f"pixel data cannot be decoded (decoder panic: {exc})", field="PixelData") from exc
    expected = (len(indices), ds.Rows, ds.Columns)
    if arr.shape != expected:
        raise _error(ds, f"decoded pixel array has shape {arr.shape}, expected {expected}", field="PixelData")
    return arr


# --- modality LUT -------------------------------------------------------------------------------------------------


def _has_modality_transform(ds: Dataset, indices: list[int]) -> bool:
    """Whether the stored values differ from the modality-LUT output (rescale not the identity)."""
    if ds.get("ModalityLUTSequence"):
        return True
    items: list[Any] = [ds] if "RescaleSlope" in ds or "RescaleIntercept" in ds else []
    items += [_functional_item(ds, i, "PixelValueTransformationSequence") for i in indices]
    try:
        return any(
            float(item.get("RescaleSlope") or 1) != 1.0 or float(item.get("RescaleIntercept") or 0) != 0.0
            for item in items
            if item is not None
        )
    except (TypeError, ValueError):
        return True  # present but unreadable: certainly not known to be the identity


def _modality(ds: Dataset, pixels: np.ndarray, indices: list[int]) -> np.ndarray:
    """Apply the Modality LUT / rescale, top-level first, else from the functional groups."""
    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        field = "ModalityLUTSequence" if ds.get("ModalityLUTSequence") else "RescaleSlope"
        try:
            return apply_modality_lut(pixels, ds)
        except Exception as exc:
            raise _error(ds, f"the modality LUT / rescale cannot be applied: {exc}", field=field) from exc

    items = [_functional_item(ds, i, "PixelValueTransformationSequence") for i in indices]
    if all(item is None for item in items):
        return pixels
    try:
        slopes = np.array([float(item.RescaleSlope) for item in items], dtype=np.float64)  # type: ignore[union-attr]
        intercepts = np.array([float(item.RescaleIntercept) for item in items], dtype=np.float64)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError) as exc:
        raise _error(
            ds,
            f"the Pixel Value Transformation functional group is incomplete or invalid: {exc}",
            field="PixelValueTransformationSequence",
        ) from exc
    return pixels.astype(np.float64) * slopes[:, None, None] + intercepts[:, None, None]


def _functional_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword`` for ``frame``: per-frame, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        group = per_frame[frame].get(keyword)
        if group:
            return group[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        group = shared[0].get(keyword)
        if group:
            return group[0]
    return None


# --- VOI / windowing ----------------------------------------------------------------------------------------------


def _dataset_voi(ds: Dataset, x: np.ndarray, indices: list[int]) -> np.ndarray:
    """Apply the dataset's own VOI (LUT sequence, window, or per-frame window) onto [0, 1], in place where it can."""
    sequence = ds.get("VOILUTSequence")
    if sequence and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None:
        return _voi_lut_sequence(ds, x)

    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center not in (None, "") and width not in (None, ""):
        return _window(ds, x, _first(center), _first(width), ds.get("VOILUTFunction") or "LINEAR")

    items = [_functional_item(ds, i, "FrameVOILUTSequence") for i in indices]
    if all(item is not None and "WindowCenter" in item and "WindowWidth" in item for item in items):
        centers = np.array([_first(item.WindowCenter) for item in items])  # type: ignore[union-attr]
        widths = np.array([_first(item.WindowWidth) for item in items])  # type: ignore[union-attr]
        functions = np.array([item.get("VOILUTFunction") or "LINEAR" for item in items])  # type: ignore[union-attr]
        for function in np.unique(functions):
            sel = np.flatnonzero(functions == function)
            x[sel] = _window(ds, x[sel], centers[sel, None, None], widths[sel, None, None], str(function))
        return x

    raise _error(
        ds,
        "the spec asks for the dataset's own window ('voi_lut') but the instance has no VOI LUT Sequence, "
        "no Window Center/Width and no Frame VOI LUT functional group",
        field="WindowCenter",
    )


def _voi_lut_sequence(ds: Dataset, x: np.ndarray) -> np.ndarray:
    """Look values up in the first VOI LUT Sequence item and scale its output range onto [0, 1]."""
    try:
        n_entries, first_mapped, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        n_entries = n_entries or 65536
        # Clip before the look-up: pydicom keeps indices in uint16 and would wrap larger inputs.
        stored = np.clip(np.rint(x), first_mapped, first_mapped + n_entries - 1).astype(np.int64)
        looked_up = apply_voi(stored, ds)
    except Exception as exc:
        raise _error(ds, f"the VOI LUT Sequence cannot be applied: {exc}", field="VOILUTSequence") from exc
    return looked_up.astype(np.float32) / np.float32(2**bits - 1)


def _window(ds: Dataset, x: np.ndarray, center: Any, width: Any, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2/C.11.2.1.3 windowing with output range [0, 1], in place on float32 ``x``.

    ``center`` and ``width`` are scalars or arrays broadcastable against ``x``
    (one per frame). Working in place on one float32 buffer keeps a 512x512
    frame's windowing well under a millisecond.
    """
    c = np.asarray(center, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    kind = str(function).strip().upper()
    if kind == "LINEAR":
        if np.any(w < 1):
            raise _error(ds, f"Window Width {width} is below 1, which a LINEAR window forbids", field="WindowWidth")
        c, w = c - 0.5, w - 1.0
    elif kind not in ("LINEAR_EXACT", "SIGMOID"):
        raise _error(ds, f"VOI LUT Function {function!r} is not supported", field="VOILUTFunction")
    elif np.any(w <= 0):
        raise _error(ds, f"Window Width {width} must be greater than 0", field="WindowWidth")

    step = w == 0  # LINEAR with a width of 1: a threshold at the centre
    above = x > c.astype(np.float32) if np.any(step) else None
    x -= c.astype(np.float32)
    if kind == "SIGMOID":
        x *= (-4.0 / w).astype(np.float32)
        with np.errstate(over="ignore"):  # exp overflows to inf far below the centre: 1 / (1 + inf) = 0
            np.exp(x, out=x)
        x += np.float32(1.0)
        return np.reciprocal(x, out=x)
    x /= np.where(step, 1.0, w).astype(np.float32)
    x += np.float32(0.5)
    np.clip(x, 0.0, 1.0, out=x)
    if above is not None:
        np.copyto(x, above, where=np.broadcast_to(step, x.shape))
    return x


def _first(value: Any) -> float:
    """The first of a multi-valued DS (Window Center/Width list alternative views)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return float(value)
    return float(value[0])


# --- resize, normalization, layout --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation with half-pixel centres.

    ``src = (dst + 0.5) * n_in / n_out - 0.5``, clamped at 0 (torch/OpenCV
    convention); the right neighbour is clamped at the last pixel.
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    taps = (lo, hi, (1.0 - frac).astype(np.float32), frac.astype(np.float32))
    for tap in taps:
        tap.setflags(write=False)
    return taps


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(F, H, W)`` float32 to ``(F, *size)``, separable: rows, then columns."""
    rows, cols = size
    if x.shape[1] != rows:
        lo, hi, w_lo, w_hi = _linear_taps(x.shape[1], rows)
        top = x[:, lo, :]
        top *= w_lo[:, None]
        bottom = x[:, hi, :]
        bottom *= w_hi[:, None]
        top += bottom
        x = top
    if x.shape[2] != cols:
        lo, hi, w_lo, w_hi = _linear_taps(x.shape[2], cols)
        left = x[:, :, lo]
        left *= w_lo
        right = x[:, :, hi]
        right *= w_hi
        left += right
        x = left
    return x


def _normalize(x: np.ndarray, spec: PreprocessSpec, *, windowed: bool) -> np.ndarray:
    """Per-frame normalization of ``(F, H, W)`` float32, then the spec's mean/std."""
    mode = spec.normalization.mode
    if mode == "unit" and not windowed:
        low = x.min(axis=(1, 2), keepdims=True)
        span = x.max(axis=(1, 2), keepdims=True) - low
        x = (x - low) / np.where(span > 0, span, np.float32(1.0))
    elif mode == "zscore":
        mean = x.mean(axis=(1, 2), dtype=np.float64, keepdims=True)
        std = x.std(axis=(1, 2), dtype=np.float64, keepdims=True)
        x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    if spec.normalization.mean != 0.0 or spec.normalization.std != 1.0:
        x = (x - np.float32(spec.normalization.mean)) / np.float32(spec.normalization.std)
    return x


def _layout(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    frames, rows, cols = x.shape
    if spec.layout == "NCHW":
        out = np.broadcast_to(x[:, np.newaxis, :, :], (frames, spec.channels, rows, cols))
    else:
        out = np.broadcast_to(x[:, :, :, np.newaxis], (frames, rows, cols, spec.channels))
    return np.ascontiguousarray(out, dtype=np.float32)


# --- plugin -------------------------------------------------------------------------------------------------------


def _plugin(ds: Dataset, tensor: np.ndarray, spec: PreprocessSpec, indices: list[int]) -> np.ndarray:
    """Run the spec's plugin on the finished tensor and hold its result to the same contract."""
    assert spec.plugin is not None
    name = spec.plugin.name
    try:
        hook = get_registry().preprocess_hook(spec.plugin)
    except ConfigError as exc:
        raise _error(ds, exc.message, field="preprocessing.plugin") from exc
    expected = tensor.shape
    event = PreprocessEvent(ds, tensor, spec, tuple(indices), spec.plugin.settings)
    try:
        result = hook(event)
    except Exception as exc:  # the plugin's failure is this instance's failure, not the service's
        raise _error(ds, f"preprocess plugin {name!r} failed: {exc!r}", field="preprocessing.plugin") from exc
    if not isinstance(result, np.ndarray) or result.shape != expected or result.dtype != np.float32:
        got = f"{result.dtype} {result.shape}" if isinstance(result, np.ndarray) else type(result).__name__
        raise _error(
            ds,
            f"preprocess plugin {name!r} returned {got}, expected float32 {expected}",
            field="preprocessing.plugin",
        )
    if not np.isfinite(result).all():
        raise _error(ds, f"preprocess plugin {name!r} returned NaN or infinity", field="preprocessing.plugin")
    return np.ascontiguousarray(result)


# --- errors -------------------------------------------------------------------------------------------------------


def _error(ds: Dataset, reason: str, *, field: str | None = None) -> PreprocessingError:
    """A PreprocessingError naming the instance (SOP Instance UID, and its file when it came from one)."""
    try:
        uid = ds.get("SOPInstanceUID") or "<no SOP Instance UID>"
    except _MALFORMED:  # the UID element itself is damaged
        uid = "<unreadable SOP Instance UID>"
    filename = getattr(ds, "filename", None)
    path = str(filename) if isinstance(filename, str | PathLike) else None
    return PreprocessingError(f"instance {uid}: {reason}", path=path, field=field)


def _names(modalities: Sequence[str]) -> str:
    return ", ".join(repr(m) for m in modalities)
