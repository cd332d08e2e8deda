"""Reading a spooled instance safely: limits are checked before any pixel data is decoded.

A hostile or broken file must cost the appliance a clear error, not its
memory: the file's size is checked before it is read, the declared image
size is checked against limits before any pixel data is decoded, and native
pixel data must be as long as the header says. Decoding itself happens in :func:`sdk.preprocessing.preprocess`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import VR

from sdk.errors import DicomInputError

__all__ = ["DecodeLimits", "read_instance"]

_DICOMDIR = "1.2.840.10008.1.3.10"
_KNOWN_VRS = frozenset(vr.value for vr in VR)


class DecodeLimits(BaseModel):
    """What one instance may declare before the appliance refuses to decode it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(default=1 << 30, ge=1)
    max_rows: int = Field(default=8192, ge=1)
    max_columns: int = Field(default=8192, ge=1)
    max_frames: int = Field(default=4096, ge=1)
    max_pixels: int = Field(default=1 << 28, ge=1, description="rows x columns x frames x samples")


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise DicomInputError(f"{keyword} is not a number ({value!r})", field=keyword) from None


def _check_value_representations(ds: Dataset, path: Path) -> None:
    """Refuse, named, a top-level element whose VR pydicom does not know.

    pydicom converts an element's raw bytes on first access, and raises
    ``NotImplementedError`` there for an unknown VR: wherever the element
    happens to be read first. Looking at the raw elements costs microseconds;
    converting them all would cost a millisecond per instance.
    """
    for tag in ds.keys():  # noqa: SIM118 (iterating the dataset itself would convert every element)
        raw = ds.get_item(tag, keep_deferred=True)  # nothing is deferred here; an empty value is None, unconverted
        if isinstance(raw, RawDataElement) and raw.VR is not None and raw.VR not in _KNOWN_VRS:
            raise DicomInputError(f"element {tag} has an unknown value representation {raw.VR!r}", path=path)


def read_instance(path: Path, limits: DecodeLimits | None = None) -> Dataset:
    """Read an instance whose image fits the limits; its pixel data is not decoded yet.

    The file is read once (at most ``limits.max_bytes``) and parsed from memory:
    parsing does not decode pixel data, so checking the declared size on the
    parsed dataset still comes before any decoding, and the bytes held are
    bounded by the byte limit checked first.

    Raises:
        DicomInputError: not DICOM, a DICOMDIR, no image, a declared size over
            the limits, or native pixel data shorter than declared (truncated).
    """
    limits = limits or DecodeLimits()
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limits.max_bytes:
                raise DicomInputError(f"{size:,} bytes is over the limit of {limits.max_bytes:,}", path=path)
            data = handle.read(size + 1)  # not max_bytes + 1: the buffer is allocated at the size asked for
    except OSError as exc:
        raise DicomInputError(f"cannot read: {exc.strerror}", path=path) from exc
    if len(data) > limits.max_bytes:  # it grew after the check
        raise DicomInputError(f"{len(data):,} bytes is over the limit of {limits.max_bytes:,}", path=path)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        # NotImplementedError: an unknown VR in the file meta, which pydicom converts while reading
        raise DicomInputError(f"not a readable DICOM file: {exc}", path=path) from exc
    _check_value_representations(ds, path)
    if str(ds.get("SOPClassUID", "")) == _DICOMDIR or "DirectoryRecordSequence" in ds:
        raise DicomInputError("a DICOMDIR, not an image", path=path)
    try:
        rows, columns = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
        frames, samples = _int(ds, "NumberOfFrames", 1), _int(ds, "SamplesPerPixel", 1)
        bits = _int(ds, "BitsAllocated", 16)
    except DicomInputError as exc:
        raise DicomInputError(exc.message, path=path, field=exc.field) from None
    if rows <= 0 or columns <= 0:
        raise DicomInputError("no image (Rows/Columns missing)", path=path, field="Rows")
    for what, value, limit in (
        ("Rows", rows, limits.max_rows),
        ("Columns", columns, limits.max_columns),
        ("NumberOfFrames", frames, limits.max_frames),
    ):
        if value > limit or value < 1:
            raise DicomInputError(f"{what} {value} is outside 1..{limit}", path=path, field=what)
    pixels = rows * columns * frames * max(samples, 1)
    if pixels > limits.max_pixels:
        raise DicomInputError(f"{pixels:,} pixels is over the limit of {limits.max_pixels:,}", path=path)
    try:
        has_pixels = "PixelData" in ds
        pixel_bytes = len(ds.PixelData) if has_pixels else 0
    except (EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DicomInputError(f"cannot read the dataset: {exc}", path=path) from exc
    if not has_pixels:
        raise DicomInputError("no pixel data", path=path, field="PixelData")
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        compressed = transfer_syntax.is_compressed  # type: ignore[union-attr]
    except (AttributeError, ValueError):  # absent, or a UID pydicom does not know as a transfer syntax
        raise DicomInputError(
            f"transfer syntax {transfer_syntax!r} is not one this appliance can decode",
            path=path,
            field="TransferSyntaxUID",
        ) from None
    if not compressed:
        expected = pixels * bits // 8
        if pixel_bytes < expected:
            raise DicomInputError(
                f"pixel data is truncated: {pixel_bytes:,} of {expected:,} bytes", path=path, field="PixelData"
            )
    return ds
